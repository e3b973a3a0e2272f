"""Training loops that resume exactly where training stopped.

mmengine 0.10.7's ``EpochBasedTrainLoop`` restarts the interrupted epoch
from its first batch when it resumes from a checkpoint saved mid-epoch
(``CheckpointHook(by_epoch=False)``): the batches already trained are
trained again, the epoch is longer than ``len(dataloader)`` and the ETA goes
negative. Its ``IterBasedTrainLoop`` skips them by loading and discarding
every one (reading and augmenting images for nothing). Neither restores the
random number generators, so augmentations and dropout differ from an
uninterrupted run.

:class:`ResumableEpochBasedTrainLoop` and
:class:`ResumableIterBasedTrainLoop` (registered in mmengine's ``LOOPS``;
:func:`~iformer_mm.engine.runner.make_resumable` puts them in place of
mmengine's) differ only on resume:

* the batches already trained are skipped in the *batch sampler*, i.e. only
  their indices are drawn, no image is read;
* the random generators are restored (from the state that
  :class:`~iformer_mm.engine.checkpointing.SafeCheckpointHook` saved) at the
  point where the interrupted run stood when it saved, and validation runs
  with the generators' state saved and restored around it, so that it does
  not shift the random numbers training draws.

With ``num_workers=0`` and deterministic settings a run interrupted at any
checkpoint and resumed ends with bitwise the same weights as an
uninterrupted one (``tests/test_reliability.py``). With worker processes
the data order is still exact; the workers' own augmentation random
numbers restart with the resumed epoch.
"""
from __future__ import annotations

import itertools
import logging
from typing import Iterator, Optional

from mmengine.logging import print_log
from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from torch.utils.data import DataLoader

from .checkpointing import get_rng_state, set_rng_state


class _OneShotBatches:
    """A batch sampler that yields the rest of an iterator over batches."""

    def __init__(self, batches: Iterator, length: int):
        self._batches = batches
        self._length = max(0, length)

    def __iter__(self):
        return self._batches

    def __len__(self):
        return self._length


def _loader_over(loader: DataLoader, batches: Iterator,
                 length: int) -> DataLoader:
    """A one-pass DataLoader like ``loader`` that loads ``batches``."""
    kwargs = dict(
        num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator, persistent_workers=False)
    if loader.num_workers > 0:
        kwargs['prefetch_factor'] = loader.prefetch_factor
    if getattr(loader, 'pin_memory_device', ''):
        kwargs['pin_memory_device'] = loader.pin_memory_device
    return DataLoader(loader.dataset,
                      batch_sampler=_OneShotBatches(batches, length),
                      **kwargs)


def _set_sampler_epoch(loader: DataLoader, epoch: int) -> None:
    # As mmengine's _InfiniteDataloaderIterator does at each restart.
    sampler = getattr(loader, 'sampler', None)
    if hasattr(sampler, 'set_epoch'):
        sampler.set_epoch(epoch)
    elif hasattr(getattr(loader, 'batch_sampler', None), 'sampler') and \
            hasattr(loader.batch_sampler.sampler, 'set_epoch'):
        loader.batch_sampler.sampler.set_epoch(epoch)


