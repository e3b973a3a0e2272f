"""Compatibility fixes for the OpenMMLab 2.0 stack, applied on import.

* :mod:`.checkpoint`: mmengine Runner checkpoints load under torch >= 2.6
  with ``weights_only=True`` (an exact allow-list, no unrestricted
  unpickling): mmengine's loaders read through :func:`safe_load`. It and
  :func:`allow_globals` (for checkpoints that need more types in a limited
  scope, :data:`RELEASE_CHECKPOINT_GLOBALS` for the iFormer authors' release
  files) live in :mod:`iformer_mm.models.checkpoint`, importable from here
  too.
* :mod:`.coreml`: coremltools' TorchScript (traced) conversion under
  numpy >= 2.4.

Each fix is idempotent and does nothing where it is not needed.
"""
from .checkpoint import (RELEASE_CHECKPOINT_GLOBALS, RUNNER_CHECKPOINT_GLOBALS,
                         UnsafeCheckpointError, allow_globals,
                         patch_mmengine_checkpoint_loaders, safe_load,
                         torch_defaults_to_weights_only)
from .coreml import install_coremltools_hook, patch_coremltools


def apply_all() -> None:
    """Apply every fix (done once on ``import iformer_mm``)."""
    patch_mmengine_checkpoint_loaders()
    install_coremltools_hook()


apply_all()

__all__ = [
    'RELEASE_CHECKPOINT_GLOBALS', 'RUNNER_CHECKPOINT_GLOBALS',
    'UnsafeCheckpointError', 'allow_globals', 'apply_all',
    'patch_coremltools', 'patch_mmengine_checkpoint_loaders', 'safe_load',
    'torch_defaults_to_weights_only'
]
