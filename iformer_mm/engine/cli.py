"""Command lines of ``tools/train.py`` and ``tools/test.py``.

They take the options of the upstream tools (``--work-dir``, ``--resume``,
``--amp``, ``--auto-scale-lr``, ``--cfg-options``, ``--launcher``; for
testing ``--out``, ``--out-item``, ``--show``, ``--show-dir``,
``--interval``, ``--wait-time``, ``--tta``, ``--no-pin-memory``, ``--amp``)
and run any config of ours, detection, segmentation or classification: the
config's ``default_scope`` decides which codebase's ``tools/test.py``
behaviour applies (mmdet 3.3, mmseg 1.2, mmpretrain 1.2).

Both go through :func:`~iformer_mm.engine.errors_cli.run_tool` in
``tools/``: a user mistake is one line on stderr and exit code 2,
``--debug`` shows the traceback. The config is checked
(:func:`~iformer_mm.engine.config_check.check_config`) before anything is
built.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from copy import deepcopy
from typing import List, Optional, Sequence

from mmengine.config import Config, ConfigDict, DictAction

from ..errors import CheckpointError, ConfigError, UserError  # noqa: F401
from .dist import LAUNCHERS, shutdown_dist
from .errors_cli import add_debug_argument, run_tool
from .runner import build_runner, config_scope, load_config

_CFG_OPTIONS_HELP = (
    'override settings of the config, key=value pairs merged into it, e.g. '
    'model.backbone.init_cfg=None train_cfg.max_epochs=1; a list is '
    'key="[a,b]" or key=a,b, no white space.')


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--work-dir', help='directory for logs and checkpoints (default: '
        './work_dirs/<config name>)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help=_CFG_OPTIONS_HELP)
    parser.add_argument(
        '--launcher', choices=LAUNCHERS, default='none',
        help='job launcher (pytorch: torchrun / tools/dist_*.sh, slurm: '
        'tools/slurm_*.sh)')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or
    # --local_rank (older).
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_debug_argument(parser)


def _finish(parser: argparse.ArgumentParser,
            argv: Optional[Sequence[str]]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def parse_train_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(
        description='Train an iFormer detector, segmentor or classifier')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from CHECKPOINT, or without a value from the latest '
        'checkpoint in the work dir')
    parser.add_argument(
        '--amp', action='store_true',
        help='automatic mixed precision (GPU only; ignored on CPU)')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the lr linearly from auto_scale_lr.base_batch_size to '
        'the batch of this run')
    parser.add_argument(
        '--no-validate', action='store_true',
        help='do not evaluate during training')
    # mmpretrain's tools/train.py options
    parser.add_argument(
        '--no-pin-memory', action='store_true',
        help='pin_memory=False in every dataloader')
    parser.add_argument(
        '--no-persistent-workers', action='store_true',
        help='persistent_workers=False in every dataloader')
    _common(parser)
    return _finish(parser, argv)


def parse_test_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) an iFormer detector, segmentor or '
        'classifier, with the options of the upstream tools/test.py of the '
        "config's codebase (its default_scope).")
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out', help='save the predictions: a .pkl file for detection and '
        'classification, a directory of PNG label maps for segmentation; '
        'with --out-item metrics, a .json/.yaml/.pkl file of the metrics')
    parser.add_argument(
        '--out-item', choices=['metrics', 'pred'],
        help='what --out holds: the predictions (default) or the metrics')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir', help='save painted predictions: detection to '
        '<work_dir>/<timestamp>/<show_dir>/, segmentation to '
        '<show_dir>/vis_data/vis_image/, classification to <show_dir>/ '
        '(as the upstream tools do)')
    parser.add_argument(
        '--interval', type=int, default=1,
        help='with --show/--show-dir, paint every INTERVAL-th image '
        '(default 1: all)')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='display time (s)')
    parser.add_argument(
        '--tta', action='store_true',
        help="test-time augmentation: the config's tta_model/tta_pipeline; "
        'classification without them averages a horizontal flip '
        "(mmpretrain's default); Mask R-CNN has none in mmdet")
    parser.add_argument(
        '--no-pin-memory', action='store_true',
        help='do not pin the memory of the test dataloader')
    parser.add_argument(
        '--amp', action='store_true',
        help='mixed-precision test (test_cfg.fp16: float16 autocast on a '
        'GPU, bfloat16 on the CPU)')
    _add_allow_partial(parser)
    _common(parser)
    args = _finish(parser, argv)
    if args.interval < 1:
        parser.error(f'--interval must be >= 1, got {args.interval}')
    return args


# --------------------------------------------------------------------------
# Checks shared by both tools
# --------------------------------------------------------------------------
def check_config_path(path: str) -> None:
    """A missing config (one line naming it and the closest file there) or
    one that is not valid Python."""
    if osp.isfile(path):
        if path.endswith('.py'):
            import ast
            with open(path, encoding='utf-8') as f:
                source = f.read()
            try:
                ast.parse(source, filename=path)
            except SyntaxError as e:
                raise ConfigError(
                    f'config file {path!r} has a syntax error at line '
                    f'{e.lineno}: {e.msg}') from e
        return
    folder = osp.dirname(path) or '.'
    hint = ''
    if osp.isdir(folder):
        from .errors_cli import closest
        hit = closest(osp.basename(path),
                      [f for f in os.listdir(folder) if f.endswith('.py')])
        if hit:
            hint = f'; did you mean {osp.join(osp.dirname(path), hit[0])!r}?'
    raise ConfigError(f'config file {path!r} not found{hint}')


def check_and_warn(cfg: Config) -> None:
    """Run the config checks; print their warnings (one line each)."""
    from .config_check import check_config
    warnings = check_config(cfg)
    if os.environ.get('RANK', '0') == '0':  # once per distributed run
        for warning in warnings:
            print(f'warning: {warning}', file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Checkpoint loading: the Runner's load_from goes through the project's
# loader (iformer_mm.engine.loading): strict for testing, one summary line
# for training.
# --------------------------------------------------------------------------
def _add_allow_partial(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--allow-partial', action='store_true',
        help='load a checkpoint that does not fit the model (missing, '
        'unexpected or wrong-shape keys) as far as it fits, with a warning '
        'that counts them; by default that is an error naming the keys')


def _route_checkpoint_loading(runner, strict: bool) -> None:
    from .loading import install_checkpoint_loading
    install_checkpoint_loading(runner, strict=strict)


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------
def train_cfg_from_args(args) -> Config:
    check_config_path(args.config)
    cfg = load_config(
        args.config, cfg_options=args.cfg_options, work_dir=args.work_dir,
        launcher=args.launcher, amp=args.amp,
        auto_scale_lr=args.auto_scale_lr, resume=args.resume)
    config_scope(cfg)
    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name, None)
        if loader is None:
            continue
        if getattr(args, 'no_pin_memory', False):
            loader['pin_memory'] = False
        if getattr(args, 'no_persistent_workers', False):
            loader['persistent_workers'] = False
    check_and_warn(cfg)
    return cfg


def lock_work_dir(cfg: Config):
    """Take the work-dir lock (on the first process of a distributed run)
    and clear what killed atomic writes left; ``None`` on other ranks."""
    from .lock import WorkDirLock
    from .resume import remove_interrupted_writes
    rank = os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0'))
    if rank != '0':
        return None
    lock = WorkDirLock(osp.abspath(cfg.work_dir)).acquire()
    if lock.took_over:
        print(f'[iformer_mm] took over the lock of {cfg.work_dir} left by '
              f"PID {lock.took_over.get('pid')}, which is gone")
    for path in remove_interrupted_writes(cfg.work_dir):
        print(f'[iformer_mm] removed {path} (an interrupted checkpoint '
              f'write)')
    return lock


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_train_args(argv)
    cfg = train_cfg_from_args(args)
    lock = lock_work_dir(cfg)
    try:
        runner = build_runner(cfg, splits=('train', 'val'))
        _route_checkpoint_loading(runner, strict=False)
        runner.train()
        # Drop the runner (its DDP model holds the process group) before
        # the group is shut down.
        del runner
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
    before the config and the model are built.

    Only the bytes are looked at (the same diagnosis as the loader's,
    :func:`iformer_mm.compat.checkpoint.diagnose_checkpoint_file`); the
    content is checked when it is loaded.
    """
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


