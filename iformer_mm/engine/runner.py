"""Config handling and runner construction shared by ``tools/train.py`` and
``tools/test.py``.

The tools stay OpenMMLab-shaped (mmdet's command line); what they add lives
here so that it can be tested and reused from Python:

* :func:`load_config` reads a config and applies the command-line options
  in the order mmdet's tools do (``--cfg-options``, ``--work-dir``,
  ``--amp``, ``--auto-scale-lr``, ``--resume``).
* :func:`adapt_to_machine` makes a multi-GPU config run where it is started:
  on a machine without CUDA, SyncBN becomes BN, the distributed backend
  becomes gloo, the DDP wrapper becomes :class:`DeviceAwareDDP` and AMP is
  turned off (mmengine's AMP wrapper needs a GPU).
* :func:`make_resumable` puts
  :class:`~iformer_mm.engine.checkpointing.SafeCheckpointHook` (atomic
  saves) and the loops of :mod:`iformer_mm.engine.loops` (exact
  mid-epoch resume) in place of mmengine's.
* :func:`build_runner` checks the datasets (toy datasets are generated,
  missing real ones raise :class:`DatasetNotFoundError`), creates the
  process group where mmengine cannot, and builds the runner.
"""
from __future__ import annotations

import copy
import os.path as osp
from typing import Any, List, Optional, Sequence

import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log

from ..datasets.checks import check_datasets
from .dist import init_dist_env
from .loops import RESUMABLE_LOOPS
from .resume import resolve_resume

SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


def config_scope(cfg: Config) -> str:
    """The OpenMMLab codebase a config belongs to (its ``default_scope``)."""
    scope = cfg.get('default_scope', None)
    if scope not in SCOPES:
        raise ValueError(
            f'The config has default_scope={scope!r}; tools/train.py and '
            f'tools/test.py run configs whose default_scope is one of '
            f'{SCOPES}.')
    return scope


def load_config(config: str, *, cfg_options: Optional[dict] = None,
                work_dir: Optional[str] = None, launcher: str = 'none',
                amp: bool = False, auto_scale_lr: bool = False,
                resume: Optional[str] = None) -> Config:
    """Read ``config`` and apply the tools' command-line options.

    ``resume``: ``None`` (no resume), ``'auto'`` (the newest intact
    checkpoint in the work dir; with none, one line says so and training
    starts from scratch) or a checkpoint path (checked:
    :class:`~iformer_mm.errors.CheckpointError` if missing or truncated).
    See :mod:`iformer_mm.engine.resume`.
    """
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config))[0])
    if amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper, '
                             f'got {wrapper}.')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if auto_scale_lr:
        asl = cfg.get('auto_scale_lr', None)
        if not asl or 'base_batch_size' not in asl:
            raise RuntimeError('--auto-scale-lr needs auto_scale_lr='
                               'dict(base_batch_size=...) in the config.')
        cfg.auto_scale_lr.enable = True
    resume_from = resolve_resume(cfg.work_dir, resume)
    if resume_from is not None:
        cfg.resume = True
        cfg.load_from = resume_from
    elif resume is not None:
        cfg.resume = False  # nothing to resume: the config's own start
    return cfg


def _replace_types(node: Any, old: str, new: str) -> int:
    """Replace ``type=old`` by ``type=new`` in nested dicts/lists; a
    registry-scoped name (``'mmengine.CheckpointHook'``) counts as ``old``."""
    count = 0
    if isinstance(node, dict):
        kind = node.get('type')
        if isinstance(kind, str) and kind.split('.')[-1] == old:
            node['type'] = new
            count += 1
        for value in node.values():
            count += _replace_types(value, old, new)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_types(value, old, new)
    return count


