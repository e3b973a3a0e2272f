"""``tools/train.py`` and ``tools/test.py``: the upstream tools, plus what
they lack.

Both read the config's ``default_scope`` and run that codebase's own
``tools/train.py`` / ``tools/test.py`` (mmdet 3.3.0, mmseg 1.2.2,
mmpretrain 1.2.0, from the package's ``.mim/tools``), so a run of ours is a
run of theirs: the same config handling, the same runner
(``runner_type='IFormerRunner'`` in our configs) and the same weights. What
they add, with one command line for all three codebases (:func:`parser`):

* the options one upstream tool has and another lacks (e.g. mmpretrain's
  ``--no-validate``, mmdet's ``--auto-scale-lr``), given to each tool as its
  own option where it has one and as ``--cfg-options`` otherwise
  (:data:`NATIVE` lists which; ``tests/test_cli_upstream.py`` checks it
  against the installed scripts);
* ``--allow-partial`` (testing: load a checkpoint that does not fit),
  ``--out-item metrics`` everywhere, ``--interval`` for detection;
* checks that turn a mistake into one line and exit code 2 before anything
  is built (a missing config or checkpoint, ``--out`` where it cannot be
  written, ``--tta`` that the codebase cannot do), the work-dir lock taken
  before the runner writes anything, and a clean end of a distributed run.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import os.path as osp
import re
import sys
import time
from typing import List, Optional, Sequence

from mmengine.config import DictAction

from ..config import SCOPES, load_config, scope_of
from ..errors import CheckpointError, ConfigError
from .config_check import check_config
from .dist import LAUNCHERS, shutdown_dist
from .errors_cli import add_debug_argument, run_tool

#: The options each upstream tool has beyond config, checkpoint,
#: --work-dir, --cfg-options, --launcher and --local_rank (which all have).
NATIVE = {
    ('mmdet', 'train'): {'--amp', '--auto-scale-lr', '--resume'},
    ('mmseg', 'train'): {'--amp'},  # its --resume takes no path
    ('mmpretrain', 'train'): {'--amp', '--auto-scale-lr', '--resume',
                              '--no-validate', '--no-pin-memory',
                              '--no-persistent-workers'},
    ('mmdet', 'test'): {'--out', '--show', '--show-dir', '--wait-time',
                        '--tta'},
    ('mmseg', 'test'): {'--out', '--show', '--show-dir', '--wait-time',
                        '--tta'},
    ('mmpretrain', 'test'): {'--out', '--show', '--show-dir', '--wait-time',
                             '--tta', '--interval', '--no-pin-memory',
                             '--amp'},
}
_LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------
def parser(tool: str) -> argparse.ArgumentParser:
    """The command line of ``tools/<tool>.py`` (``'train'`` or ``'test'``):
    the union of the upstream tools' options, plus ours."""
    p = argparse.ArgumentParser(
        prog=f'{tool}.py',
        description=f'{tool.capitalize()} an iFormer detector, segmentor or '
        "classifier with the upstream tools/{tool}.py of the config's "
        'codebase (its default_scope: mmdet, mmseg or mmpretrain).')
    p.add_argument('config', help=f'{tool} config file path')
    if tool == 'train':
        p.add_argument(
            '--resume', nargs='?', type=str, const='auto',
            help='resume from CHECKPOINT, or without a value from the newest '
            'intact checkpoint in the work dir')
        p.add_argument('--amp', action='store_true',
                       help='automatic mixed precision (GPU only; ignored '
                       'on CPU)')
        p.add_argument('--auto-scale-lr', action='store_true',
                       help='scale the lr linearly from auto_scale_lr.'
                       'base_batch_size to the batch of this run')
        p.add_argument('--no-validate', action='store_true',
                       help='do not evaluate during training')
        p.add_argument('--no-pin-memory', action='store_true',
                       help='pin_memory=False in every dataloader')
        p.add_argument('--no-persistent-workers', action='store_true',
                       help='persistent_workers=False in every dataloader')
    else:
        p.add_argument('checkpoint', help='checkpoint file')
        p.add_argument(
            '--out', help='save the predictions: a .pkl file for detection '
            'and classification, a directory of PNG label maps for '
            'segmentation; with --out-item metrics, a .json/.yaml/.pkl file '
            'of the metrics')
        p.add_argument('--out-item', choices=['metrics', 'pred'],
                       help='what --out holds: the predictions (default) or '
                       'the metrics')
        p.add_argument('--show', action='store_true',
                       help='show prediction results')
        p.add_argument(
            '--show-dir', help='save painted predictions: detection to '
            '<work_dir>/<timestamp>/<show_dir>/, segmentation to '
            '<show_dir>/vis_data/vis_image/, classification to <show_dir>/ '
            '(as the upstream tools do)')
        p.add_argument('--interval', type=int, default=1,
                       help='with --show/--show-dir, paint every '
                       'INTERVAL-th image (default 1: all)')
        p.add_argument('--wait-time', type=float, default=2,
                       help='display time (s)')
        p.add_argument(
            '--tta', action='store_true',
            help="test-time augmentation: the config's tta_model/"
            'tta_pipeline; classification without them averages a '
            "horizontal flip (mmpretrain's default); Mask R-CNN has none in "
            'mmdet')
        p.add_argument('--no-pin-memory', action='store_true',
                       help='do not pin the memory of the test dataloader')
        p.add_argument('--amp', action='store_true',
                       help='mixed-precision test (test_cfg.fp16: float16 '
                       'autocast on a GPU, bfloat16 on the CPU)')
        p.add_argument(
            '--allow-partial', action='store_true',
            help='load a checkpoint that does not fit the model (missing, '
            'unexpected or wrong-shape keys) as far as it fits, with a '
            'warning that counts them; by default that is an error naming '
            'the keys')
    p.add_argument('--work-dir', help='directory for logs and checkpoints '
                   '(default: ./work_dirs/<config name>)')
    p.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value pairs merged into '
        'it, e.g. model.backbone.init_cfg=None train_cfg.max_epochs=1; a '
        'list is key="[a,b]" or key=a,b, no white space.')
    p.add_argument('--launcher', choices=LAUNCHERS, default='none',
                   help='job launcher (pytorch: torchrun / tools/dist_*.sh, '
                   'slurm: tools/slurm_*.sh)')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or
    # --local_rank (older).
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_debug_argument(p)
    return p


