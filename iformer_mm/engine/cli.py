"""Command lines of ``tools/train.py`` and ``tools/test.py``.

They take mmdet's options (``--work-dir``, ``--resume``, ``--amp``,
``--auto-scale-lr``, ``--cfg-options``, ``--launcher``; for testing
``--out``, ``--show``, ``--show-dir``, ``--tta``) and run any config of ours,
detection, segmentation or classification: the config's ``default_scope``
decides which codebase's conventions apply.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from copy import deepcopy
from typing import Optional, Sequence

from mmengine.config import Config, ConfigDict, DictAction

from ..datasets.checks import DatasetNotFoundError
from ..errors import UserError
from .dist import LAUNCHERS
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
    _common(parser)
    return _finish(parser, argv)


def parse_test_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) an iFormer detector, segmentor or '
        'classifier')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out', help='save the predictions: a .pkl file for detection and '
        'classification, a directory of PNG label maps for segmentation')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir', help='save painted predictions to '
        '<work_dir>/<timestamp>/<show_dir>')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='display time (s)')
    parser.add_argument(
        '--tta', action='store_true',
        help='test-time augmentation (the config\'s tta_model/tta_pipeline)')
    _add_allow_partial(parser)
    _common(parser)
    return _finish(parser, argv)


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
    cfg = load_config(
        args.config, cfg_options=args.cfg_options, work_dir=args.work_dir,
        launcher=args.launcher, amp=args.amp,
        auto_scale_lr=args.auto_scale_lr, resume=args.resume)
    config_scope(cfg)
    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None
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
    lock = None
    try:
        cfg = train_cfg_from_args(args)
        lock = lock_work_dir(cfg)
        runner = build_runner(cfg, splits=('train', 'val'))
    except (DatasetNotFoundError, UserError) as e:
        if lock is not None:
            lock.release()
        print(f'error: {e}', file=sys.stderr)
        return 2
    _route_checkpoint_loading(runner, strict=False)
    try:
        runner.train()
    finally:
        if lock is not None:
            lock.release()
    return 0


# --------------------------------------------------------------------------
# Testing
# --------------------------------------------------------------------------
def _enable_visualization(cfg: Config, args, scope: str) -> None:
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise RuntimeError('--show/--show-dir need default_hooks.'
                           'visualization in the config.')
    vis = hooks.visualization
    if scope == 'mmpretrain':
        vis.enable = True
        vis.show = args.show
        vis.wait_time = args.wait_time
        vis.out_dir = args.show_dir
    else:
        vis.draw = True
        vis.show = args.show
        vis.wait_time = args.wait_time
        if scope == 'mmdet':
            vis.test_out_dir = args.show_dir
        else:
            cfg.visualizer.save_dir = args.show_dir
    if args.show:
        # A window per image only makes sense for a single process.
        cfg.test_dataloader.num_workers = 0


def _apply_tta(cfg: Config, scope: str) -> None:
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        if scope != 'mmdet':
            raise RuntimeError('--tta needs tta_model and tta_pipeline in '
                               'the config.')
        # mmdet's default: horizontal flip, merged by NMS.
        cfg.setdefault('tta_model', ConfigDict(
            type='DetTTAModel',
            tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5),
                         max_per_img=100)))
        if 'tta_pipeline' not in cfg:
            ds = cfg.test_dataloader.dataset
            while 'dataset' in ds:
                ds = ds.dataset
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
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    ds = cfg.test_dataloader.dataset
    while 'dataset' in ds:
        ds = ds.dataset
    ds.pipeline = cfg.tta_pipeline


def test_cfg_from_args(args) -> Config:
    cfg = load_config(args.config, cfg_options=args.cfg_options,
                      work_dir=args.work_dir, launcher=args.launcher)
    scope = config_scope(cfg)
    cfg.load_from = args.checkpoint
    # The test checkpoint holds every weight: skip downloading the
    # ImageNet initialisation of the backbone.
    backbone = cfg.model.get('backbone', None)
    if backbone is not None and backbone.get('init_cfg', None):
        backbone.init_cfg = None
    if args.show or args.show_dir:
        _enable_visualization(cfg, args, scope)
    if args.tta:
        _apply_tta(cfg, scope)
    if args.out is not None and scope == 'mmseg':
        # mmseg: a directory of PNG predictions (IoUMetric.output_dir).
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    elif args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError('--out must be a .pkl file for detection and '
                         'classification configs.')
    return cfg


def _add_dump_metric(runner, out: str, scope: str) -> None:
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=out))
    else:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=out))


def test_main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_test_args(argv)
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        print(f'error: checkpoint {args.checkpoint!r} not found',
              file=sys.stderr)
        return 2
    try:
        cfg = test_cfg_from_args(args)
        runner = build_runner(cfg, splits=('test', ))
    except DatasetNotFoundError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    _route_checkpoint_loading(runner, strict=not args.allow_partial)
    scope = config_scope(cfg)
    if args.out is not None and scope != 'mmseg':
        _add_dump_metric(runner, args.out, scope)
    runner.test()
    return 0