class _ResumableMixin:
    """Resume state and validation with the random generators kept."""

    _pending_rng: Optional[dict] = None
    _rng_before_val: Optional[dict] = None

    def restore_resume_state(self, meta: dict) -> None:
        """Called by ``SafeCheckpointHook`` when resuming from ``meta``."""
        self._pending_rng = meta.get('rng_state')
        seed = meta.get('train_sampler_seed')
        sampler = getattr(self.dataloader, 'sampler', None)
        if isinstance(seed, int) and isinstance(
                getattr(sampler, 'seed', None), int) and sampler.seed != seed:
            # mmengine draws a new sampler seed when randomness.seed is None
            sampler.seed = seed
            if hasattr(sampler, '_indices_of_rank'):  # InfiniteSampler
                sampler.indices = sampler._indices_of_rank()

    def rng_snapshot(self) -> dict:
        """The generators' state training continues from (during
        validation: the state from before it)."""
        if self._rng_before_val is not None:
            return self._rng_before_val
        return get_rng_state()

    def _take_pending_rng(self) -> Optional[dict]:
        rng, self._pending_rng = self._pending_rng, None
        return rng

    def _validate(self) -> None:
        self._rng_before_val = get_rng_state()
        try:
            self.runner.val_loop.run()
        finally:
            set_rng_state(self._rng_before_val)
            self._rng_before_val = None


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(_ResumableMixin, EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that resumes mid-epoch exactly; same
    arguments."""

    def run(self):
        self.runner.call_hook('before_train')
        while self._epoch < self._max_epochs and not self.stop_training:
            self.run_epoch()
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None
                    and self._epoch >= self.val_begin
                    and (self._epoch % self.val_interval == 0
                         or self._epoch == self._max_epochs)):
                self._validate()
        self.runner.call_hook('after_train')
        return self.runner.model

    def _batches_done(self) -> int:
        """Batches of the current epoch trained before the resume."""
        per_epoch = len(self.dataloader)
        done = self._iter - self._epoch * per_epoch
        if 0 <= done <= per_epoch:
            return done
        print_log(
            f'iteration {self._iter} is not in epoch {self._epoch + 1} of '
            f'{per_epoch} batches (was the batch size or the dataset '
            f'changed?); the epoch starts from its first batch',
            logger='current', level=logging.WARNING)
        return 0

    def run_epoch(self) -> None:
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        rng = self._take_pending_rng()
        done = self._batches_done()
        if done:
            per_epoch = len(self.dataloader)
            print_log(
                f'Resuming epoch {self._epoch + 1} after its batch {done}: '
                f'skipping the {done} batches already trained, '
                f'{per_epoch - done} to go', logger='current')
            batches = itertools.islice(iter(self.dataloader.batch_sampler),
                                       done, None)
            loader = _loader_over(self.dataloader, batches, per_epoch - done)
            data = iter(loader)
            # The interrupted run saved after batch `done`, its iterator
            # already open: restore what it drew from there on.
            if rng is not None:
                set_rng_state(rng)
        else:
            # Saved at the end of an epoch: before the next one opened
            # its iterator.
            if rng is not None:
                set_rng_state(rng)
            data = iter(self.dataloader)
        for idx, data_batch in enumerate(data, start=done):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1


class _ResumedInfiniteIterator:
    """mmengine's ``_InfiniteDataloaderIterator``, started ``skip`` batches
    in, with the sampler epochs (restarts) it would have had."""

    def __init__(self, dataloader: DataLoader, skip: int):
        self._dataloader = dataloader
        self._epoch = 0
        batches = iter(dataloader.batch_sampler)
        left = skip
        while left > 0:
            chunk = sum(1 for _ in itertools.islice(batches, left))
            if chunk == 0:
                break  # a fresh pass with no batch: an empty sampler
            left -= chunk
            if left > 0:  # this pass is exhausted: the next one
                self._epoch += 1
                _set_sampler_epoch(dataloader, self._epoch)
                batches = iter(dataloader.batch_sampler)
        try:
            length = len(dataloader.batch_sampler) - skip
        except TypeError:
            length = 0
        self._iterator = iter(_loader_over(dataloader, batches, length))

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._iterator)
        except StopIteration:
            self._epoch += 1
            _set_sampler_epoch(self._dataloader, self._epoch)
            self._iterator = iter(self._dataloader)
            return next(self._iterator)


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(_ResumableMixin, IterBasedTrainLoop):
    """``IterBasedTrainLoop`` that resumes without loading the skipped
    batches and with the random generators restored; same arguments."""

    def run(self):
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        rng = self._take_pending_rng()
        if self._iter > 0:
            print_log(
                f'Resuming after iteration {self._iter}: skipping the '
                f'{self._iter} batches already trained (their indices only)',
                logger='current')
            self.dataloader_iterator = _ResumedInfiniteIterator(
                self.dataloader, self._iter)
        if rng is not None:
            set_rng_state(rng)
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None
                    and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0
                         or self._iter == self._max_iters)):
                self._validate()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model


#: mmengine loop type -> ours
RESUMABLE_LOOPS = {
    'EpochBasedTrainLoop': 'ResumableEpochBasedTrainLoop',
    'IterBasedTrainLoop': 'ResumableIterBasedTrainLoop',
}