def _token(value) -> str:
    """A value parsed by ``DictAction``, written so that it parses back to
    itself (the upstream tool parses ``--cfg-options`` again)."""
    if isinstance(value, (list, tuple)):
        inner = ','.join(_token(v) for v in value)
        return f'[{inner}]' if isinstance(value, list) else f'({inner})'
    return str(value)


def _plain(value: str, option: str) -> str:
    """A path given to an upstream tool through ``--cfg-options``, which
    splits at commas and drops white space."""
    if re.search(r'[\s,\[\]()\'"]', value):
        raise ConfigError(f'{option} {value!r}: the path goes through '
                          '--cfg-options, which cannot carry white space, '
                          'commas, brackets or quotes; use another path')
    return value


def _work_dir(cfg, args) -> str:
    """Where the upstream tool puts the run (its rule)."""
    return args.work_dir or cfg.get('work_dir', None) or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])


# --------------------------------------------------------------------------
# Running the upstream tool
# --------------------------------------------------------------------------
class _RegistryRunner:
    """What a tool calls ``Runner``: ``from_cfg`` honours ``runner_type``
    (mmseg 1.2.2's test.py calls ``Runner.from_cfg`` directly; its train.py
    and mmdet's and mmpretrain's tools build ``runner_type`` instead)."""

    @staticmethod
    def from_cfg(cfg):
        from mmengine.registry import RUNNERS
        from mmengine.runner import Runner
        return RUNNERS.build(cfg) if 'runner_type' in cfg else \
            Runner.from_cfg(cfg)


