"""Whole-model checkpoint loading inside mmengine's Runner.

mmengine's Runner loads ``load_from`` with ``strict=False`` and a warning
that lists keys in a wall of text: a checkpoint of the wrong arch, or a
backbone-only one, then runs (and evaluates) a half-random model. Here the
Runner's load goes through :func:`iformer_mm.models.checkpoint.load_state_into_model`
instead, by a hook on ``after_load_checkpoint`` (the one point between
reading the file and copying it into the model, after the model's own
``init_weights``):

* ``tools/test.py`` (``strict=True``): a file that does not fit the model
  raises :class:`~iformer_mm.errors.CheckpointMismatchError` naming the
  keys; ``--allow-partial`` loads what fits and warns with the counts;
* ``tools/train.py`` with ``load_from`` (``strict=False``, fine-tuning may
  change a head): one summary line, loaded / missing / unexpected / wrong
  shape.

Resuming (``--resume``) is left to mmengine: the hook does nothing then.
Every layout :mod:`iformer_mm.models.checkpoint` knows is renamed to the
model's keys on the way (e.g. the authors' mmdet / mmseg checkpoints).
"""
from __future__ import annotations

from mmengine.hooks import Hook

from ..models.checkpoint import _unwrap_model, load_state_into_model


class StrictLoadFromHook(Hook):
    """Load the Runner's ``load_from`` through the project's loader.

    Args:
        strict (bool): Raise on any missing, unexpected or wrong-shape key
            (testing); False loads what fits and logs one summary line
            (training, ``--allow-partial``).
    """

    priority = 'VERY_HIGH'  # before any other hook sees the checkpoint

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.report = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if getattr(runner, '_resume', False):
            return  # resuming: every key is the run's own, mmengine loads
        source = str(getattr(runner, '_load_from', None) or '<checkpoint>')
        report = load_state_into_model(runner.model, checkpoint,
                                       source=source, strict=self.strict,
                                       verbose=False)
        self.report = report
        line = f'load_from {report.summary()}'
        if not report.complete:
            line += '; ' + report.details(limit=4)
        runner.logger.log(30 if not report.complete else 20, line)
        # mmengine copies checkpoint['state_dict'] into the model next. Hand
        # it the model's own tensors (now loaded): it copies each onto
        # itself and has no key to warn about.
        checkpoint['state_dict'] = _unwrap_model(runner.model).state_dict()


def install_checkpoint_loading(runner, strict: bool = True
                               ) -> StrictLoadFromHook:
    """Route the runner's ``load_from`` through :class:`StrictLoadFromHook`
    (see the module doc). Returns the hook (its ``report`` after loading).
    """
    hook = StrictLoadFromHook(strict=strict)
    runner.register_hook(hook)
    return hook


__all__ = ['StrictLoadFromHook', 'install_checkpoint_loading']
