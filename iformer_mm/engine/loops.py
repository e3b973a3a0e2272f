"""Training loops that resume exactly where training stopped.

mmengine 0.10.7's ``EpochBasedTrainLoop`` restarts the interrupted epoch
from its first batch when it resumes from a checkpoint saved mid-epoch
(``CheckpointHook(by_epoch=False)``): the batches already trained are
trained again. Its ``IterBasedTrainLoop`` skips them by loading and
discarding every one. Neither restores the random number generators, so
augmentations and dropout differ from an uninterrupted run.

:class:`ResumableEpochBasedTrainLoop` and :class:`ResumableIterBasedTrainLoop`
(named in the ``train_cfg`` of ``configs/_base_/schedules``; the runner also
upgrades mmengine's loops in other configs) differ only on resume:

* the batches already trained are skipped in the *batch sampler*: only
  their indices are drawn, no image is read;
* the random generators are restored, at the point where the interrupted
  run stood when it saved, from the state that
  :class:`~iformer_mm.engine.checkpointing.SafeCheckpointHook` saved (the hook also
  keeps validation from shifting them).

With ``num_workers=0`` and deterministic settings a run interrupted at any
checkpoint and resumed ends with bitwise the same weights as an
uninterrupted one. With worker processes the data order is still exact; the
workers' own augmentation random numbers restart with the resumed epoch.
"""
from __future__ import annotations

import itertools
import logging
from typing import Iterator, Optional

from mmengine.logging import print_log
from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from torch.utils.data import DataLoader

from .checkpointing import set_rng_state


def _loader_over(loader: DataLoader, batches: Iterator) -> DataLoader:
    """A one-pass DataLoader like ``loader`` that loads ``batches`` (an
    iterator over lists of indices: it is only iterated, never sized)."""
    return DataLoader(
        loader.dataset, batch_sampler=batches,
        num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator, prefetch_factor=loader.prefetch_factor,
        persistent_workers=False, pin_memory_device=loader.pin_memory_device)


def _set_sampler_epoch(loader: DataLoader, epoch: int) -> None:
    # As mmengine's _InfiniteDataloaderIterator does at each restart.
    sampler = getattr(loader, 'sampler', None)
    if hasattr(sampler, 'set_epoch'):
        sampler.set_epoch(epoch)
    elif hasattr(getattr(loader, 'batch_sampler', None), 'sampler') and \
            hasattr(loader.batch_sampler.sampler, 'set_epoch'):
        loader.batch_sampler.sampler.set_epoch(epoch)


class _ResumableMixin:
    """What both loops keep between the checkpoint's load and the first
    batch of the resumed run."""

    _pending_rng: Optional[dict] = None

    def restore_resume_state(self, meta: dict) -> None:
        """Called by ``SafeCheckpointHook`` when resuming from ``meta``
        (before mmengine sets the loop's epoch and iteration)."""
        self._pending_rng = meta.get('rng_state')
        seed = meta.get('train_sampler_seed')
        sampler = getattr(self.dataloader, 'sampler', None)
        if isinstance(seed, int) and isinstance(
                getattr(sampler, 'seed', None), int) and sampler.seed != seed:
            # mmengine draws a new sampler seed when randomness.seed is None
            sampler.seed = seed
            if hasattr(sampler, '_indices_of_rank'):  # InfiniteSampler
                sampler.indices = sampler._indices_of_rank()

    def _restore_pending_rng(self) -> None:
        rng, self._pending_rng = self._pending_rng, None
        if rng is not None:
            set_rng_state(rng)


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(_ResumableMixin, EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that resumes mid-epoch exactly; same
    arguments."""

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

    def _epoch_batches(self):
        """``(index, batch)`` of this epoch, after the batches a resumed
        run already trained."""
        done = self._batches_done()
        if not done:
            # Saved at the end of an epoch: before the next one opened its
            # iterator.
            self._restore_pending_rng()
            return enumerate(self.dataloader)
        per_epoch = len(self.dataloader)
        print_log(
            f'Resuming epoch {self._epoch + 1} after its batch {done}: '
            f'skipping the {done} batches already trained, '
            f'{per_epoch - done} to go', logger='current')
        batches = itertools.islice(iter(self.dataloader.batch_sampler), done,
                                   None)
        data = iter(_loader_over(self.dataloader, batches))
        # The interrupted run saved after batch `done`, its iterator
        # already open: restore what it drew from there on.
        self._restore_pending_rng()
        return enumerate(data, start=done)

    def run_epoch(self) -> None:
        # mmengine 0.10.7's EpochBasedTrainLoop.run_epoch, iterating
        # _epoch_batches() instead of enumerate(self.dataloader);
        # tests/test_engine.py fails when the installed body changes.
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        for idx, data_batch in self._epoch_batches():
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
        self._iterator = iter(_loader_over(dataloader, batches))

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


class _SkipThenResume:
    """The iterator a resumed ``IterBasedTrainLoop`` advances ``skip`` times
    before it trains (mmengine's ``run``): those advances load nothing; the
    first real batch opens a loader over the batches after them and
    restores the random generators there, as the interrupted run had
    them."""

    def __init__(self, loop: 'ResumableIterBasedTrainLoop', skip: int):
        self._loop = loop
        self._skip = skip
        self._skipped = 0
        self._iterator = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._iterator is None:
            if self._skipped < self._skip:
                self._skipped += 1
                return None
            loop = self._loop
            if self._skipped:
                print_log(
                    f'Resuming after iteration {self._skipped}: the batches '
                    f'already trained were skipped (their indices only)',
                    logger='current')
                self._iterator = _ResumedInfiniteIterator(loop.dataloader,
                                                          self._skipped)
            else:
                self._iterator = loop._fresh_iterator
            loop._restore_pending_rng()
        return next(self._iterator)


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(_ResumableMixin, IterBasedTrainLoop):
    """``IterBasedTrainLoop`` that resumes without loading the skipped
    batches and with the random generators restored; same arguments."""

    def restore_resume_state(self, meta: dict) -> None:
        super().restore_resume_state(meta)
        self._fresh_iterator = self.dataloader_iterator
        self.dataloader_iterator = _SkipThenResume(
            self, int(meta.get('iter', 0)))


#: mmengine loop type -> ours
RESUMABLE_LOOPS = {
    'EpochBasedTrainLoop': 'ResumableEpochBasedTrainLoop',
    'IterBasedTrainLoop': 'ResumableIterBasedTrainLoop',
}