def _innermost_dataset(dataset):
    while 'dataset' in dataset:
        dataset = dataset['dataset']
    return dataset


def _enable_visualization(cfg: Config, args, scope: str) -> None:
    """Turn the visualisation hook on as the upstream tools/test.py does,
    painting every ``--interval``-th image (the configs' hooks default to
    one image in 50 or 5000)."""
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise ConfigError('--show/--show-dir need default_hooks.'
                          "visualization (e.g. dict(type='"
                          + {'mmdet': 'DetVisualizationHook',
                             'mmseg': 'SegVisualizationHook'}.get(
                                 scope, 'VisualizationHook')
                          + "')) in the config")
    vis = hooks.visualization
    vis.interval = args.interval
    if scope == 'mmpretrain':
        vis.enable = True
        vis.show = args.show
        vis.wait_time = args.wait_time
        vis.out_dir = args.show_dir
    else:
        vis.draw = True
        if args.show:
            vis.show = True
            vis.wait_time = args.wait_time
        if scope == 'mmdet':
            if args.show_dir:
                vis.test_out_dir = args.show_dir
            if args.interval > 1:
                # mmdet's hook paints every test image whatever its
                # interval; this subclass honours it.
                from .vis_hooks import register_interval_det_hook
                vis.type = register_interval_det_hook()
        elif args.show_dir:
            cfg.visualizer.save_dir = args.show_dir
    if args.show:
        # A window per image only makes sense for a single process.
        cfg.test_dataloader.num_workers = 0


