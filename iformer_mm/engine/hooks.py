"""Hooks for loading and testing, named in the configs' ``default_hooks``.

* :class:`StrictLoadFromHook` (``default_hooks.strict_load``): the Runner's
  ``load_from`` goes through the project's loader
  (:func:`iformer_mm.models.checkpoint.load_state_into_model`) instead of
  mmengine's ``strict=False`` load with a wall of keys. When testing, a file
  that does not fit the model raises
  :class:`~iformer_mm.errors.CheckpointMismatchError` naming the keys
  (``strict=False``, i.e. ``tools/test.py --allow-partial``, loads what fits
  and warns with the counts); when training (fine-tuning may change a head)
  it logs one summary line. Every layout the loader knows is renamed to the
  model's keys on the way (e.g. the authors' mmdet / mmseg checkpoints).
  Resuming is left to mmengine.
* :class:`DumpMetricsHook`: writes the test metrics to a file
  (``tools/test.py --out FILE --out-item metrics``).
"""
from __future__ import annotations

import mmengine
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop

from ..models.checkpoint import load_state_into_model, unwrap_model


@HOOKS.register_module()
class StrictLoadFromHook(Hook):
    """Load the Runner's ``load_from`` through the project's loader.

    Args:
        strict (bool): When testing, raise on any missing, unexpected or
            wrong-shape key (default); False loads what fits and warns with
            the counts. Training always loads what fits, with one summary
            line.
    """

    priority = 'VERY_HIGH'  # before any other hook sees the checkpoint

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.report = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if getattr(runner, '_resume', False):
            return  # resuming: every key is the run's own, mmengine loads
        training = isinstance(getattr(runner, '_train_loop', None),
                              BaseLoop)
        source = str(getattr(runner, '_load_from', None) or '<checkpoint>')
        report = load_state_into_model(
            runner.model, checkpoint, source=source,
            strict=self.strict and not training, verbose=False)
        self.report = report
        line = f'load_from {report.summary()}'
        if not report.complete:
            line += '; ' + report.details(limit=4)
        runner.logger.log(30 if not report.complete else 20, line)
        # mmengine copies checkpoint['state_dict'] into the model next. Hand
        # it the model's own tensors (now loaded): it copies each onto
        # itself and has no key to warn about.
        checkpoint['state_dict'] = unwrap_model(runner.model).state_dict()


@HOOKS.register_module()
class DumpMetricsHook(Hook):
    """Write the metrics of a test run to ``out_file`` (``.json``,
    ``.yaml`` or ``.pkl``, by its suffix)."""

    priority = 'VERY_LOW'

    def __init__(self, out_file: str) -> None:
        self.out_file = out_file

    def after_test_epoch(self, runner, metrics=None) -> None:
        if is_main_process():
            mmengine.dump(dict(metrics or {}), self.out_file)


__all__ = ['StrictLoadFromHook', 'DumpMetricsHook']
