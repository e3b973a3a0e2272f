"""Every command and config snippet that README.md, docs/*.md, the configs'
comments and the tools' docstrings tell users to paste is exercised.

What is read, at test time:

* fenced blocks of README.md and docs/*.md. A line that runs ``python``,
  ``python3`` or ``bash`` is a command; ``\\`` continues it, ``&&`` / ``;``
  chain commands. A ``python`` block right after the marker
  ``<!-- pasteable: config-file PATH -->`` is a whole config file that the
  user saves at PATH (relative to the repository root);
* inline code spans of those files that start with ``python `` or
  ``bash `` (a span with ``[``, ``|``, ``<`` or ``...`` is a synopsis: only
  its flags and paths are checked);
* ``#``-comment commands in ``configs/**/*.py`` and the commands in the
  module docstrings of ``tools/*.py`` and ``benchmarks/*.py``.

How a command is checked: the script exists; its argument list parses with
the script's own argparse parser (taken from the script itself, not a copy);
each repository path it names exists (``data/toy_*`` paths: in the tree the
toy generators create); its config loads; ``--cfg-options`` merge into that
config and are exercised: model options build the model (an ImageNet
checkpoint placeholder is replaced by a real checkpoint, which must then
load), optimizer options build the optimizer wrapper, and options that move
a dataset's ``data_root`` must move every dataset root and evaluator
``ann_file`` of the config. A config-file block loads, builds its model and
passes the same data-root check.
"""
import argparse
import ast
import contextlib
import copy
import glob
import io
import os
import os.path as osp
import re
import runpy
import shlex
import sys

import pytest
import torch
from mmengine.config import Config

import iformer_mm  # noqa: F401  (registers IFormer)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
REPO_PREFIXES = ('configs/', 'tools/', 'benchmarks/', 'tests/', 'docs/',
                 'iformer_mm/')
# The shell wrappers pass their options on to these tools.
SHELL_TOOLS = {
    'tools/dist_train.sh': ('tools/train.py', 2, lambda p: [p[0]]),
    'tools/dist_test.sh': ('tools/test.py', 3, lambda p: p[:2]),
    'tools/slurm_train.sh': ('tools/train.py', 4,
                             lambda p: [p[2], '--work-dir', p[3]]),
    'tools/slurm_test.sh': ('tools/test.py', 4, lambda p: p[2:4]),
}
MARKER = re.compile(r'<!--\s*pasteable:\s*config-file\s+(\S+)\s*-->')
FENCE = re.compile(r'^```(\w*)[^\n]*\n(.*?)^```', re.S | re.M)


# --------------------------------------------------------------------------
# Snippet extraction.
# --------------------------------------------------------------------------
class Snippet:
    def __init__(self, where, kind, text, path=None, synopsis=False):
        self.where, self.kind, self.text = where, kind, text
        self.path, self.synopsis = path, synopsis

    def __repr__(self):
        return self.where


def _doc_files():
    return [osp.join(ROOT, 'README.md')] + sorted(
        glob.glob(osp.join(ROOT, 'docs', '*.md')))


def _line_of(text, pos):
    return text.count('\n', 0, pos) + 1


def _commands_in(lines):
    """Join continuation lines; keep lines that run python/bash."""
    out, cur = [], ''
    for raw in lines:
        line = raw.strip()
        if line.startswith('$ '):
            line = line[2:]
        if not cur and (not line or line.startswith('#')):
            continue
        if line.endswith('\\'):
            cur += line[:-1] + ' '
            continue
        cur += line
        out.append(cur.strip())
        cur = ''
    if cur:
        out.append(cur.strip())
    return [c for c in out if _runs_tool(c)]


def _runs_tool(command):
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:  # prose with an apostrophe, or a broken command
        tokens = command.split()
    tokens = [t for t in tokens if not re.match(r'^[A-Z_]+=\S*$', t)]
    return bool(tokens) and tokens[0] in ('python', 'python3', 'bash', 'sh')