def _model_predicts_masks(model: dict) -> bool:
    if not isinstance(model, dict):
        return False
    if model.get('mask_head') is not None:
        return True
    return any(_model_predicts_masks(v) for v in model.values()
               if isinstance(v, dict))


def _apply_tta(cfg: Config, scope: str) -> None:
    """``--tta`` as the upstream tools/test.py of ``scope`` does it."""
    ds = _innermost_dataset(cfg.test_dataloader.dataset)
    if scope == 'mmdet':
        tta_type = cfg.get('tta_model', {}).get('type', 'DetTTAModel')
        if _model_predicts_masks(cfg.model) and 'DetTTAModel' in str(
                tta_type):
            raise ConfigError(
                '--tta: mmdet 3.3 has no test-time augmentation for '
                'instance segmentation (Mask R-CNN); its DetTTAModel merges '
                'boxes only. Test without --tta.')
        # mmdet's default: horizontal flip, merged by NMS.
        cfg.setdefault('tta_model', ConfigDict(
            type='DetTTAModel',
            tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5),
                         max_per_img=100)))
        if 'tta_pipeline' not in cfg:
            pipeline = deepcopy(ds.pipeline)
            pipeline[-1] = dict(
                type='TestTimeAug',
                transforms=[[dict(type='RandomFlip', prob=1.),
                             dict(type='RandomFlip', prob=0.)],
                            [dict(type='PackDetInputs', meta_keys=(
                                'img_id', 'img_path', 'ori_shape',
                                'img_shape', 'scale_factor', 'flip',
                                'flip_direction'))]])
            cfg.tta_pipeline = pipeline
    elif scope == 'mmpretrain':
        # mmpretrain's default: average the scores of the image and its
        # horizontal flip.
        cfg.setdefault('tta_model',
                       ConfigDict(type='mmpretrain.AverageClsScoreTTA'))
        if 'tta_pipeline' not in cfg:
            pipeline = deepcopy(ds.pipeline)
            pipeline[-1] = dict(
                type='TestTimeAug',
                transforms=[[dict(type='RandomFlip', prob=1.),
                             dict(type='RandomFlip', prob=0.)],
                            [deepcopy(ds.pipeline[-1])]])
            cfg.tta_pipeline = pipeline
    elif 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise ConfigError('--tta needs tta_model and tta_pipeline in the '
                          'config (mmseg has no default)')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    ds.pipeline = cfg.tta_pipeline


