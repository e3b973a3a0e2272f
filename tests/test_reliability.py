"""Faults and bad input: nothing lost, nothing silently wrong.

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
import fcntl
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
from mmengine.registry import RUNNERS

import iformer_mm  # noqa: F401  (registers the runner, hooks and loops)
from iformer_mm.compat import safe_load
from iformer_mm.engine import checkpointing
from iformer_mm.engine.resume import (check_resume_checkpoint,
                                      checkpoint_problem,
                                      find_resume_checkpoint)
from iformer_mm.errors import CheckpointError, UserError

from ._tiny import tiny_cfg
from ._tools import ROOT, held_elsewhere


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


def build(cfg: dict, hooks=(), resume_from=None, resume=False):
    """The config's runner (``runner_type='IFormerRunner'``), as every tool
    builds it; ``resume``: continue from the work dir's newest intact
    checkpoint, ``resume_from``: from that one."""
    cfg = Config(dict(cfg))
    cfg.experiment_name = f'reliability_{uuid.uuid4().hex[:8]}'
    if resume or resume_from is not None:
        cfg.resume, cfg.load_from = True, resume_from
    runner = RUNNERS.build(cfg)
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
    """Reference runs, never interrupted: (by_epoch, infinite sampler) ->
    (final weights and optimizer state, iterations run)."""
    tmp = tmp_path_factory.mktemp('ref')
    out = {}

    def get(by_epoch, infinite=False):
        if (by_epoch, infinite) not in out:
            counter = CountIters()
            runner = run_through(tmp, f'ref_{by_epoch}_{infinite}', by_epoch,
                                 [counter], infinite=infinite)
            out[by_epoch, infinite] = (final_state(runner), counter.iters)
        return out[by_epoch, infinite]
    return get


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
    # mmseg's configs: an InfiniteSampler, one endless pass
    'infinite_sampler': (dict(at_iter=11), 'iter_9.pth', 3,
                         dict(infinite=True)),
}


def _interrupt_and_resume(tmp_path, uninterrupted, by_epoch, point,
                          expected_ckpt, iters_left, kw=None):
    kw = kw or {}
    work = tmp_path / 'work'
    cfg = tiny_cfg(str(work), by_epoch, **kw)
    with pytest.raises(Interrupted):
        build(cfg, [InterruptHook(**point)]).train()
    newest, skipped = find_resume_checkpoint(str(work))
    assert osp.basename(newest) == expected_ckpt and not skipped
    counter = CountIters()
    runner = build(cfg, [counter], resume=True)
    runner.train()
    reference, reference_iters = uninterrupted(by_epoch, **kw)
    # exactly the iterations that were left, no batch trained twice
    assert counter.iters == reference_iters[-iters_left:]
    assert_bitwise_equal(final_state(runner), reference)


@pytest.mark.parametrize('case', [
    c if c in ('mid_epoch', 'during_validation') else pytest.param(
        c, marks=pytest.mark.slow) for c in sorted(EPOCH_CASES)])
def test_epoch_based_resume_is_exact(case, tmp_path, uninterrupted):
    _interrupt_and_resume(tmp_path, uninterrupted, True, *EPOCH_CASES[case])


@pytest.mark.parametrize('case', [
    c if c in ('mid_pass', 'infinite_sampler') else pytest.param(
        c, marks=pytest.mark.slow) for c in sorted(ITER_CASES)])
def test_iter_based_resume_is_exact(case, tmp_path, uninterrupted):
    _interrupt_and_resume(tmp_path, uninterrupted, False, *ITER_CASES[case])


def test_resume_after_the_dataset_changed_size_restarts_the_epoch(
        tmp_path, capfd):
    """A checkpoint whose iteration does not fall in its epoch any more
    (the dataset or batch size changed) resumes that epoch from its first
    batch, and the warning names the iteration and the epoch."""
    cfg = tiny_cfg(str(tmp_path / 'work'), True)
    with pytest.raises(Interrupted):  # iter_12.pth: epoch 3, 2 batches in
        build(cfg, [InterruptHook(at_iter=13)]).train()
    cfg['train_dataloader']['dataset']['num'] = 14  # 7 batches an epoch
    counter = CountIters()
    build(cfg, [counter], resume=True).train()
    assert len(counter.iters) == 7  # all of epoch 3, nothing skipped
    out, err = capfd.readouterr()
    assert 'iteration 12 is not in epoch 3 of 7 batches' in out + err


@pytest.mark.parametrize('drawn', [(9, 5), (5, 9)])
def test_resume_of_an_unseeded_run_is_exact(drawn, tmp_path, monkeypatch,
                                             capfd):
    """``randomness.seed=None``: mmengine draws a seed for each run, so the
    resumed run draws another one. The resumed run goes on with the
    sampler order of the seed the interrupted run drew, and ends where a
    run seeded with that seed ends; the log says where it resumed."""
    import mmengine.runner.utils as runner_utils
    seeds = iter(drawn)
    monkeypatch.setattr(runner_utils, 'sync_random_seed',
                        lambda *a, **k: next(seeds))
    cfg = tiny_cfg(str(tmp_path / 'work'), True)
    cfg['randomness'] = dict(seed=None, deterministic=True)
    with pytest.raises(Interrupted):  # iter_6.pth: epoch 2, 1 batch in
        build(cfg, [InterruptHook(at_iter=7)]).train()
    resumed = build(cfg, resume=True)
    resumed.train()
    seeded = dict(cfg, randomness=dict(seed=drawn[0], deterministic=True))
    reference = build(dict(seeded, work_dir=str(tmp_path / 'ref')))
    reference.train()
    assert_bitwise_equal(final_state(resumed), final_state(reference))
    out, err = capfd.readouterr()
    assert 'Resuming epoch 2 after its batch 1' in out + err


# --------------------------------------------------------------------------
# Atomic checkpoint writes
# --------------------------------------------------------------------------
class WriteFailure(Exception):
    """Stands for a crash or a full disk part-way through a write."""


@pytest.fixture
def failing_writes(monkeypatch):
    """``fail(nth, nbytes)``: the nth checkpoint write from now on (1-based,
    counting only ``.pth`` files) writes ``nbytes`` bytes, then fails."""
    real = checkpointing._write_data
    plan = {}
    count = [0]

    def write(f, data):
        if osp.basename(f.name).startswith('.') and '.pth.' in f.name:
            count[0] += 1
            if count[0] == plan.get('nth'):
                f.write(data[:plan['nbytes']])
                f.flush()
                raise WriteFailure(f'write {count[0]} of {f.name}')
        real(f, data)

    monkeypatch.setattr(checkpointing, '_write_data', write)

    def fail(nth, nbytes):
        plan.update(nth=nth, nbytes=nbytes)
        count[0] = 0
    return fail


def test_atomic_write_keeps_old_content_on_failure(tmp_path, failing_writes):
    target = tmp_path / 'epoch_1.pth'
    checkpointing.atomic_write(b'old complete checkpoint', str(target))
    failing_writes(1, 5)
    with pytest.raises(WriteFailure):
        checkpointing.atomic_write(b'new checkpoint, never finished',
                                   str(target))
    assert target.read_bytes() == b'old complete checkpoint'
    assert os.listdir(tmp_path) == ['epoch_1.pth']  # no temporary left
    checkpointing.atomic_write(b'new', str(target))
    assert target.read_bytes() == b'new'


@pytest.mark.parametrize('nbytes', [0, 300, 10 ** 9])
def test_failed_save_keeps_previous_checkpoint(tmp_path, failing_writes,
                                               nbytes):
    """max_keep_ckpts=1: mmengine deletes epoch_1.pth before epoch_2.pth
    is written. Here epoch_1.pth and last_checkpoint survive a save that
    breaks off after 0, 300 or all of its bytes, and resuming works."""
    work = tmp_path / 'work'
    cfg = tiny_cfg(str(work), True, iter_ckpt_interval=None,
                   max_keep_ckpts=1)
    failing_writes(2, nbytes)
    with pytest.raises(WriteFailure):
        build(cfg).train()
    ckpts = sorted(n for n in os.listdir(work) if n.endswith('.pth'))
    assert ckpts == ['epoch_1.pth']
    assert checkpoint_problem(str(work / 'epoch_1.pth')) is None
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_1.pth')
    assert safe_load(work / 'epoch_1.pth')['meta']['epoch'] == 1
    # the retired checkpoint goes only once the next one is complete
    failing_writes(0, 0)
    runner = build(cfg, resume=True)
    runner.train()
    assert sorted(n for n in os.listdir(work) if n.endswith('.pth')) == \
        ['epoch_3.pth']
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_3.pth')


def test_failed_best_save_keeps_previous_best(tmp_path, failing_writes):
    """save_best: mmengine removes the previous best before writing the
    new one. Here the previous best survives a failed write."""
    work = tmp_path / 'work'
    cfg = tiny_cfg(str(work), True, iter_ckpt_interval=None,
                   save_best='evaluations')
    cfg['default_hooks']['checkpoint']['rule'] = 'greater'
    # writes: epoch_1, best(1), epoch_1 again (records the best), epoch_2,
    # then the second best: fail it half-way
    failing_writes(5, 200)
    with pytest.raises(WriteFailure):
        build(cfg).train()
    best = [n for n in os.listdir(work) if n.startswith('best_')]
    assert best == ['best_evaluations_epoch_1.pth']
    assert checkpoint_problem(str(work / best[0])) is None
    assert checkpoint_problem(str(work / 'epoch_2.pth')) is None


# --------------------------------------------------------------------------
# Which checkpoint --resume takes
# --------------------------------------------------------------------------
@pytest.fixture(scope='module')
def three_checkpoints(tmp_path_factory):
    work = tmp_path_factory.mktemp('ckpts') / 'work'
    build(tiny_cfg(str(work), True, iter_ckpt_interval=None)).train()
    return work


def _copy_work(src, dst):
    shutil.copytree(src, dst)
    last = dst / 'last_checkpoint'
    last.write_text(last.read_text().replace(str(src), str(dst)))
    for i, name in enumerate(('epoch_1.pth', 'epoch_2.pth', 'epoch_3.pth')):
        os.utime(dst / name, (1e9 + i, 1e9 + i))  # order by age
    return dst


def test_resume_skips_truncated_and_damaged_checkpoints(tmp_path,
                                                        three_checkpoints,
                                                        capsys):
    work = _copy_work(three_checkpoints, tmp_path / 'work')
    data = (work / 'epoch_3.pth').read_bytes()
    (work / 'epoch_3.pth').write_bytes(data[:len(data) // 2])
    os.utime(work / 'epoch_3.pth', (1e9 + 2, 1e9 + 2))
    path, skipped = find_resume_checkpoint(str(work))
    assert path == str(work / 'epoch_2.pth')
    assert len(skipped) == 1 and 'epoch_3.pth' in skipped[0] and \
        'truncated' in skipped[0]
    # a flipped byte inside the archive: the CRC check catches it
    mid = bytearray((work / 'epoch_2.pth').read_bytes())
    pos = mid.find(b'data.pkl') + 200
    mid[pos] ^= 0xFF
    (work / 'epoch_2.pth').write_bytes(bytes(mid))
    os.utime(work / 'epoch_2.pth', (1e9 + 1, 1e9 + 1))
    path, skipped = find_resume_checkpoint(str(work))
    assert path == str(work / 'epoch_1.pth')
    assert [s.split(':')[0] for s in skipped] == [
        f'skipping checkpoint {work / n}' for n in ('epoch_3.pth',
                                                    'epoch_2.pth')]
    assert 'damaged' in skipped[1]
    # the runner resumes from the fallback: it continues from epoch 1
    counter = CountIters()
    build(tiny_cfg(str(work), True, iter_ckpt_interval=None), [counter],
          resume=True).train()
    assert counter.iters == list(range(5, 15))


def test_resume_with_nothing_intact_or_nothing_at_all(tmp_path,
                                                      three_checkpoints):
    work = _copy_work(three_checkpoints, tmp_path / 'work')
    for name in ('epoch_1.pth', 'epoch_2.pth', 'epoch_3.pth'):
        (work / name).write_bytes(b'')
    cfg = tiny_cfg(str(work), True, iter_ckpt_interval=None)
    with pytest.raises(CheckpointError, match='no intact checkpoint'):
        build(cfg, resume=True).train()
    assert all((work / n).read_bytes() == b'' for n in (
        'epoch_1.pth', 'epoch_2.pth', 'epoch_3.pth'))  # nothing replaced
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert find_resume_checkpoint(str(empty)) == (None, [])
    assert find_resume_checkpoint(str(tmp_path / 'missing')) == (None, [])


@pytest.mark.parametrize('content,why', [
    (None, 'does not exist'), (b'', 'empty'),
    (b'hello, not a checkpoint', 'not a checkpoint'), ('half', 'truncated')])
def test_resume_path_that_cannot_be_resumed(tmp_path, three_checkpoints,
                                            content, why):
    path = tmp_path / 'given.pth'
    if content == 'half':
        data = (three_checkpoints / 'epoch_1.pth').read_bytes()
        content = data[:len(data) - 10]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=why) as info:
        check_resume_checkpoint(str(path))
    assert str(path) in str(info.value) and '\n' not in str(info.value)


# --------------------------------------------------------------------------
# The work-dir lock
# --------------------------------------------------------------------------
def _others_kept_out(work):
    """Whether another holder is kept out of ``work`` (a fresh ``flock``,
    as another process would try, is refused)."""
    from iformer_mm.engine.lock import LOCK_NAME
    path = osp.join(work, LOCK_NAME)
    if not osp.exists(path):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_work_dir_lock_excludes_and_takes_over_stale(tmp_path):
    from iformer_mm.engine.lock import LOCK_NAME, WorkDirLock
    work = str(tmp_path / 'work')
    first = WorkDirLock(work).acquire()
    assert _others_kept_out(work)
    # in this process it is re-entrant (tools/train.py, then the runner):
    # the last holder frees it
    again = WorkDirLock(work).acquire()
    first.release()
    assert _others_kept_out(work)
    again.release()
    assert not osp.exists(osp.join(work, LOCK_NAME))
    assert not _others_kept_out(work)
    # a lock file whose process is gone (kill -9 leaves it behind)
    dead = subprocess.Popen(['true'])
    dead.wait()
    with open(osp.join(work, LOCK_NAME), 'w') as f:
        json.dump(dict(pid=dead.pid, host='h', started='t'), f)
    with WorkDirLock(work) as lock:
        assert lock.took_over['pid'] == dead.pid
        with open(osp.join(work, LOCK_NAME)) as f:
            assert json.load(f)['pid'] == os.getpid()
    assert not osp.exists(osp.join(work, LOCK_NAME))


# --------------------------------------------------------------------------
# kill -9 inside the checkpoint write, through tools/train.py
# --------------------------------------------------------------------------
STALL_WRITER = '''
"""Imported by the test config: the STALL_SAVE-th checkpoint write of this
process writes STALL_BYTES bytes (negative: all but that many), syncs them,
drops a marker file and hangs, waiting for the test's kill -9."""
import os
import time

