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
  only after the new checkpoint is complete updates ``last_checkpoint``
  (atomically as well) and removes the checkpoints that ``max_keep_ckpts``
  or ``save_best`` retire. It also records the random number generators'
  state in the checkpoint, so that a resumed run draws the same random
  numbers as an uninterrupted one (see :mod:`iformer_mm.engine.loops`).
"""
from __future__ import annotations

import hashlib
import os
import os.path as osp
import pickle
import random
import tempfile
from typing import Optional

import numpy as np
import torch
from mmengine.dist import is_main_process, master_only
from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
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


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """:class:`mmengine.hooks.CheckpointHook` whose saves survive a kill.

    Same arguments and file names as ``CheckpointHook``. For a local
    ``out_dir`` (the default: the work dir) and no ``backend_args`` of the
    user's, every checkpoint is written atomically
    (:func:`atomic_write`); ``last_checkpoint`` is updated, and the
    checkpoints retired by ``max_keep_ckpts`` / ``save_best`` are deleted,
    only after the new file is complete.
    """

    def before_train(self, runner) -> None:
        out_dir = self.out_dir if self.out_dir is not None else \
            runner.work_dir
        self.atomic = (_is_local(out_dir) and self.backend_args is None
                       and self.file_client_args is None)
        if self.atomic:
            self.backend_args = dict(backend=ATOMIC_BACKEND)
        super().before_train(runner)

    # -- what goes into a checkpoint ---------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        loop = getattr(runner, '_train_loop', None)
        snapshot = getattr(loop, 'rng_snapshot', None)
        meta = checkpoint.setdefault('meta', {})
        meta['rng_state'] = snapshot() if callable(snapshot) else \
            get_rng_state()
        sampler = getattr(getattr(loop, 'dataloader', None), 'sampler', None)
        if isinstance(getattr(sampler, 'seed', None), int):
            meta['train_sampler_seed'] = sampler.seed

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        loop = getattr(runner, '_train_loop', None)
        if not getattr(runner, '_resume', False) or \
                not hasattr(loop, 'restore_resume_state'):
            return
        loop.restore_resume_state(checkpoint.get('meta', {}))

    # -- saving ------------------------------------------------------------
    def _remove(self, path: str) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):
            # checkpoints saved by deepspeed are directories
            self.file_backend.rmtree(path)

    def _write_last_checkpoint(self, runner) -> None:
        save_file = osp.join(runner.work_dir, 'last_checkpoint')
        atomic_write(str(self.last_ckpt).encode(), save_file)

    def _save_checkpoint_with_step(self, runner, step, meta):
        retired = None
        if self.max_keep_ckpts > 0 and not (
                self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                retired = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir,
                                                     ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)

        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)

        if not is_main_process():
            return
        # The new checkpoint is complete: now point to it, then retire.
        self._write_last_checkpoint(runner)
        if retired is not None and retired != step:
            self._remove(self.file_backend.join_path(
                self.out_dir, self.filename_tmpl.format(retired)))

    @master_only
    def _publish_model(self, runner, ckpt_path: str) -> None:
        """As mmengine's (``published_keys``), written atomically."""
        if not getattr(self, 'atomic', False):
            return super()._publish_model(runner, ckpt_path)
        from mmengine.runner.checkpoint import (_load_checkpoint,
                                                save_checkpoint)
        checkpoint = _load_checkpoint(ckpt_path)
        removed = [k for k in list(checkpoint) if k not in
                   self.published_keys]
        for key in removed:
            checkpoint.pop(key)
        if removed:
            print_log(f'Key {removed} will be removed because they are not '
                      f'found in published_keys.', logger='current')
        sha = hashlib.sha256(pickle.dumps(checkpoint)).hexdigest()
        final_path = osp.splitext(ckpt_path)[0] + f'-{sha[:8]}.pth'
        save_checkpoint(checkpoint, final_path,
                        backend_args=self.backend_args)
        print_log(f'The checkpoint ({ckpt_path}) is published to '
                  f'{final_path}.', logger='current')

    def _save_best_checkpoint(self, runner, metrics) -> None:
        if not self.save_best:
            return

        if self.by_epoch:
            ckpt_filename = self.filename_tmpl.format(runner.epoch)
            cur_type, cur_time = 'epoch', runner.epoch
        else:
            ckpt_filename = self.filename_tmpl.format(runner.iter)
            cur_type, cur_time = 'iter', runner.iter
        meta = dict(epoch=runner.epoch, iter=runner.iter)

        if 'auto' in self.key_indicators:
            self._init_rule(self.rules, [list(metrics.keys())[0]])

        best_ckpt_updated = False
        single = len(self.key_indicators) == 1
        for key_indicator, rule in zip(self.key_indicators, self.rules):
            key_score = metrics[key_indicator]
            if single:
                best_score_key = 'best_score'
                runtime_best_ckpt_key = 'best_ckpt'
                previous = self.best_ckpt_path
            else:
                best_score_key = f'best_score_{key_indicator}'
                runtime_best_ckpt_key = f'best_ckpt_{key_indicator}'
                previous = self.best_ckpt_path_dict[key_indicator]

            if best_score_key not in runner.message_hub.runtime_info:
                best_score = self.init_value_map[rule]
            else:
                best_score = runner.message_hub.get_info(best_score_key)
            if key_score is None or not self.is_better_than[key_indicator](
                    key_score, best_score):
                continue

            best_ckpt_updated = True
            best_score = key_score
            runner.message_hub.update_info(best_score_key, best_score)

            best_ckpt_name = f'best_{key_indicator}_{ckpt_filename}'
            best_ckpt_name = best_ckpt_name.replace('/', '_')
            new_path = self.file_backend.join_path(self.out_dir,
                                                   best_ckpt_name)
            if single:
                self.best_ckpt_path = new_path
            else:
                self.best_ckpt_path_dict[key_indicator] = new_path
            runner.message_hub.update_info(runtime_best_ckpt_key, new_path)
            runner.save_checkpoint(
                self.out_dir,
                filename=best_ckpt_name,
                file_client_args=self.file_client_args,
                save_optimizer=False,
                save_param_scheduler=False,
                meta=meta,
                by_epoch=False,
                backend_args=self.backend_args)
            runner.logger.info(
                f'The best checkpoint with {best_score:0.4f} {key_indicator} '
                f'at {cur_time} {cur_type} is saved to {best_ckpt_name}.')
            # The new best is complete: only now retire the previous one.
            if previous and previous != new_path and is_main_process():
                if self.file_backend.exists(previous):
                    self._remove(previous)
                    runner.logger.info(
                        f'The previous best checkpoint {previous} is removed')

        # As mmengine: save the last checkpoint again, so that it records
        # the new best (and the resumed run can retire it).
        if best_ckpt_updated and self.last_ckpt is not None:
            self._save_checkpoint_with_step(runner, cur_time, meta)
