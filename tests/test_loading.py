"""Every checkpoint layout through every backbone / whole-model route.

Round trips: weights written in a layout (``tests/_layouts.py``, rules
written independently of the converter) from one network, loaded into a
fresh network with other random weights: every tensor identical, 0
missing, 0 unexpected. A file with one key renamed or one tensor of the
wrong shape is refused, naming that key. Files that are not checkpoints,
truncated files and unsafe ones fail with a CheckpointError that says so.

Needs torch and mmengine only (the tool routes with mmdet / mmseg /
mmpretrain models are in ``test_loading_tools.py``).
"""
import hashlib
import importlib.util
import os
import os.path as osp
import pickle
import re

import pytest
import torch

import iformer_mm  # noqa: F401  (patches mmengine's checkpoint loaders)
from iformer_mm.errors import CheckpointError, CheckpointMismatchError
from iformer_mm.models.backbones import IFormer
from iformer_mm.models.checkpoint import (load_iformer_checkpoint,
                                          load_model_checkpoint)

from ._layouts import LAYOUTS, TINY, WHOLE, TinyDense, randomize, write

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEED_SRC, SEED_DST = 1, 2


def _convert_tool():
    spec = importlib.util.spec_from_file_location(
        '_iformer_convert_checkpoint',
        osp.join(ROOT, 'tools', 'convert_checkpoint.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _backbone_part(state):
    """Source backbone weights (our names) of a layout's source state."""
    if any(k.startswith('backbone.') for k in state):
        return {k[len('backbone.'):]: v for k, v in state.items()
                if k.startswith('backbone.')}
    return {k: v for k, v in state.items() if not k.startswith('head.')}


def _assert_identical(module, expected):
    got = module.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def _fresh_backbone():
    return randomize(IFormer(TINY), SEED_DST)


# --------------------------------------------------------------------------
# Backbone routes: init_cfg (with and without prefix), the Python loader
# --------------------------------------------------------------------------
@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_backbone_round_trip_init_cfg(layout, tmp_path):
    path = str(tmp_path / f'{layout}.pth')
    src = _backbone_part(write(layout, path, seed=SEED_SRC))
    net = IFormer(TINY, init_cfg=dict(type='Pretrained', checkpoint=path))
    randomize(net, SEED_DST)
    net.init_weights()
    _assert_identical(net, src)

    report = load_iformer_checkpoint(_fresh_backbone(), path)
    assert (report.missing, report.unexpected, report.mismatched) == \
        ([], [], [])
    assert len(report.loaded) == len(src)


@pytest.mark.parametrize('layout', WHOLE + ['ours_backbone'])
def test_backbone_round_trip_init_cfg_with_prefix(layout, tmp_path):
    """``prefix='backbone.'`` selects the file's own keys before any
    renaming (it used to be applied after, and loaded nothing)."""
    path = str(tmp_path / f'{layout}.pth')
    src = _backbone_part(write(layout, path, seed=SEED_SRC))
    for prefix in ('backbone.', 'backbone'):
        net = IFormer(TINY, init_cfg=dict(type='Pretrained', checkpoint=path,
                                         prefix=prefix))
        randomize(net, SEED_DST)
        net.init_weights()
        _assert_identical(net, src)


def test_wrong_prefix_is_refused(tmp_path):
    path = str(tmp_path / 'w.pth')
    write('authors_mmdet', path)
    net = IFormer(TINY, init_cfg=dict(type='Pretrained', checkpoint=path,
                                     prefix='model.backbone.'))
    with pytest.raises(CheckpointMismatchError,
                       match=r"prefix 'model\.backbone\.'.*backbone\., "):
        net.init_weights()


def test_release_with_model_and_ema(tmp_path):
    """Both entries: ``model`` by default (what the authors' detection and
    segmentation code load), ``model_ema`` on request."""
    from ._layouts import classifier_state, to_release
    plain, ema = classifier_state(seed=3), classifier_state(seed=4)
    path = str(tmp_path / 'both.pth')
    torch.save({'model': to_release(plain), 'model_ema': to_release(ema)},
               path)
    net = _fresh_backbone()
    load_iformer_checkpoint(net, path)
    _assert_identical(net, _backbone_part(plain))
    load_iformer_checkpoint(net, path, key='model_ema')
    _assert_identical(net, _backbone_part(ema))
    with pytest.raises(CheckpointError, match="no 'state_dict' entry"):
        load_iformer_checkpoint(net, path, key='state_dict')


# --------------------------------------------------------------------------
# Whole-model route (tools/test.py, demo, benchmark, load_from)
# --------------------------------------------------------------------------
@pytest.mark.parametrize('layout', WHOLE)
def test_whole_model_round_trip(layout, tmp_path):
    path = str(tmp_path / f'{layout}.pth')
    src = write(layout, path, seed=SEED_SRC)
    kind = LAYOUTS[layout][0]
    model = randomize(TinyDense(TINY, kind), SEED_DST)
    report = load_model_checkpoint(model, path)
    _assert_identical(model, src)
    assert (report.missing, report.unexpected, report.mismatched) == \
        ([], [], [])
    assert len(report.loaded) == len(src)
    assert report.meta['dataset_meta']['classes'] == ('a', 'b')


@pytest.mark.parametrize('layout', ['plain', 'release', 'ours_backbone'])
def test_backbone_file_into_whole_model_is_refused(layout, tmp_path):
    """A backbone-only file leaves the neck and heads random: an error that
    names them, unless strict=False (--allow-partial)."""
    path = str(tmp_path / f'{layout}.pth')
    src = _backbone_part(write(layout, path, seed=SEED_SRC))
    model = randomize(TinyDense(TINY, 'mmdet'), SEED_DST)
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_checkpoint(model, path)
    msg = str(err.value)
    assert 'neck.weight' in msg and 'rpn_head.weight' in msg
    assert 'only backbone weights' in msg and '--allow-partial' in msg
    assert '\n' not in msg
    assert set(err.value.missing) == {
        k for k in model.state_dict() if not k.startswith('backbone.')
        and not k.endswith('num_batches_tracked')}
    neck_before = model.neck.weight.clone()
    report = load_model_checkpoint(model, path, strict=False)
    assert len(report.loaded) == len(src) and report.missing
    for k, v in src.items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    assert torch.equal(model.neck.weight, neck_before)


def test_whole_model_into_wrong_arch_names_the_arch(tmp_path):
    path = str(tmp_path / 'm.pth')
    write('authors_mmseg', path, arch='t')
    model = TinyDense('s', 'mmseg')
    with pytest.raises(CheckpointMismatchError,
                       match=r"iFormer-T backbone \(arch='t'\), the model "
                       r"is arch='s'"):
        load_model_checkpoint(model, path)


def test_tta_wrapper_is_looked_through(tmp_path):
    from mmengine.model import BaseTTAModel
    path = str(tmp_path / 'w.pth')
    src = write('ours_whole', path, seed=SEED_SRC)

    class TTA(BaseTTAModel):
        def merge_preds(self, data_samples_list):
            return data_samples_list

    class Detector(TinyDense):
        def test_step(self, data):
            return data

    model = randomize(Detector(TINY, 'mmdet'), SEED_DST)
    load_model_checkpoint(TTA(module=model), path)
    _assert_identical(model, src)


# --------------------------------------------------------------------------
# One key renamed / one tensor of the wrong shape: refused, key named
# --------------------------------------------------------------------------
#: a backbone key of every arch used here (our name)
RENAMED = 'stages.1.blocks.0.mixer.module.0.bn.weight'


@pytest.mark.parametrize('layout', ['release', 'timm', 'authors_mmdet',
                                    'ours_whole', 'plain'])
def test_renamed_key_is_refused_on_every_route(layout, tmp_path, capsys):
    path = str(tmp_path / 'renamed.pth')
    key = RENAMED
    write(layout, path, rename=key)
    # init_cfg (prefix where the file is a whole model)
    prefix = 'backbone.' if layout in WHOLE else None
    net = IFormer(TINY, init_cfg=dict(type='Pretrained', checkpoint=path,
                                     prefix=prefix))
    with pytest.raises(CheckpointMismatchError) as err:
        net.init_weights()
    assert key in err.value.missing and key in str(err.value)
    assert any(k.endswith('_renamed') for k in err.value.unexpected)
    # whole-model loader
    if layout in WHOLE:
        with pytest.raises(CheckpointMismatchError) as err:
            load_model_checkpoint(TinyDense(TINY, 'mmdet'), path)
        assert 'backbone.' + key in err.value.missing
        assert 'backbone.' + key in str(err.value)
    # tools/convert_checkpoint.py (checks against the arch zoo: 't'): exit
    # 2, one line naming the key, nothing written
    write(layout, path, rename=key, arch='t')
    dst = tmp_path / 'out.pth'
    assert _convert_tool().main([path, str(dst)]) == 2
    err_out = capsys.readouterr().err
    assert key in err_out and len(err_out.strip().splitlines()) == 1
    assert not dst.exists()


@pytest.mark.parametrize('layout', ['release', 'authors_mmseg', 'plain'])
def test_wrong_shape_is_refused_with_both_shapes(layout, tmp_path, capsys):
    path = str(tmp_path / 'shape.pth')

    def edit(weights):
        key = next(k for k in weights
                   if k.endswith('stages.3.0.block.cpe.m.c.weight')
                   or k.endswith('stages.3.blocks.0.cpe.module.c.weight'))
        w = weights[key]
        weights[key] = torch.zeros(w.shape[0], w.shape[1], 5, 5)

    key = 'stages.3.blocks.0.cpe.module.c.weight'
    prefix = 'backbone.' if layout in WHOLE else None
    for arch, dim, route in [(TINY, 64, 'init_cfg'), ('t', 256, 'convert')]:
        write(layout, path, edit=edit, arch=arch)
        shapes = f'(file ({dim}, 1, 5, 5), model ({dim}, 1, 3, 3))'
        if route == 'init_cfg':
            net = IFormer(arch, init_cfg=dict(
                type='Pretrained', checkpoint=path, prefix=prefix))
            with pytest.raises(CheckpointMismatchError) as err:
                net.init_weights()
            assert f'{key} {shapes}' in str(err.value)
            assert [m[0] for m in err.value.mismatched] == [key]
        else:
            assert _convert_tool().main([path, str(tmp_path / 'o.pth')]) == 2
            assert f'{key} {shapes}' in capsys.readouterr().err


def test_partial_mode_loads_what_fits_and_counts(tmp_path, capsys):
    path = str(tmp_path / 'renamed.pth')
    src = _backbone_part(write('release', path, seed=SEED_SRC,
                               rename=RENAMED))
    net = _fresh_backbone()
    report = load_iformer_checkpoint(net, path, strict=False)
    assert (len(report.missing), len(report.unexpected)) == (1, 1)
    assert len(report.loaded) == len(src) - 1
    got = net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in src.items()
               if k != report.missing[0])


# --------------------------------------------------------------------------
# tools/convert_checkpoint.py
# --------------------------------------------------------------------------
@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_convert_round_trip(layout, tmp_path, capsys):
    path = str(tmp_path / f'{layout}.pth')
    src = write(layout, path, seed=SEED_SRC, arch='t')
    dst = str(tmp_path / 'converted.pth')
    assert _convert_tool().main([path, dst]) == 0
    out = capsys.readouterr().out
    assert "IFormer(arch='t') backbone: " in out
    assert '0 missing, 0 unexpected, 0 of the wrong shape' in out
    assert 'match complete' in out
    # every tensor, under the names of an OpenMMLab model: backbone.*,
    # head.* (IFormerClsHead of an mmpretrain ImageClassifier), the rest of
    # a whole model as it was
    from iformer_mm.compat import safe_load
    written = safe_load(dst)['state_dict']
    expected = {k if k.startswith(('head.', 'backbone.')) or layout in WHOLE
                else 'backbone.' + k: v for k, v in src.items()}
    if LAYOUTS[layout][0] == 'backbone':
        expected = {k: v for k, v in expected.items()
                    if k.startswith('backbone.')}
    assert set(written) == set(expected)
    assert all(torch.equal(written[k], v) for k, v in expected.items())
    if layout in WHOLE:
        assert '--target model' in out


def test_convert_partial_needs_allow_partial(tmp_path, capsys):
    path = str(tmp_path / 'renamed.pth')
    write('release', path, rename=RENAMED, arch='t')
    dst = tmp_path / 'out.pth'
    tool = _convert_tool()
    assert tool.main([path, str(dst)]) == 2
    captured = capsys.readouterr()
    assert 'match complete' not in captured.out and not dst.exists()
    assert tool.main([path, str(dst), '--allow-partial']) == 0
    captured = capsys.readouterr()
    assert 'match PARTIAL' in captured.out
    assert 'match complete' not in captured.out
    assert 'warning: --allow-partial' in captured.err
    assert '1 missing, 1 unexpected' in captured.err
    assert dst.exists()


def _digest(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def test_convert_never_overwrites_its_source(tmp_path, capsys):
    src = str(tmp_path / 'src.pth')
    write('release', src)
    before = _digest(src)
    os.symlink(src, tmp_path / 'link.pth')
    os.link(src, tmp_path / 'hard.pth')
    tool = _convert_tool()
    # output = a symlink to the source, the source through a symlink, a
    # hard link, the source through another spelling of its path
    for a, b in [(src, 'link.pth'), ('link.pth', src), (src, 'hard.pth'),
                 (src, str(tmp_path / '.' / 'src.pth'))]:
        assert tool.main([str(tmp_path / a), str(tmp_path / b),
                          '--overwrite']) == 2
        assert 'is the source checkpoint' in capsys.readouterr().err
    assert _digest(src) == before and osp.islink(tmp_path / 'link.pth')
    # an existing file that is not the source needs --overwrite
    other = tmp_path / 'other.pth'
    other.write_bytes(b'user data')
    assert tool.main([src, str(other)]) == 2
    assert '--overwrite' in capsys.readouterr().err
    assert other.read_bytes() == b'user data'
    assert tool.main([src, str(tmp_path / 'no' / 'dir.pth')]) == 2
    assert 'does not exist' in capsys.readouterr().err


def test_convert_ema_key(tmp_path, capsys):
    from ._layouts import classifier_state, to_release
    plain = classifier_state('t', seed=3)
    ema = classifier_state('t', seed=4)
    path = str(tmp_path / 'both.pth')
    torch.save({'model': to_release(plain), 'model_ema': to_release(ema)},
               path)
    dst = str(tmp_path / 'ema.pth')
    assert _convert_tool().main([path, dst, '--key', 'model_ema']) == 0
    net = randomize(IFormer('t'), SEED_DST)
    load_iformer_checkpoint(net, dst, prefix='backbone.')
    _assert_identical(net, _backbone_part(ema))


# --------------------------------------------------------------------------
# Not a checkpoint, truncated, missing, unsafe
# --------------------------------------------------------------------------
def _good_bytes(tmp_path):
    path = tmp_path / 'good.pth'
    write('plain', path)
    return path.read_bytes()


def _bad_files(tmp_path):
    good = _good_bytes(tmp_path)
    files = {
        'empty': (b'', 'not a checkpoint: the file is empty'),
        'text': (b'iFormer weights: see the README\n', 'a text file'),
        'html': (b'<!DOCTYPE html>\n<html><body>Not Found</body></html>',
                 'an HTML page'),
        'random': (bytes(range(7, 256)) * 20, 'neither the zip archive'),
        'pickle': (pickle.dumps({'a': [1, 2]}, protocol=4),
                   'a pickle stream that torch.save did not write'),
        'truncated': (good[:len(good) // 2], 'truncated'),
        'truncated_end': (good[:-30], 'truncated'),
    }
    out = {}
    for name, (data, expect) in files.items():
        path = tmp_path / f'{name}.pth'
        path.write_bytes(data)
        out[name] = (str(path), expect)
    return out


def _entry_points(path):
    from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint

    from iformer_mm.compat import safe_load
    return {
        'safe_load': lambda: safe_load(path),
        'init_cfg': lambda: IFormer(TINY, init_cfg=dict(
            type='Pretrained', checkpoint=path)).init_weights(),
        'load_model_checkpoint': lambda: load_model_checkpoint(
            TinyDense(TINY), path),
        'mmengine _load_checkpoint': lambda: _load_checkpoint(path),
        'mmengine load_checkpoint': lambda: load_checkpoint(
            torch.nn.Linear(1, 1), path),
    }


def test_files_that_are_not_checkpoints(tmp_path):
    for name, (path, expect) in _bad_files(tmp_path).items():
        for route, load in _entry_points(path).items():
            with pytest.raises(CheckpointError) as err:
                load()
            msg = str(err.value)
            assert expect in msg, (name, route, msg)
            assert path in msg and '\n' not in msg, (name, route)
            assert 'Refused' not in msg, (name, route)  # not 'unsafe'
            if 'truncated' in expect:
                assert 'download or save it again' in msg


def test_bad_file_through_convert_tool(tmp_path, capsys):
    tool = _convert_tool()
    for name, (path, expect) in _bad_files(tmp_path).items():
        assert tool.main([path, str(tmp_path / 'o.pth')]) == 2, name
        err = capsys.readouterr().err.strip()
        assert expect in err and len(err.splitlines()) == 1, (name, err)


def test_missing_checkpoint_file(tmp_path):
    path = str(tmp_path / 'nope.pth')
    for route, load in _entry_points(path).items():
        with pytest.raises(CheckpointError, match="nope.pth' does not "
                           'exist'):
            load()
    with pytest.raises(CheckpointError, match='is a directory'):
        load_iformer_checkpoint(IFormer(TINY), str(tmp_path))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


@pytest.mark.parametrize('force_env', [False, True])
def test_malicious_checkpoint_refused_everywhere(tmp_path, monkeypatch,
                                                 capsys, force_env):
    """Nothing in the file runs, whatever route and whatever
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says; the message names the global
    and what to do."""
    if force_env:
        monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pth')
    state = dict(randomize(IFormer(TINY), 0).state_dict())
    torch.save({'state_dict': state, 'payload': _Evil(str(marker))}, path)
    for route, load in _entry_points(path).items():
        with pytest.raises(CheckpointError) as err:
            load()
        msg = str(err.value)
        assert 'Refused to load checkpoint' in msg, route
        assert re.search(r'it references (io|builtins)\.open', msg), route
        assert 'extra_safe_globals' in msg and 'torch.save' in msg, route
    assert _convert_tool().main([path, str(tmp_path / 'o.pth')]) == 2
    assert re.search(r'(io|builtins)\.open', capsys.readouterr().err)
    assert not marker.exists()


def _save(path, state):
    torch.save(dict(state_dict=state), str(path))
    return str(path)


def test_mismatch_message_names_at_most_eight_keys_and_counts_the_rest(
        tmp_path):
    net = IFormer(TINY)
    state = net.state_dict()
    renamed = {'x.' + k: v for k, v in state.items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_iformer_checkpoint(net, _save(tmp_path / 'all.pth', renamed))
    text = str(err.value)
    # each list shows 8 names, then how many more
    lists = re.findall(r'(missing|unexpected) (\d+)[^:]*: ([^;]*?), '
                       r'\.\.\. \((\d+) more\)', text)
    assert [kind for kind, *_ in lists] == ['missing', 'unexpected'], text
    for _, total, names, more in lists:
        assert len(names.split(', ')) == 8
        assert int(more) == int(total) - 8 > 0
    assert int(lists[1][1]) == len(state)
    # nothing matched: say so, once, and suggest the prefix
    assert 'No backbone key matched' in text

    one = dict(state)
    first = next(iter(one))
    one['renamed.' + first] = one.pop(first)
    with pytest.raises(CheckpointMismatchError) as err:
        load_iformer_checkpoint(net, _save(tmp_path / 'one.pth', one))
    text = str(err.value)
    assert 'missing 1' in text and 'more)' not in text
    assert first in text and 'renamed.' + first in text
    # some keys matched: no "nothing matched" hint
    assert 'No backbone key matched' not in text