def upstream_tool(scope: str, tool: str) -> str:
    """The path of ``tools/<tool>.py`` that ``scope``'s package ships."""
    spec = importlib.util.find_spec(SCOPES[scope][1])
    path = osp.join(osp.dirname(spec.origin), '.mim', 'tools', f'{tool}.py')
    if not osp.isfile(path):
        raise ConfigError(f'{path} not found: {SCOPES[scope][1]} was '
                          f'installed without its tools; reinstall it from '
                          f'the registry (python tools/install.py)')
    return path


def run_upstream(scope: str, tool: str, argv: List[str]) -> None:
    """Run the upstream ``tools/<tool>.py`` of ``scope`` in this process."""
    path = upstream_tool(scope, tool)
    spec = importlib.util.spec_from_file_location(
        f'_{SCOPES[scope][1]}_tools_{tool}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.Runner = _RegistryRunner
    saved = sys.argv
    sys.argv = [path, *argv]
    try:
        module.main()
    finally:
        sys.argv = saved


def _with_options(argv: List[str], args, opts: List[str]) -> List[str]:
    """``argv`` with ``--cfg-options``: the user's first, then ``opts``
    (an option of ours wins, as the upstream tools apply theirs after
    merging ``--cfg-options``; mmpretrain's own options are the
    exception)."""
    options = [f'{k}={_token(v)}' for k, v in (
        args.cfg_options or {}).items()] + opts
    return argv + (['--cfg-options', *options] if options else [])


def _common_argv(args) -> List[str]:
    argv = ['--launcher', args.launcher, '--local_rank', str(args.local_rank)]
    if args.work_dir is not None:
        argv += ['--work-dir', args.work_dir]
    return argv


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------
def train_argv(args, cfg, scope: str) -> List[str]:
    """The upstream ``train.py`` command line for our ``args``."""
    native = NATIVE[(scope, 'train')]
    argv = [args.config, *_common_argv(args)]
    opts: List[str] = []
    if args.amp:
        argv.append('--amp')
    if args.auto_scale_lr:
        asl = cfg.get('auto_scale_lr', None)
        if not asl or 'base_batch_size' not in asl:
            raise ConfigError('--auto-scale-lr needs auto_scale_lr=dict('
                              'base_batch_size=...) in the config')
        if '--auto-scale-lr' in native:
            argv.append('--auto-scale-lr')
        else:
            opts.append('auto_scale_lr.enable=True')
    if args.resume is not None:
        path = None if args.resume == 'auto' else args.resume
        if '--resume' in native:
            argv += ['--resume'] + ([path] if path else [])
        else:  # a flag: it resumes from load_from, or the work dir's newest
            argv.append('--resume')
            path = _plain(path, '--resume') if path else None
            opts.append(f'load_from={path}')
    flags = (('no_validate', '--no-validate'),
             ('no_pin_memory', '--no-pin-memory'),
             ('no_persistent_workers', '--no-persistent-workers'))
    for attr, flag in flags:
        if not getattr(args, attr):
            continue
        if flag in native:
            argv.append(flag)
        elif attr == 'no_validate':
            opts += ['val_cfg=None', 'val_dataloader=None',
                     'val_evaluator=None']
        else:
            key = attr[len('no_'):]
            opts += [f'{loader}.{key}=False' for loader in _LOADERS
                     if cfg.get(loader, None) and not (
                         args.no_validate and loader == 'val_dataloader')]
    return _with_options(argv, args, opts)


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser('train').parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    scope = scope_of(cfg)
    upstream = train_argv(args, cfg, scope)
    check_config(cfg)  # a mistake costs seconds, and writes nothing
    from .lock import lock_work_dir
    lock = lock_work_dir(_work_dir(cfg, args))  # before anything is written
    try:
        run_upstream(scope, 'train', upstream)
        shutdown_dist()
    finally:
        if lock is not None:
            lock.release()
    return 0


# --------------------------------------------------------------------------
# Testing
# --------------------------------------------------------------------------
def check_checkpoint_file(path: str) -> None:
    """Refuse a checkpoint path that is missing or cannot be a checkpoint,
    before the config and the model are built (its bytes only)."""
    from ..compat.checkpoint import (check_checkpoint_path,
                                     diagnose_checkpoint_file)
    if '://' in path:
        return
    path = check_checkpoint_path(path)
    problem = diagnose_checkpoint_file(path)
    if problem is not None:
        raise CheckpointError(f'checkpoint {path!r} is {problem}')


def check_out_path(out: str, scope: str, out_item: Optional[str]) -> None:
    """``--out`` must go into an existing, writable directory."""
    as_dir = scope == 'mmseg' and out_item != 'metrics'
    target = out.rstrip('/\\') or out
    if as_dir and osp.isdir(target):
        parent = target
    else:
        if osp.isdir(target):
            raise ConfigError(f'--out {out!r} is a directory; give a file '
                              f'name')
        parent = osp.dirname(osp.abspath(target))
    if not osp.isdir(parent):
        raise ConfigError(f'--out {out!r}: directory {parent!r} does not '
                          f'exist; create it first')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f'--out {out!r}: directory {parent!r} is not '
                          f'writable')
    if out_item == 'metrics':
        if not target.endswith(('.json', '.yaml', '.yml', '.pkl',
                                '.pickle')):
            raise ConfigError('--out-item metrics writes a .json, .yaml or '
                              f'.pkl file, got --out {out!r}')
    elif scope != 'mmseg' and not target.endswith(('.pkl', '.pickle')):
        raise ConfigError(f'--out must be a .pkl file for detection and '
                          f'classification configs, got {out!r}')