def markdown_snippets():
    snippets = []
    for path in _doc_files():
        name = osp.relpath(path, ROOT)
        with open(path, encoding='utf-8') as f:
            text = f.read()
        for m in FENCE.finditer(text):
            lang, body = m.group(1), m.group(2)
            where = f'{name}:{_line_of(text, m.start())}'
            before = text[:m.start()].rstrip().splitlines()
            marker = MARKER.search(before[-1]) if before else None
            if marker:
                assert lang == 'python', f'{where}: marker on a {lang} block'
                snippets.append(Snippet(where, 'config-file', body,
                                        path=marker.group(1)))
            elif lang == 'python':
                snippets.append(Snippet(where, 'python', body))
            else:
                for cmd in _commands_in(body.splitlines()):
                    snippets.append(Snippet(where, 'command', cmd))
        prose = FENCE.sub(lambda m: '\n' * m.group(0).count('\n'), text)
        for m in re.finditer(r'`([^`]+)`', prose):
            span = ' '.join(m.group(1).split())
            if span.startswith(('python ', 'python3 ', 'bash ')):
                synopsis = any(c in span for c in '[|<') or '...' in span
                snippets.append(Snippet(
                    f'{name}:{_line_of(prose, m.start())} (inline)',
                    'command', span, synopsis=synopsis))
    return snippets


def source_snippets():
    snippets = []
    for path in sorted(glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                                 recursive=True)):
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
        comments = [ln.lstrip()[1:] if ln.lstrip().startswith('#') else ''
                    for ln in lines]
        for cmd in _commands_in(comments):
            snippets.append(Snippet(osp.relpath(path, ROOT), 'command', cmd))
    for path in sorted(glob.glob(osp.join(ROOT, 'tools', '*.py')) +
                       glob.glob(osp.join(ROOT, 'benchmarks', '*.py'))):
        with open(path, encoding='utf-8') as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ''
        for cmd in _commands_in(doc.splitlines()):
            synopsis = any(c in cmd for c in '[|<') or '...' in cmd
            snippets.append(Snippet(f'{osp.relpath(path, ROOT)} (docstring)',
                                    'command', cmd, synopsis=synopsis))
    return snippets


# --------------------------------------------------------------------------
# A tool's own parser: run the script until it parses its arguments.
# --------------------------------------------------------------------------
class _Captured(Exception):
    def __init__(self, parser):
        super().__init__('parser captured')
        self.parser = parser


_PARSERS = {}


def tool_parser(script):
    if script in _PARSERS:
        return _PARSERS[script]
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = capture
    argv, path = sys.argv, list(sys.path)
    sys.argv = [osp.join(ROOT, script)]
    parser = None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(osp.join(ROOT, script), run_name='__main__')
    except _Captured as captured:
        parser = captured.parser
    except SystemExit:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv, sys.path[:] = argv, path
    assert parser is not None, f'{script} parses no arguments with argparse'
    _PARSERS[script] = parser
    return parser


def parse_with(parser, args):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(args)
    except SystemExit:
        raise AssertionError(err.getvalue().strip().splitlines()[-1])


def option_strings(parser, rest=()):
    """The parser's flags, and those of the subcommand named in ``rest``
    (``analyze_logs.py plot_curve --keys ...``)."""
    opts = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = next((t for t in rest if t in action.choices), None)
            if sub is not None:
                opts |= set(action.choices[sub]._option_string_actions)
    return opts


# --------------------------------------------------------------------------
# Paths.
# --------------------------------------------------------------------------
_TOY = {}


def toy_tree(tmp_root):
    """The folders the toy generators create, under a scratch directory."""
    if not _TOY:
        from iformer_mm.datasets.toy import (make_toy_ade, make_toy_coco,
                                             make_toy_imagenet)
        base = osp.join(tmp_root, 'toy')
        make_toy_coco(osp.join(base, 'data', 'toy_coco'), num_train=2,
                      num_val=1)
        make_toy_ade(osp.join(base, 'data', 'toy_ade'), num_train=2,
                     num_val=1)
        make_toy_imagenet(osp.join(base, 'data', 'toy_imagenet'))
        _TOY['root'] = base
    return _TOY['root']


def is_placeholder(token):
    return (re.fullmatch(r'[A-Z][A-Z0-9_]*', token) is not None or
            '<' in token or token.startswith('/path/to/') or '...' in token)


def check_path(token, where, tmp_root):
    if token.startswith('-'):
        if '=' not in token:
            return
        token = token.split('=', 1)[1]
    value = token
    value = value.split('::')[0]
    if value.startswith(REPO_PREFIXES):
        assert osp.exists(osp.join(ROOT, value)), \
            f'{where}: {value} does not exist'
    elif value.startswith('data/toy_'):
        assert osp.exists(osp.join(toy_tree(tmp_root), value)), \
            f'{where}: {value} is not created by the toy generators ' \
            f'(iformer_mm/datasets/toy.py)'