def _apply_dataloader_args(cfg: Config, args, scope: str) -> None:
    loader = cfg.get('test_dataloader', None)
    if loader is None:
        return
    if scope == 'mmpretrain':
        # mmpretrain's tools/test.py defaults.
        loader.setdefault('pin_memory', True)
        loader.setdefault('collate_fn', dict(type='default_collate'))
    if args.no_pin_memory:
        loader.pin_memory = False


def test_cfg_from_args(args) -> Config:
    check_config_path(args.config)
    cfg = load_config(args.config, cfg_options=args.cfg_options,
                      work_dir=args.work_dir, launcher=args.launcher)
    scope = config_scope(cfg)
    if args.out_item is not None and args.out is None:
        raise ConfigError('--out-item needs --out (the file to write)')
    if args.out is not None:
        check_out_path(args.out, scope, args.out_item)
    cfg.load_from = args.checkpoint
    # The test checkpoint holds every weight: skip downloading the
    # ImageNet initialisation of the backbone.
    backbone = cfg.model.get('backbone', None)
    if backbone is not None and backbone.get('init_cfg', None):
        backbone.init_cfg = None
    if args.amp:
        cfg.setdefault('test_cfg', ConfigDict())
        cfg.test_cfg.fp16 = True
    if args.show or args.show_dir:
        _enable_visualization(cfg, args, scope)
    if args.tta:
        _apply_tta(cfg, scope)
    _apply_dataloader_args(cfg, args, scope)
    if args.out is not None and scope == 'mmseg' and \
            args.out_item != 'metrics':
        # mmseg: a directory of PNG predictions (IoUMetric.output_dir).
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    check_and_warn(cfg)
    return cfg


def _add_dump_metric(runner, out: str, scope: str) -> None:
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=out))
    else:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=out))


def show_dir_of(runner, args, scope: str) -> Optional[str]:
    """Where the painted images of ``--show-dir`` are (upstream layout)."""
    if not args.show_dir:
        return None
    if scope == 'mmdet':
        return osp.join(runner.work_dir, runner.timestamp, args.show_dir)
    if scope == 'mmseg':
        return osp.join(args.show_dir, 'vis_data', 'vis_image')
    return args.show_dir


def _report_outputs(runner, args, scope: str) -> None:
    from mmengine.dist import is_main_process
    if not is_main_process():
        return
    folder = show_dir_of(runner, args, scope)
    if folder is not None:
        n = len([f for f in os.listdir(folder) if f.endswith(
            ('.png', '.jpg', '.jpeg'))]) if osp.isdir(folder) else 0
        print(f'--show-dir: {n} painted image(s) in {folder}', flush=True)
    if args.out is not None:
        print(f'--out: {args.out_item or "pred"} written to {args.out}',
              flush=True)


def test_main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_test_args(argv)
    check_checkpoint_file(args.checkpoint)
    cfg = test_cfg_from_args(args)
    runner = build_runner(cfg, splits=('test', ))
    _route_checkpoint_loading(runner, strict=not args.allow_partial)
    scope = config_scope(cfg)
    if args.out is not None and scope != 'mmseg' and \
            args.out_item != 'metrics':
        _add_dump_metric(runner, args.out, scope)
    metrics = runner.test()
    if args.out is not None and args.out_item == 'metrics':
        import mmengine
        from mmengine.dist import is_main_process
        if is_main_process():
            mmengine.dump(metrics, args.out)
    _report_outputs(runner, args, scope)
    del runner
    shutdown_dist()
    return 0


def train_tool(argv: Optional[List[str]] = None) -> int:
    """``tools/train.py``: :func:`train_main` with the tools' errors."""
    return run_tool(train_main, argv, prog='train.py')


def test_tool(argv: Optional[List[str]] = None) -> int:
    """``tools/test.py``: :func:`test_main` with the tools' errors."""
    return run_tool(test_main, argv, prog='test.py')