def _predicts_masks(model) -> bool:
    if not isinstance(model, dict):
        return False
    return model.get('mask_head') is not None or any(
        _predicts_masks(v) for v in model.values() if isinstance(v, dict))


def check_test_args(args, cfg, scope: str) -> None:
    """What the upstream tool would fail on with a traceback, or not at
    all: one line each."""
    if args.interval < 1:
        raise ConfigError(f'--interval must be >= 1, got {args.interval}')
    if args.out_item is not None and args.out is None:
        raise ConfigError('--out-item needs --out (the file to write)')
    if args.out is not None:
        check_out_path(args.out, scope, args.out_item)
    if (args.show or args.show_dir) and \
            'visualization' not in (cfg.get('default_hooks') or {}):
        hook = {'mmdet': 'DetVisualizationHook',
                'mmseg': 'SegVisualizationHook'}.get(scope,
                                                     'VisualizationHook')
        raise ConfigError('--show/--show-dir need default_hooks.'
                          f"visualization (e.g. dict(type='{hook}')) in the "
                          'config')
    if args.tta:
        if scope == 'mmdet' and _predicts_masks(cfg.model) and \
                'DetTTAModel' in str(cfg.get('tta_model', {}).get(
                    'type', 'DetTTAModel')):
            raise ConfigError(
                '--tta: mmdet 3.3 has no test-time augmentation for '
                'instance segmentation (Mask R-CNN); its DetTTAModel merges '
                'boxes only. Test without --tta.')
        if scope == 'mmseg' and ('tta_model' not in cfg
                                 or 'tta_pipeline' not in cfg):
            raise ConfigError('--tta needs tta_model and tta_pipeline in '
                              'the config (mmseg has no default)')


