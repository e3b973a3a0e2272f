"""mmengine's checkpoint loaders, made ``weights_only=True`` (on import).

torch 2.6 made ``torch.load`` default to ``weights_only=True``. mmengine
0.10.7 calls ``torch.load`` without that argument, so under torch 2.6+ its
Runner cannot read back the checkpoints it wrote itself: besides tensors they
carry the ``MessageHub`` state, whose ``HistoryBuffer`` objects hold numpy
arrays and a table of statistics methods. The usual workaround
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` or ``weights_only=False``) turns every
checkpoint into arbitrary code execution.

:func:`patch_mmengine_checkpoint_loaders` (applied on ``import iformer_mm``)
instead adds :data:`RUNNER_CHECKPOINT_GLOBALS` to torch's allow-list and
re-registers mmengine's local-file and http(s) loaders so that they read
through :func:`~iformer_mm.models.checkpoint.safe_load`: ``weights_only=True``
explicitly (which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot override), a
refusal as :class:`UnsafeCheckpointError` naming the offending globals,
nothing from a refused file executed and no fallback to an unrestricted
unpickle.

The allow-lists, the safe reading, the diagnosis of bad files and the
download live in :mod:`iformer_mm.models.checkpoint`; their names are
importable from here too, as before.
"""
from __future__ import annotations

import torch

from ..models.checkpoint import (  # noqa: F401  (re-exported)
    RELEASE_CHECKPOINT_GLOBALS, RUNNER_CHECKPOINT_GLOBALS,
    CheckpointNotFoundError, UnsafeCheckpointError, allow_globals,
    check_checkpoint_path, diagnose_checkpoint_file, download_checkpoint,
    safe_load)

__all__ = [
    'UnsafeCheckpointError', 'CheckpointNotFoundError',
    'check_checkpoint_path',
    'RUNNER_CHECKPOINT_GLOBALS', 'diagnose_checkpoint_file',
    'RELEASE_CHECKPOINT_GLOBALS', 'safe_load', 'allow_globals',
    'patch_mmengine_checkpoint_loaders', 'torch_defaults_to_weights_only'
]


def torch_defaults_to_weights_only() -> bool:
    """Whether this torch's ``torch.load`` defaults to ``weights_only=True``
    (torch >= 2.6) and has the allow-list API the loaders rely on."""
    if not hasattr(torch.serialization, 'add_safe_globals') or \
            not hasattr(torch.serialization, 'safe_globals'):
        return False
    major, minor = (int(p) for p in torch.__version__.split('.')[:2])
    return (major, minor) >= (2, 6)


def load_from_local(filename, map_location=None):
    """mmengine's local checkpoint loader, with ``weights_only=True``."""
    return safe_load(filename, map_location=map_location)


def load_from_http(filename, map_location=None, model_dir=None,
                   progress=None):
    """mmengine's http(s) checkpoint loader, with ``weights_only=True``:
    the file is downloaded into torch hub's cache as mmengine does (see
    :func:`~iformer_mm.models.checkpoint.download_checkpoint`), then read
    through :func:`safe_load`."""
    return safe_load(download_checkpoint(filename, model_dir, progress),
                     map_location=map_location)


_PATCHED = False


def patch_mmengine_checkpoint_loaders() -> bool:
    """Register the allow-list and mmengine's weights_only loaders.

    Idempotent. A no-op (returns False) on torch < 2.6, where ``torch.load``
    has no default allow-list to extend.
    """
    global _PATCHED
    if _PATCHED:
        return True
    if not torch_defaults_to_weights_only():
        return False
    torch.serialization.add_safe_globals(list(RUNNER_CHECKPOINT_GLOBALS))
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), loader=load_from_http, force=True)
    _PATCHED = True
    return True