from iformer_mm.engine import checkpointing

_real = checkpointing._write_data
_count = [0]


def _stalling(f, data):
    name = os.path.basename(f.name)
    if name.startswith('.') and '.pth.' in name:
        _count[0] += 1
        if _count[0] == int(os.environ.get('STALL_SAVE', '0')):
            nbytes = int(os.environ['STALL_BYTES'])
            nbytes = nbytes if nbytes >= 0 else len(data) + nbytes
            f.write(bytes(memoryview(data)[:nbytes]))
            f.flush()
            os.fsync(f.fileno())
            with open(os.environ['STALL_MARKER'], 'w') as m:
                m.write(f'{f.name} {nbytes} {len(data)}')
            time.sleep(600)
    _real(f, data)


checkpointing._write_data = _stalling
'''


def _tool_env(ws, **extra):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT, str(ws),
                                         env.get('PYTHONPATH', '')])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _train(ws, *args, timeout=600, **env):
    return subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'train.py'), 'tiny.py',
         '--work-dir', 'work', *args], cwd=ws, env=_tool_env(ws, **env),
        capture_output=True, text=True, timeout=timeout)


def _train_until_stalled(ws, save, nbytes, *args):
    marker = ws / 'stalled'
    if marker.exists():
        marker.unlink()
    proc = subprocess.Popen(
        [sys.executable, osp.join(ROOT, 'tools', 'train.py'), 'tiny.py',
         '--work-dir', 'work', *args], cwd=ws,
        env=_tool_env(ws, STALL_SAVE=save, STALL_BYTES=nbytes,
                      STALL_MARKER=marker),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and \
            time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate(timeout=60)[0][-3000:]
    time.sleep(0.2)  # the marker's writer is asleep by now
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL
    tmp_name, written, total = marker.read_text().split()
    return out, tmp_name, int(written), int(total)


@pytest.fixture(scope='module')
def tool_workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp('kill')
    (ws / 'stall_writer.py').write_text(STALL_WRITER)
    cfg = tiny_cfg('unused', False, iters=12, iter_ckpt_interval=3,
                   max_keep_ckpts=1)
    del cfg['work_dir']
    cfg['default_scope'] = 'mmpretrain'  # tools/train.py wants a codebase
    cfg['runner_type'] = 'IFormerRunner'
    for loader in ('train_dataloader', 'val_dataloader'):
        # mmpretrain's train.py defaults persistent_workers to True
        cfg[loader]['persistent_workers'] = False
    cfg['custom_imports'] = dict(
        imports=['iformer_mm', 'tests._tiny', 'stall_writer'],
        allow_failed_imports=False)
    Config(cfg).dump(str(ws / 'tiny.py'))
    return ws


def _pth(work):
    return sorted(n for n in os.listdir(work) if n.endswith('.pth'))


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_then_resume(tool_workspace,
                                                     tmp_path):
    """Three trainings killed inside a checkpoint write (after 0 bytes,
    half the file, all but its last byte), each resumed with --resume; the
    last resumed with --resume PATH. Every time the newest complete
    checkpoint is there, and the end result is bitwise an uninterrupted
    run's: --resume PATH restores the optimizer, schedulers and iteration,
    not only the weights."""
    ws = tool_workspace
    work = ws / 'work'
    work.mkdir()
    user_files = {work / 'notes.txt': b'my notes', work / 'mine.pth': b'x'}
    for path, data in user_files.items():
        path.write_bytes(data)

    # (extra args, offset, the checkpoint that must survive)
    plan = [((), 0, 'iter_3.pth'), (('--resume', ), 'half', 'iter_6.pth'),
            (('--resume', ), -1, 'iter_9.pth')]
    for args, nbytes, survivor in plan:
        if nbytes == 'half':
            nbytes = osp.getsize(work / 'iter_3.pth') // 2
        out, tmp_name, written, total = _train_until_stalled(
            ws, 2, nbytes, *args)
        assert 0 <= written < total
        assert osp.getsize(tmp_name) == written  # killed inside the write
        if args:
            assert 'took over the lock' in out
            assert 'an interrupted checkpoint write' in out
        assert _pth(work) == sorted(['mine.pth', survivor])
        assert checkpoint_problem(str(work / survivor)) is None
        assert (work / 'last_checkpoint').read_text() == str(work / survivor)

    proc = _train(ws, '--resume', str(work / 'iter_9.pth'))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'resumed epoch: 0, iter: 9' in proc.stdout
    assert _pth(work) == ['iter_12.pth', 'mine.pth']
    assert not [n for n in os.listdir(work) if n.endswith('.tmp')]
    assert not (work / '.iformer_mm.lock').exists()
    for path, data in user_files.items():
        assert path.read_bytes() == data

    ref = build(tiny_cfg(str(tmp_path / 'ref'), False, iters=12,
                         iter_ckpt_interval=3, max_keep_ckpts=1))
    ref.train()
    final = safe_load(work / 'iter_12.pth')
    assert_bitwise_equal((final['state_dict'], final['optimizer']),
                         final_state(ref))


def test_train_tool_resume_errors_and_lock(tool_workspace, tmp_path,
                                           monkeypatch, capsys):
    """tools/train.py's main, in this process (a subprocess per case would
    cost seconds of imports each; the kill test above runs the real tool)."""
    from iformer_mm.engine.cli import train_main
    from iformer_mm.engine.errors_cli import run_tool
    cfg = Config.fromfile(str(tool_workspace / 'tiny.py'),
                          import_custom_modules=False)
    cfg.custom_imports = dict(imports=['iformer_mm', 'tests._tiny'],
                              allow_failed_imports=False)
    cfg.dump(str(tmp_path / 'plain.py'))
    monkeypatch.chdir(tmp_path)

    def train(*args):
        rc = run_tool(train_main, ['plain.py', *args], prog='train.py')
        return rc, capsys.readouterr()

    # --resume PATH of a file that does not exist: exit 2, one line
    rc, io = train('--work-dir', 'w1', '--resume', 'nope.pth')
    assert rc == 2 and io.err.count('\n') == 1
    assert io.err.startswith('train.py: error: --resume nope.pth') and \
        'does not exist' in io.err
    # a second training into a work dir in use: exit 2, names the holder
    with held_elsewhere(tmp_path / 'busy') as holder:
        rc, io = train('--work-dir', 'busy')
    assert rc == 2 and io.err.count('\n') == 1
    assert f'PID {holder}' in io.err and 'busy' in io.err
    # --resume with nothing to resume: says so, then trains from scratch
    rc, io = train('--work-dir', 'fresh', '--resume', '--cfg-options',
                   'train_cfg.max_iters=3')
    assert rc == 0, io.err[-3000:]
    said = [ln for ln in io.out.splitlines() if '--resume' in ln]
    assert len(said) == 1 and 'starting from scratch' in said[0]
    assert _pth(tmp_path / 'fresh') == ['iter_3.pth']
    assert not (tmp_path / 'fresh' / '.iformer_mm.lock').exists()


# --------------------------------------------------------------------------
# The toy data generator never deletes what it did not write
# --------------------------------------------------------------------------
def _snapshot(root):
    """{relative path: (bytes, mtime)} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = (f.read(),
                                                os.stat(path).st_mtime_ns)
    return out


def _small_imagenet(root):
    from iformer_mm.datasets import make_toy_imagenet
    return make_toy_imagenet(str(root), num_train_per_class=1,
                             num_val_per_class=1, size=16)


@pytest.mark.parametrize('kind', ['user_dir', 'user_file', 'user_link',
                                  'extra_file_in_toy_dir'])
def test_toy_generator_leaves_foreign_data_untouched(tmp_path, kind):
    root = tmp_path / 'data'
    if kind == 'user_dir':
        (root / 'sub').mkdir(parents=True)
        (root / 'sub' / 'annotations.json').write_text('{"mine": 1}')
        (root / 'README').write_text('my dataset')
    elif kind == 'user_file':
        root.write_text('a file, not a directory')
    elif kind == 'user_link':
        (tmp_path / 'real').mkdir()
        (tmp_path / 'real' / 'img.jpg').write_bytes(b'\xff\xd8')
        root.symlink_to(tmp_path / 'real')
    else:
        # the generator's own folder, with a stale stamp and a user's file
        _small_imagenet(root)
        stamp = json.loads((root / '.toy_complete').read_text())
        stamp['params']['version'] = -1
        (root / '.toy_complete').write_text(json.dumps(stamp))
        (root / 'train' / 'my_extra.png').write_bytes(b'mine')
        (root / 'train' / 'zz_notes.txt').write_text('mine too')
    before = _snapshot(tmp_path)
    with pytest.raises(UserError) as info:
        _small_imagenet(root)
    message = str(info.value)
    assert str(root) in message and '\n' not in message
    assert 'untouched' in message and 'data_root' in message
    if kind == 'extra_file_in_toy_dir':  # the first user file, by name
        assert "holds 2 file(s) the generator did not write (e.g. " \
            "'train/my_extra.png')" in message
    assert _snapshot(tmp_path) == before  # nothing changed, no temp left
    assert sorted(os.listdir(tmp_path)) == sorted(
        {'data', 'real'} & set(os.listdir(tmp_path)))


def test_toy_generator_replaces_only_its_own_or_empty(tmp_path):
    root = tmp_path / 'data'
    root.mkdir()  # an empty directory may be filled
    _small_imagenet(root)
    files = _snapshot(root)
    assert 'train/square/square_0000.png' in files
    assert _small_imagenet(root) and _snapshot(root) == files  # reused
    # its own copy of another version (and the first stamp format) is
    # regenerated
    (root / '.toy_complete').write_text(json.dumps(dict(kind='imagenet')))
    _small_imagenet(root)
    assert {k: v[0] for k, v in _snapshot(root).items()} == \
        {k: v[0] for k, v in files.items()}
    assert os.listdir(tmp_path) == ['data']
    # an old copy of its own with a generated file deleted by the user is
    # still its own: it is regenerated, whole
    stamp = json.loads((root / '.toy_complete').read_text())
    stamp['params']['version'] = -1
    (root / '.toy_complete').write_text(json.dumps(stamp))
    (root / 'train' / 'square' / 'square_0000.png').unlink()
    _small_imagenet(root)
    assert {k: v[0] for k, v in _snapshot(root).items()} == \
        {k: v[0] for k, v in files.items()}
    assert os.listdir(tmp_path) == ['data']


def test_train_val_toy_cfg_mismatch_is_a_config_error(tmp_path):
    from iformer_mm.datasets import check_datasets
    from iformer_mm.errors import ConfigError
    root = str(tmp_path / 'toy')
    ds = dict(type='ToyCocoDataset', data_root=root)
    cfg = Config(dict(
        train_dataloader=dict(dataset=dict(ds, toy_cfg=dict(num_train=4))),
        val_dataloader=dict(dataset=dict(ds, toy_cfg=dict(num_train=8))),
        val_cfg=dict(type='ValLoop')))
    with pytest.raises(ConfigError, match='toy_cfg') as info:
        check_datasets(cfg, ('train', 'val'))
    assert root in str(info.value) and 'num_train' in str(info.value)
    assert not osp.exists(root)  # checked before anything is generated


@pytest.mark.slow
def test_train_tool_with_data_root_on_user_data(tmp_path):
    """tools/train.py on a toy config whose data_root is a user's dataset:
    exit 2, one line naming the folder, every file untouched."""
    data = tmp_path / 'imagenet'
    (data / 'train' / 'n01440764').mkdir(parents=True)
    (data / 'train' / 'n01440764' / 'a.JPEG').write_bytes(b'\xff\xd8jpeg')
    (data / 'meta.txt').write_text('labels')
    before = _snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'train.py'),
         osp.join(ROOT, 'configs', 'toy', 'iformer_t_toy_cls.py'),
         '--work-dir', str(tmp_path / 'work'), '--cfg-options',
         f'train_dataloader.dataset.data_root={data}',
         f'val_dataloader.dataset.data_root={data}'],
        cwd=tmp_path, env=_tool_env(tmp_path), capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.count('\n') == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.startswith('train.py: error: ') and \
        str(data) in proc.stderr
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith('work')} == \
        before
