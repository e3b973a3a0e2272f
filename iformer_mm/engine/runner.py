"""``IFormerRunner``: mmengine's ``Runner`` with the project's safety.

Named as ``runner_type='IFormerRunner'`` in ``configs/_base_/default_runtime_*.py``,
so that every tool that honours ``runner_type`` builds it: ours, mmdet's,
mmseg's and mmpretrain's ``tools/train.py``, and ``mim train``. It adds, each
in the smallest method:

* :meth:`from_cfg`: the config is checked before anything is built
  (:func:`~iformer_mm.engine.config_check.check_config`), adapted to a
  machine without CUDA (:func:`adapt_to_machine`), and mmengine's checkpoint
  hook and train loops are upgraded to the atomic and exactly-resuming ones
  (:func:`make_resumable`);
* :meth:`setup_env`: a distributed run creates its process group on a CPU
  too (gloo);
* :meth:`train`: one training per work dir (:class:`~iformer_mm.engine.lock.WorkDirLock`),
  the temporary files of interrupted writes cleared, the datasets checked;
* :meth:`load_or_resume`: ``resume`` without ``load_from`` continues from
  the newest *intact* checkpoint of the work dir (skipping truncated ones,
  each named), or starts from scratch saying so; an explicit checkpoint is
  checked first.
"""
from __future__ import annotations

import copy
from typing import Any, List, Optional

import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..datasets.checks import check_datasets
from .dist import init_dist_env
from .loops import RESUMABLE_LOOPS


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

    * every ``SyncBN`` (no CPU kernel) becomes ``BN``, as mmengine already
      does for a single-process run; ``sync_bn`` conversion is dropped;
    * the distributed backend becomes ``gloo`` and the DDP wrapper
      :class:`~iformer_mm.engine.dist.DeviceAwareDDP` (the user's wrapper
      settings kept);
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


@RUNNERS.register_module()
class IFormerRunner(Runner):
    """mmengine's ``Runner`` with the checks and the safety described in
    the module doc; same arguments."""

    @classmethod
    def from_cfg(cls, cfg) -> 'IFormerRunner':
        from .config_check import check_config
        cfg = copy.deepcopy(cfg)
        warnings = check_config(cfg)
        notes = adapt_to_machine(cfg) + make_resumable(cfg)
        runner = super().from_cfg(cfg)
        if runner.rank == 0:
            for warning in warnings:
                runner.logger.warning(warning)
        for note in notes:
            runner.logger.info(f'[iformer_mm] {note}')
        return runner

    def setup_env(self, env_cfg: dict) -> None:
        if self.distributed:
            init_dist_env(self.launcher, **env_cfg.get('dist_cfg', {}))
        super().setup_env(env_cfg)

    def train(self):
        from .lock import lock_work_dir
        lock = lock_work_dir(self.work_dir)
        try:
            check_datasets(self.cfg, ('train', 'val'))
            return super().train()
        finally:
            if lock is not None:
                lock.release()

    def val(self):
        check_datasets(self.cfg, ('val', ))
        return super().val()

    def test(self):
        check_datasets(self.cfg, ('test', ))
        return super().test()

    def load_or_resume(self) -> None:
        from .resume import check_resume_checkpoint, find_resume_checkpoint
        if not self._has_loaded and self._resume:
            if self._load_from is None:
                path, skipped = find_resume_checkpoint(self.work_dir)
                for line in skipped:
                    print_log(f'--resume: {line}', logger='current')
                if path is None:
                    print_log(f'--resume: no checkpoint in {self.work_dir} '
                              f'to resume from; starting from scratch.',
                              logger='current')
                    self._resume = False
                else:
                    if skipped:
                        print_log(f'--resume: resuming from {path}, the '
                                  f'newest intact checkpoint.',
                                  logger='current')
                    self._load_from = path
            else:
                check_resume_checkpoint(str(self._load_from))
        super().load_or_resume()


__all__ = ['IFormerRunner', 'adapt_to_machine', 'make_resumable']
