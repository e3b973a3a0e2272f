"""Faults and bad input: nothing lost, nothing silently wrong (issue 11).

* resume: a run interrupted at any point (mid-epoch, at an epoch boundary,
  during validation) and resumed ends with bitwise the weights of an
  uninterrupted run, for epoch- and iteration-based loops;
* atomic checkpoints: a write that fails or is killed part-way leaves the
  previous checkpoint, ``last_checkpoint`` and ``save_best`` intact;
  ``kill -9`` during the write, at several byte offsets, then ``--resume``;
* ``--resume`` falls back over truncated checkpoints, rejects a missing or
  truncated ``--resume PATH``, says when there is nothing to resume, and
  ``--resume PATH`` restores optimizer, schedulers and iteration;
* the work-dir lock; the toy data generator never deletes a user's files.

The trainings are a tiny MLP (``tests/_tiny.py``): seconds each.
"""
import json
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

import iformer_mm  # noqa: F401  (registers the hook and the loops)
from iformer_mm.compat import safe_load
from iformer_mm.engine import checkpointing
from iformer_mm.engine.resume import (checkpoint_problem,
                                      find_resume_checkpoint, resolve_resume)
from iformer_mm.errors import CheckpointError, UserError

from ._tiny import tiny_cfg
from ._tools import ROOT


class Interrupted(Exception):
    """Stands for a kill: the run stops, only what is on disk remains."""


class InterruptHook(Hook):
    """Raise at one point of training: before iteration ``at_iter``, before
    epoch ``at_epoch``, or inside the validation after ``val_after``
    (epochs or iterations, as the loop counts)."""
    priority = 'HIGHEST'

    def __init__(self, at_iter=None, at_epoch=None, val_after=None):
        self.at_iter, self.at_epoch, self.val_after = (at_iter, at_epoch,
                                                       val_after)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.at_iter:
            raise Interrupted(f'iter {runner.iter}')

    def before_train_epoch(self, runner):
        if runner.epoch == self.at_epoch and runner.iter > 0:
            raise Interrupted(f'epoch {runner.epoch}')

    def before_val_iter(self, runner, batch_idx, data_batch=None):
        done = runner.epoch if runner.train_loop.__class__.__name__.startswith(
            'ResumableEpoch') else runner.iter
        if done == self.val_after and batch_idx == 1:
            raise Interrupted(f'validation after {done}')


class CountIters(Hook):
    """Count the training iterations this run executes."""

    def __init__(self):
        self.iters = []

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.iters.append(runner.iter)


def build(cfg: dict, hooks=(), resume_from=None) -> Runner:
    cfg = Config(dict(cfg))
    cfg.experiment_name = f'reliability_{uuid.uuid4().hex[:8]}'
    if resume_from is not None:
        cfg.resume, cfg.load_from = True, resume_from
    runner = Runner.from_cfg(cfg)
    for hook in hooks:
        runner.register_hook(hook)
    return runner


def final_state(runner):
    return ({k: v.clone() for k, v in runner.model.state_dict().items()},
            runner.optim_wrapper.state_dict())


def assert_bitwise_equal(a, b):
    weights_a, optim_a = a
    weights_b, optim_b = b
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    assert optim_a['param_groups'] == optim_b['param_groups']
    for key, state in optim_a['state'].items():
        for name, value in state.items():
            assert torch.equal(value, optim_b['state'][key][name]), (key, name)


def run_through(tmp_path, name, by_epoch, hooks=(), **kw):
    runner = build(tiny_cfg(str(tmp_path / name), by_epoch, **kw), hooks)
    runner.train()
    return runner


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    """Reference runs, epoch- and iteration-based, never interrupted."""
    tmp = tmp_path_factory.mktemp('ref')
    out = {}
    for by_epoch in (True, False):
        counter = CountIters()
        runner = run_through(tmp, f'ref_{by_epoch}', by_epoch, [counter])
        out[by_epoch] = (final_state(runner), counter.iters)
    return out


# point of interruption -> (checkpoint it resumes from, iterations left)
EPOCH_CASES = {
    # 5 batches an epoch, 3 epochs; iteration checkpoints every 3 iters
    'mid_epoch': (dict(at_iter=7), 'iter_6.pth', 9),
    'mid_epoch_late': (dict(at_iter=14), 'iter_12.pth', 3),
    'epoch_boundary': (dict(at_epoch=2), 'epoch_2.pth', 5),
    'during_validation': (dict(val_after=1), 'epoch_1.pth', 10),
}
ITER_CASES = {
    # 12 iterations over passes of 5 batches; checkpoints every 3 iters,
    # validation every 4
    'mid_pass': (dict(at_iter=7), 'iter_6.pth', 6),
    'end_of_pass': (dict(at_iter=10), 'iter_9.pth', 3),
    'during_validation': (dict(val_after=8), 'iter_6.pth', 6),
}


def _interrupt_and_resume(tmp_path, uninterrupted, by_epoch, point,
                          expected_ckpt, iters_left, **kw):
    work = tmp_path / 'work'
    cfg = tiny_cfg(str(work), by_epoch, **kw)
    with pytest.raises(Interrupted):
        build(cfg, [InterruptHook(**point)]).train()
    resume_from = resolve_resume(str(work), 'auto')
    assert osp.basename(resume_from) == expected_ckpt
    counter = CountIters()
    runner = build(cfg, [counter], resume_from=resume_from)
    runner.train()
    reference, reference_iters = uninterrupted[by_epoch]
    # exactly the iterations that were left, no batch trained twice
    assert counter.iters == reference_iters[-iters_left:]
    assert_bitwise_equal(final_state(runner), reference)


@pytest.mark.parametrize('case', sorted(EPOCH_CASES))
def test_epoch_based_resume_is_exact(case, tmp_path, uninterrupted):
    _interrupt_and_resume(tmp_path, uninterrupted, True, *EPOCH_CASES[case])


@pytest.mark.parametrize('case', sorted(ITER_CASES))
def test_iter_based_resume_is_exact(case, tmp_path, uninterrupted):
    _interrupt_and_resume(tmp_path, uninterrupted, False, *ITER_CASES[case])