# --------------------------------------------------------------------------
# Configs and --cfg-options.
# --------------------------------------------------------------------------
def _scope_registry(cfg):
    from mmengine.registry import init_default_scope
    from iformer_mm.config import scope_of
    scope = scope_of(cfg)
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    else:
        from mmpretrain.registry import MODELS
        from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return MODELS


def build_model(cfg):
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') and 'data_preprocessor' not in model_cfg:
        model_cfg.data_preprocessor = cfg.data_preprocessor
    model_cfg.backbone.init_cfg = None  # no download
    return _scope_registry(cfg).build(model_cfg)


def _walk(obj, path=''):
    if hasattr(obj, 'to_dict'):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        yield path, obj
        for k, v in obj.items():
            yield from _walk(v, f'{path}.{k}' if path else k)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f'{path}[{i}]')


def data_locations(cfg):
    """(where, path) of every dataset root and annotation file."""
    out = []
    for path, d in _walk(cfg._cfg_dict):
        if path and 'data_root' in d:
            out.append((f'{path}.data_root', d['data_root']))
        if d.get('ann_file'):
            ann = d['ann_file']
            if not osp.isabs(ann) and d.get('data_root'):
                ann = osp.join(d['data_root'], ann)
            out.append((f'{path}.ann_file', ann))
    return out


def check_data_moved(cfg, new_root, where):
    locations = data_locations(cfg)
    roots = [w for w, _ in locations if w.endswith('.data_root')]
    assert len(roots) >= 3, f'{where}: expected train/val/test roots'
    prefix = new_root.rstrip('/') + '/'
    stale = [f'{w}={p}' for w, p in locations
             if not (p.rstrip('/') + '/').startswith(prefix)]
    assert not stale, (f'{where}: the override moves data_root to '
                       f'{new_root} but these still point elsewhere: '
                       f'{stale}')


def exercise_cfg_options(cfg_path, options, where, tmp_path):
    cfg = Config.fromfile(osp.join(ROOT, cfg_path))
    options = dict(options)
    saved = None
    for key, value in list(options.items()):
        if key.endswith('init_cfg.checkpoint') and is_placeholder(str(value)):
            # Stand in for the downloaded ImageNet file: a checkpoint of
            # this config's backbone, which must then load.
            from mmengine.registry import MODELS
            bb = copy.deepcopy(cfg.model.backbone)
            bb.init_cfg = None
            torch.manual_seed(1)
            saved = MODELS.build(bb).state_dict()
            options[key] = str(tmp_path / 'imagenet.pth')
            torch.save(saved, options[key])
    try:
        cfg.merge_from_dict(options)
    except Exception as e:  # noqa: BLE001  (the message is the point)
        raise AssertionError(f'{where}: --cfg-options do not merge into '
                             f'{cfg_path}: {e}')
    keys = list(options)
    try:
        _build_touched(cfg, keys, saved, where)
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f'{where}: with these --cfg-options '
                             f'{cfg_path} does not build: {e}')
    moved = {v for k, v in options.items() if k.endswith('.data_root')}
    if moved:
        assert len(moved) == 1, f'{where}: several new data roots {moved}'
        check_data_moved(cfg, moved.pop(), where)
    # A key the config did not have is a typo unless something validates
    # it: IFormer's constructor (a backbone argument), the optimizer
    # wrapper's, or a `_delete_` that replaces its parent whole.
    before = Config.fromfile(osp.join(ROOT, cfg_path))
    deleted = [k[:-len('_delete_')] for k in keys if k.endswith('._delete_')]
    for key in keys:
        if key.endswith('._delete_') or _has(before, key) or \
                any(key.startswith(d) for d in deleted):
            continue
        parts = key.split('.')
        if parts[:2] == ['model', 'backbone'] and len(parts) == 3:
            continue
        if parts[0] == 'optim_wrapper':
            continue
        raise AssertionError(f'{where}: {cfg_path} has no setting {key} '
                             f'(a typo?)')


def _has(cfg, dotted):
    node = cfg._cfg_dict
    for part in dotted.split('.'):
        if not hasattr(node, 'keys') or part not in node:
            return False
        node = node[part]
    return True


