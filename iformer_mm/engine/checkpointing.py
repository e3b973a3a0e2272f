"""Checkpoints that a kill at any moment cannot destroy.

mmengine 0.10.7's ``CheckpointHook`` writes a checkpoint in place
(``LocalBackend.put`` opens the final name with ``'wb'``), deletes the
oldest checkpoint *before* it writes the new one when ``max_keep_ckpts`` is
reached, and removes the previous ``save_best`` file before the new best is
written. A kill, a full disk or a power cut in between leaves a truncated
newest checkpoint and no older one: nothing to resume from.

Here:

* :class:`AtomicLocalBackend` (file backend ``'iformer_atomic_local'``)
  writes every file into a temporary file in the same directory, flushes
  and fsyncs it, then renames it over the final name (``os.replace``, atomic
  on POSIX and Windows) and fsyncs the directory. A reader sees the old
  complete file or the new complete file, never a partial one.
* :class:`SafeCheckpointHook` (registered in mmengine's ``HOOKS``, used by
  ``configs/_base_/default_runtime_*.py``) saves through that backend, and
  only after the new checkpoint is complete removes the checkpoints that
  ``max_keep_ckpts`` or ``save_best`` retire. It also records the random
  number generators' state in the checkpoint, so that a resumed run draws
  the same random numbers as an uninterrupted one (see
  :mod:`iformer_mm.engine.loops`).
"""
from __future__ import annotations

import os
import os.path as osp
import random
import tempfile
from typing import List, Optional

import numpy as np
import torch
from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

ATOMIC_BACKEND = 'iformer_atomic_local'
_CHUNK = 1 << 20


# --------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------
def _write_data(f, data: bytes) -> None:
    """Write ``data`` to the open file ``f`` in 1 MiB chunks.

    A separate function so that the fault-injection tests can stall the
    writer part-way (``tests/test_reliability.py``)."""
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        f.write(view[start:start + _CHUNK])


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never partial.

    The bytes go to a temporary file in the same directory (same file
    system, so the final rename is atomic), are flushed and fsynced, and
    the file is renamed over ``path``. On any failure the temporary file is
    removed and ``path`` keeps its previous content.
    """
    path = os.fspath(path)
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.',
                               suffix='.tmp', dir=directory)
    os.close(fd)
    try:
        with open(tmp, 'wb') as f:
            _write_data(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, with atomic ``put`` and ``put_text``."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(obj.encode(encoding), filepath)


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


# --------------------------------------------------------------------------
# Random number generator state
# --------------------------------------------------------------------------
def get_rng_state() -> dict:
    """The state of Python's, numpy's and torch's global generators, in
    types that ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(
        python=random.getstate(),
        numpy=dict(kind=str(kind), keys=torch.from_numpy(
            np.asarray(keys, dtype=np.int64)), pos=int(pos),
            has_gauss=int(has_gauss), cached_gaussian=float(cached)),
        torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32),
                         n['pos'], n['has_gauss'], n['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda')
    if cuda is not None and torch.cuda.is_available() and \
            len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------
# The hook
# --------------------------------------------------------------------------
def _is_local(path: Optional[str]) -> bool:
    return path is None or '://' not in str(path)


class _DeferredRemovals:
    """A file backend whose ``remove`` / ``rmtree`` are recorded, not done
    (mmengine's hook deletes retired checkpoints before it writes the new
    one)."""

    def __init__(self, backend):
        self._backend = backend
        self.paths: List[str] = []

    def remove(self, path) -> None:
        self.paths.append(path)

    def rmtree(self, path) -> None:
        self.paths.append(path)

    def __getattr__(self, name):
        return getattr(self._backend, name)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """:class:`mmengine.hooks.CheckpointHook` whose saves survive a kill.

    Same arguments and file names as ``CheckpointHook``. For a local
    ``out_dir`` (the default: the work dir) and no ``backend_args`` of the
    user's, every checkpoint is written atomically (:func:`atomic_write`);
    the checkpoints that ``max_keep_ckpts`` and ``save_best`` retire are
    deleted only after the new file is complete. It also saves the random
    generators' state, and keeps validation from shifting them, so that a
    resumed run draws what an uninterrupted one draws (with the loops of
    :mod:`iformer_mm.engine.loops`).

    A published file (``published_keys``) is written as mmengine writes it:
    it is a new file, so a kill while it is written loses nothing that
    existed.
    """

    _rng_before_val: Optional[dict] = None

    def before_train(self, runner) -> None:
        out_dir = self.out_dir if self.out_dir is not None else \
            runner.work_dir
        self.atomic = (_is_local(out_dir) and self.backend_args is None
                       and self.file_client_args is None)
        if self.atomic:
            self.backend_args = dict(backend=ATOMIC_BACKEND)
        super().before_train(runner)

    # -- random generators -------------------------------------------------
    def before_val(self, runner) -> None:
        self._rng_before_val = get_rng_state()

    def after_val(self, runner) -> None:
        # runs after every other hook's after_val (priority VERY_LOW)
        if self._rng_before_val is not None:
            set_rng_state(self._rng_before_val)
            self._rng_before_val = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.setdefault('meta', {})
        # during validation (save_best): the state training continues from
        meta['rng_state'] = self._rng_before_val or get_rng_state()
        loop = getattr(runner, '_train_loop', None)
        sampler = getattr(getattr(loop, 'dataloader', None), 'sampler', None)
        if isinstance(getattr(sampler, 'seed', None), int):
            meta['train_sampler_seed'] = sampler.seed

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        loop = getattr(runner, '_train_loop', None)
        if getattr(runner, '_resume', False) and \
                hasattr(loop, 'restore_resume_state'):
            loop.restore_resume_state(checkpoint.get('meta', {}))

    # -- saving: mmengine's, with the deletions moved after the save --------
    def _save_then_remove(self, save, *args) -> None:
        backend = self.file_backend
        self.file_backend = deferred = _DeferredRemovals(backend)
        try:
            save(*args)
        finally:
            self.file_backend = backend
        # The new checkpoint is complete: only now retire the old ones.
        keep = {str(p) for p in (self.last_ckpt, getattr(
            self, 'best_ckpt_path', None), *(getattr(
                self, 'best_ckpt_path_dict', None) or {}).values()) if p}
        for path in deferred.paths:
            if str(path) in keep:
                continue
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):
                # checkpoints saved by deepspeed are directories
                self.file_backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step, meta):
        self._save_then_remove(super()._save_checkpoint_with_step, runner,
                               step, meta)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        self._save_then_remove(super()._save_best_checkpoint, runner,
                               metrics)