def adapt_to_machine(cfg: Config,
                     cuda: Optional[bool] = None) -> List[str]:
    """Make ``cfg`` runnable on this machine; returns what was changed.

    Nothing changes on a machine with CUDA. Without CUDA:

    * every ``SyncBN`` (mmcv's name for ``torch.nn.SyncBatchNorm``, which
      has no CPU kernel) becomes ``BN``, as mmengine already does for a
      single-process run; ``sync_bn`` conversion is dropped;
    * the distributed backend becomes ``gloo`` and the DDP wrapper
      :class:`~iformer_mm.engine.dist.DeviceAwareDDP`;
    * ``AmpOptimWrapper`` falls back to ``OptimWrapper``.
    """
    if cuda is None:
        cuda = torch.cuda.is_available()
    notes: List[str] = []
    if cuda:
        return notes
    n = _replace_types(cfg.model, 'SyncBN', 'BN')
    n += _replace_types(cfg.model, 'MMSyncBN', 'BN')
    if n:
        notes.append(f'{n} SyncBN layer config(s) -> BN (no CUDA)')
    if cfg.get('sync_bn', None) is not None:
        cfg.sync_bn = None
        notes.append('sync_bn conversion disabled (no CUDA)')
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    if dist_cfg.get('backend', 'nccl') == 'nccl':
        dist_cfg.backend = 'gloo'
    if cfg.get('launcher', 'none') != 'none':
        wrapper = cfg.get('model_wrapper_cfg', None)
        if wrapper is None or wrapper.get(
                'type', 'MMDistributedDataParallel') in (
                    'MMDistributedDataParallel', 'DeviceAwareDDP'):
            new = ConfigDict(broadcast_buffers=False,
                             find_unused_parameters=cfg.get(
                                 'find_unused_parameters', False))
            new.update(wrapper or {})  # the user's settings win
            new.type = 'DeviceAwareDDP'
            cfg.model_wrapper_cfg = new
            notes.append('DDP without device_ids, gloo backend (no CUDA)')
    optim_wrapper = cfg.get('optim_wrapper', None)
    if optim_wrapper is not None and \
            optim_wrapper.get('type') == 'AmpOptimWrapper':
        optim_wrapper.type = 'OptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            optim_wrapper.pop(key, None)
        notes.append('--amp ignored: mmengine AMP needs a GPU, training '
                     'in fp32')
    return notes


def make_resumable(cfg: Config) -> List[str]:
    """Use our atomic checkpoint hook and exactly-resuming train loops in
    place of mmengine's (same arguments); returns what was changed."""
    notes: List[str] = []
    n = _replace_types(cfg.get('default_hooks', None), 'CheckpointHook',
                       'SafeCheckpointHook')
    n += _replace_types(cfg.get('custom_hooks', None), 'CheckpointHook',
                        'SafeCheckpointHook')
    if n:
        notes.append('CheckpointHook -> SafeCheckpointHook (atomic saves)')
    train_cfg = cfg.get('train_cfg', None)
    if isinstance(train_cfg, dict):
        loop_type = train_cfg.get('type', None)
        if loop_type is None and 'by_epoch' in train_cfg:
            by_epoch = train_cfg.pop('by_epoch')
            loop_type = 'EpochBasedTrainLoop' if by_epoch else \
                'IterBasedTrainLoop'
            train_cfg.type = loop_type
        if isinstance(loop_type, str) and \
                loop_type.split('.')[-1] in RESUMABLE_LOOPS:
            train_cfg.type = RESUMABLE_LOOPS[loop_type.split('.')[-1]]
    return notes


def build_runner(cfg: Config, splits: Sequence[str] = ('train', 'val')):
    """Check data, create the process group if needed, build the runner.

    ``splits``: the dataloaders this run will use (``('train', 'val')`` for
    training, ``('test',)`` for testing); their datasets are checked (and
    generated, for the toy datasets) before anything is built.
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    config_scope(cfg)
    cfg = copy.deepcopy(cfg)
    notes = adapt_to_machine(cfg)
    notes += make_resumable(cfg)
    check_datasets(cfg, splits)
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    init_dist_env(cfg.get('launcher', 'none'), **dist_cfg)
    if 'runner_type' not in cfg:
        runner = Runner.from_cfg(cfg)
    else:
        runner = RUNNERS.build(cfg)
    for note in notes:
        print_log(f'[iformer_mm] {note}', logger='current')
    return runner