def _build_touched(cfg, keys, saved, where):
    """Build what the options changed: model, backbone, optimizer."""
    if any(k.startswith('model.') for k in keys):
        from mmengine.registry import MODELS
        if all(k.startswith('model.backbone.') for k in keys
               if k.startswith('model.')):
            backbone = MODELS.build(copy.deepcopy(cfg.model.backbone))
            if saved is not None:
                backbone.init_weights()
                state = backbone.state_dict()
                for name, tensor in saved.items():
                    assert torch.equal(state[name], tensor), \
                        f'{where}: {name} not loaded from the checkpoint'
        else:
            build_model(cfg)
    if any(k.startswith('optim_wrapper') for k in keys):
        from mmengine.optim import build_optim_wrapper
        build_optim_wrapper(torch.nn.Linear(2, 2),
                            copy.deepcopy(cfg.optim_wrapper))


# --------------------------------------------------------------------------
# One command.
# --------------------------------------------------------------------------
def check_command(snippet, tmp_path):
    where = snippet.where
    for part in re.split(r'\s*(?:&&|;|\|\|)\s*', snippet.text):
        try:
            tokens = shlex.split(part, comments=True)
        except ValueError as e:
            raise AssertionError(f'{where}: cannot split {part!r}: {e}')
        tokens = [t for t in tokens if not re.match(r'^[A-Z_]+=\S*$', t)]
        if not tokens or tokens[0] not in ('python', 'python3', 'bash',
                                           'sh'):
            continue
        args = tokens[1:]
        if args[:1] == ['-u']:
            args = args[1:]
        if args[:1] == ['-m']:
            module = args[1]
            import importlib.util
            assert importlib.util.find_spec(module) is not None, \
                f'{where}: no module {module}'
            if module == 'pytest':
                for t in args[2:]:
                    if not t.startswith('-'):
                        check_path(t, where, tmp_path)
            continue
        script, rest = args[0], args[1:]
        assert osp.isfile(osp.join(ROOT, script)), \
            f'{where}: {script} does not exist'
        if script in SHELL_TOOLS:
            script, npos, mapping = SHELL_TOOLS[script]
            assert len(rest) >= npos or snippet.synopsis, \
                f'{where}: {args[0]} needs {npos} positional arguments'
            rest = mapping(rest[:npos]) + rest[npos:]
        elif not script.endswith('.py'):
            continue
        parser = tool_parser(script)
        for t in rest:
            check_path(t, where, tmp_path)
        if snippet.synopsis:
            flags = {t.strip('[]').split('=')[0] for t in rest
                     if t.strip('[]').startswith('-')}
            unknown = flags - option_strings(parser, rest)
            assert not unknown, f'{where}: {script} has no {sorted(unknown)}'
            continue
        flags = {t.split('=')[0] for t in rest if t.startswith('--')}
        unknown = flags - option_strings(parser, rest)
        assert not unknown, \
            f'{where}: {script} has no {sorted(unknown)} (abbreviations ' \
            f'are not allowed in the docs)'
        try:
            ns = parse_with(parser, rest)
        except AssertionError as e:
            raise AssertionError(f'{where}: {script} {" ".join(rest)}: {e}')
        config = next((t for t in rest if t.endswith('.py') and
                       t.startswith('configs/')), None)
        if config:
            Config.fromfile(osp.join(ROOT, config))
        options = getattr(ns, 'cfg_options', None)
        if options:
            assert config, f'{where}: --cfg-options without a config'
            exercise_cfg_options(config, options, where, tmp_path)


# --------------------------------------------------------------------------
# A config-file block.
# --------------------------------------------------------------------------
def check_config_file(snippet, tmp_path):
    # A scratch copy of the repository's configs/ (links), plus the file.
    mirror = tmp_path / 'repo'
    (mirror / 'configs').mkdir(parents=True)
    for entry in os.listdir(osp.join(ROOT, 'configs')):
        os.symlink(osp.join(ROOT, 'configs', entry),
                   mirror / 'configs' / entry)
    target = mirror / snippet.path
    assert not target.exists(), \
        f'{snippet.where}: {snippet.path} would overwrite a repository file'
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(snippet.text)
    cfg = Config.fromfile(str(target))
    if 'data_root' in snippet.text:
        check_data_moved(cfg, cfg.data_root, snippet.where)
    model = build_model(cfg)
    assert type(model.backbone).__name__ == 'IFormer'


# --------------------------------------------------------------------------
# Tests.
# --------------------------------------------------------------------------
SNIPPETS = markdown_snippets() + source_snippets()


def test_snippets_were_found():
    kinds = {s.kind for s in SNIPPETS}
    assert {'command', 'config-file'} <= kinds
    assert sum(s.kind == 'command' for s in SNIPPETS) > 20


@pytest.mark.parametrize(
    'snippet', [s for s in SNIPPETS if s.kind == 'command'], ids=repr)