def test_argv(args, cfg, scope: str) -> List[str]:
    """The upstream ``test.py`` command line for our ``args``."""
    native = NATIVE[(scope, 'test')]
    argv = [args.config, args.checkpoint, *_common_argv(args)]
    opts = ['default_hooks.strict_load.type=StrictLoadFromHook',
            f'default_hooks.strict_load.strict={not args.allow_partial}']
    if args.out is not None:
        if args.out_item == 'metrics':
            opts += ['default_hooks.dump_metrics.type=DumpMetricsHook',
                     'default_hooks.dump_metrics.out_file='
                     + _plain(args.out, '--out')]
        else:
            argv += ['--out', args.out]
    for flag in ('--show', '--tta'):
        if getattr(args, flag[2:]):
            argv.append(flag)
    if args.show_dir:
        argv += ['--show-dir', args.show_dir]
    argv += ['--wait-time', str(args.wait_time)]
    if args.show or args.show_dir:
        if '--interval' in native:
            argv += ['--interval', str(args.interval)]
        else:  # the configs' hooks paint one image in 50 by default
            opts.append(f'default_hooks.visualization.interval='
                        f'{args.interval}')
            if scope == 'mmdet' and args.interval > 1:
                # mmdet's hook paints every test image whatever its
                # interval; this subclass honours it
                from .vis_hooks import IntervalDetVisualizationHook  # noqa
                opts.append('default_hooks.visualization.type='
                            'mmdet.IntervalDetVisualizationHook')
    for flag, option in (('no_pin_memory', 'test_dataloader.pin_memory'
                          '=False'), ('amp', 'test_cfg.fp16=True')):
        if getattr(args, flag):
            name = '--' + flag.replace('_', '-')
            if name in native:
                argv.append(name)
            else:
                opts.append(option)
    return _with_options(argv, args, opts)


def show_dir_of(work_dir: str, show_dir: str, scope: str,
                since: float) -> Optional[str]:
    """Where the upstream tool of ``scope`` painted the images of
    ``--show-dir`` (detection: the run's timestamp folder)."""
    if scope == 'mmseg':
        return osp.abspath(osp.join(show_dir, 'vis_data', 'vis_image'))
    if scope == 'mmpretrain':
        return osp.abspath(show_dir)
    work_dir = osp.abspath(work_dir)
    runs = [d for d in glob.glob(osp.join(glob.escape(work_dir), '*',
                                          show_dir))
            if osp.isdir(d) and osp.getmtime(d) >= since - 1]
    return max(runs, key=osp.getmtime) if runs else None


def test_main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser('test').parse_args(argv)
    check_checkpoint_file(args.checkpoint)
    cfg = load_config(args.config, args.cfg_options)
    scope = scope_of(cfg)
    check_test_args(args, cfg, scope)
    check_config(cfg)
    started = time.time()
    run_upstream(scope, 'test', test_argv(args, cfg, scope))
    from mmengine.dist import is_main_process
    if is_main_process():
        if args.show_dir:
            folder = show_dir_of(_work_dir(cfg, args), args.show_dir, scope,
                                 started)
            n = len([f for f in os.listdir(folder) if f.endswith(
                ('.png', '.jpg', '.jpeg'))]) if folder and osp.isdir(
                    folder) else 0
            print(f'--show-dir: {n} painted image(s) in {folder}',
                  flush=True)
        if args.out is not None:
            print(f'--out: {args.out_item or "pred"} written to {args.out}',
                  flush=True)
    shutdown_dist()
    return 0


def train_tool(argv: Optional[List[str]] = None) -> int:
    """``tools/train.py``: :func:`train_main` with the tools' errors."""
    return run_tool(train_main, argv, prog='train.py')


def test_tool(argv: Optional[List[str]] = None) -> int:
    """``tools/test.py``: :func:`test_main` with the tools' errors."""
    return run_tool(test_main, argv, prog='test.py')


__all__ = ['NATIVE', 'parser', 'upstream_tool', 'run_upstream', 'train_argv',
           'test_argv', 'train_main', 'test_main', 'train_tool', 'test_tool']