def test_command(snippet, tmp_path):
    check_command(snippet, tmp_path)


@pytest.mark.parametrize(
    'snippet', [s for s in SNIPPETS if s.kind == 'config-file'], ids=repr)
def test_config_file_snippet(snippet, tmp_path):
    check_config_file(snippet, tmp_path)


@pytest.mark.parametrize(
    'snippet', [s for s in SNIPPETS if s.kind == 'python'], ids=repr)
def test_python_block_is_valid_python(snippet):
    compile(snippet.text, snippet.where, 'exec')


# --------------------------------------------------------------------------
# The checker itself catches the mistakes it is for.
# --------------------------------------------------------------------------
TOY_DET = 'configs/toy/maskrcnn_iformer_t_toy.py'


@pytest.mark.parametrize('text,message', [
    # init_cfg is None in the toy config: without _delete_ nothing merges.
    (f'python tools/train.py {TOY_DET} --cfg-options '
     'model.backbone.init_cfg.type=Pretrained '
     'model.backbone.init_cfg.checkpoint=/path/to/iFormer_t.pth',
     'do not merge'),
    # Only the train root moved.
    ('python tools/train.py configs/mask-rcnn_iformer-m_fpn_1x_coco.py '
     '--cfg-options train_dataloader.dataset.data_root=/datasets/coco/',
     'still point elsewhere'),
    ('python tools/demo.py configs/toy/fpn_iformer_t_toy.py '
     'data/toy_seg/images', 'not created by the toy generators'),
    ('python tools/train.py configs/no_such_config.py', 'does not exist'),
    ('python tools/train.py configs/toy/fpn_iformer_t_toy.py --no-such-flag',
     r"has no \['--no-such-flag'\]"),
    ('python tools/test.py configs/toy/fpn_iformer_t_toy.py',
     'the following arguments are required'),
    (f'python tools/train.py {TOY_DET} --cfg-options '
     'model.backbone.atention=global', 'atention'),
    ('python tools/train.py configs/mask-rcnn_iformer-m_fpn_1x_coco.py '
     '--cfg-options model.backbone.init_cfg.checkpont=/path/to/m.pth',
     'has no setting model.backbone.init_cfg.checkpont'),
    ('python tools/train.py configs/toy/fpn_iformer_t_toy.py --no-validat',
     'abbreviations'),
])
def test_checker_catches(text, message, tmp_path):
    with pytest.raises(AssertionError, match=message):
        check_command(Snippet('case', 'command', text), tmp_path)


def test_checker_catches_partial_data_root_file(tmp_path):
    text = ("_base_ = './mask-rcnn_iformer-m_fpn_1x_coco.py'\n"
            "data_root = '/datasets/coco/'\n"
            "train_dataloader = dict(dataset=dict(data_root=data_root))\n")
    with pytest.raises(AssertionError, match='still point elsewhere'):
        check_config_file(Snippet('case', 'config-file', text,
                                  path='configs/my_coco.py'), tmp_path)


# --------------------------------------------------------------------------
# docs/model_zoo.md: the measured backbone parameter counts are what the
# backbones have (no classification head), and the paper column is not
# mistaken for them.
# --------------------------------------------------------------------------
def _zoo_tables():
    with open(osp.join(ROOT, 'docs', 'model_zoo.md'), encoding='utf-8') as f:
        lines = f.read().splitlines()
    tables, header = [], None
    for line in lines:
        if not line.startswith('|'):
            header = None
            continue
        cells = [c.strip() for c in line.strip('|').split('|')]
        if header is None:
            header = cells
            tables.append((header, []))
        elif not set(''.join(cells)) <= set(':- '):
            tables[-1][1].append(dict(zip(header, cells)))
    return [t for t in tables if 'Backbone params (M)' in t[0]]


def test_model_zoo_backbone_params_are_measured():
    from mmengine.registry import MODELS
    tables = _zoo_tables()
    assert len(tables) == 2  # COCO and ADE20K
    counts = {}
    for _, rows in tables:
        assert len(rows) == 5
        for row in rows:
            arch = row['Backbone'].split('-')[1].lower()
            if arch not in counts:
                model = MODELS.build(dict(type='IFormer', arch=arch))
                counts[arch] = sum(p.numel() for p in model.parameters())
            assert float(row['Backbone params (M)']) == \
                round(counts[arch] / 1e6, 2), row
            # The paper's figure includes the ImageNet head: larger.
            assert float(row['Params (M), paper']) > counts[arch] / 1e6
