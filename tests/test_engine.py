"""The registered training components through their public faces: the
work-dir lock, which checkpoint a resume takes, what the checkpoint hook
retires and keeps, the strict ``load_from`` hook, the random generators of a
GPU machine, and that the upstream tools run our configs exactly as ours do.
"""
import errno
import hashlib
import inspect
import json
import os
import os.path as osp
import signal
import socket
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import RUNNERS

import iformer_mm  # noqa: F401  (registers the runner, hooks and loops)
from iformer_mm.engine import checkpointing, lock
from iformer_mm.engine.resume import (check_resume_checkpoint,
                                      checkpoint_problem,
                                      find_resume_checkpoint,
                                      remove_interrupted_writes)
from iformer_mm.errors import CheckpointError, CheckpointMismatchError

from ._tiny import scripted_runner, tiny_cfg
from ._tools import held_elsewhere


def _dead_pid():
    proc = subprocess.Popen(['true'])
    proc.wait()
    return proc.pid


def _files(work_dir):
    return sorted(n for n in os.listdir(work_dir) if n.endswith('.pth'))


# --------------------------------------------------------------------------
# The work-dir lock
# --------------------------------------------------------------------------
def test_a_busy_work_dir_names_its_holder(tmp_path):
    work = tmp_path / 'work'
    with held_elsewhere(work) as pid:
        with pytest.raises(lock.WorkDirBusyError) as info:
            lock.WorkDirLock(str(work)).acquire()
    message = str(info.value)
    assert f'PID {pid} on {socket.gethostname()}, started ' in message
    assert 'pass another --work-dir' in message and '\n' not in message


def test_a_lock_file_of_our_own_pid_is_no_takeover(tmp_path):
    """A lock file this very process left (a long-lived process whose
    earlier run was interrupted) is taken without reporting a takeover."""
    work = tmp_path / 'work'
    work.mkdir()
    (work / lock.LOCK_NAME).write_text(json.dumps(dict(pid=os.getpid())))
    with lock.WorkDirLock(str(work)) as held:
        assert held.took_over is None
    (work / lock.LOCK_NAME).write_text(json.dumps(dict(pid=_dead_pid(),
                                                       host='here')))
    with lock.WorkDirLock(str(work)) as held:
        assert held.took_over['host'] == 'here'


@pytest.fixture
def no_flock(monkeypatch):
    """The lock as on a system without fcntl (Windows): an O_EXCL file,
    stale when its PID is gone."""
    monkeypatch.setattr(lock, 'fcntl', None)
    return lock


def _lock_file(work, **holder):
    work.mkdir(exist_ok=True)
    (work / lock.LOCK_NAME).write_text(json.dumps(holder))
    return work / lock.LOCK_NAME


def test_without_flock_a_live_holder_excludes(tmp_path, no_flock):
    sleeper = subprocess.Popen([sys.executable, '-c',
                                'import time; time.sleep(60)'])
    try:
        path = _lock_file(tmp_path / 'work', pid=sleeper.pid, host='h')
        with pytest.raises(lock.WorkDirBusyError,
                           match=f'PID {sleeper.pid} on h'):
            lock.WorkDirLock(str(tmp_path / 'work')).acquire()
        assert json.loads(path.read_text())['pid'] == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize('content', ['dead', 'garbage', 'no_pid'])
def test_without_flock_a_stale_file_is_taken_over(tmp_path, no_flock,
                                                  content):
    path = tmp_path / 'work' / lock.LOCK_NAME
    path.parent.mkdir()
    path.write_text(dict(dead=json.dumps(dict(pid=_dead_pid(), host='h')),
                         garbage='{not json',
                         no_pid=json.dumps(dict(host='h')))[content])
    with lock.WorkDirLock(str(path.parent)) as held:
        assert json.loads(path.read_text())['pid'] == os.getpid()
        assert (held.took_over or {}).get('host') == (
            'h' if content == 'dead' else None)
    assert not path.exists()


@pytest.mark.parametrize('error,busy', [
    (PermissionError(errno.EPERM, 'not yours'), True),
    (ProcessLookupError(errno.ESRCH, 'gone'), False),
    (OSError(errno.EINVAL, 'bad'), False)])
def test_without_flock_liveness_of_a_pid_we_may_not_signal(
        tmp_path, no_flock, monkeypatch, error, busy):
    """Signal 0 to another user's process fails with EPERM: it exists, so
    the dir is busy; any other error means no live holder."""
    _lock_file(tmp_path / 'work', pid=4242)

    def kill(pid, sig):
        assert (pid, sig) == (4242, 0)
        raise error
    monkeypatch.setattr(os, 'kill', kill)
    if busy:
        with pytest.raises(lock.WorkDirBusyError, match='PID 4242'):
            lock.WorkDirLock(str(tmp_path / 'work')).acquire()
    else:
        with lock.WorkDirLock(str(tmp_path / 'work')) as held:
            assert held.took_over == dict(pid=4242)


def test_asking_whether_the_holder_lives_sends_it_no_signal(tmp_path,
                                                           no_flock):
    """Only signal 0: a real one (e.g. SIGHUP) would end a training run."""
    received = []
    previous = {sig: signal.signal(sig, lambda n, f: received.append(n))
                for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM)}
    try:
        _lock_file(tmp_path / 'work', pid=os.getpid())
        with pytest.raises(lock.WorkDirBusyError):
            lock.WorkDirLock(str(tmp_path / 'work')).acquire()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert received == []


def test_without_flock_a_stale_file_removed_by_another_is_no_error(
        tmp_path, no_flock, monkeypatch):
    """Another process may remove a stale lock file between our read and
    our unlink: the lock is still taken."""
    path = _lock_file(tmp_path / 'work', pid=_dead_pid())
    real_unlink = os.unlink

    def unlink_raced(p, *args, **kwargs):
        if p == str(path) and path.exists() and not unlinks:
            unlinks.append(p)
            real_unlink(p)  # the other process was faster
            raise FileNotFoundError(errno.ENOENT, 'gone', p)
        return real_unlink(p, *args, **kwargs)
    unlinks = []
    monkeypatch.setattr(os, 'unlink', unlink_raced)
    with lock.WorkDirLock(str(path.parent)) as held:
        assert held.held and unlinks
        assert json.loads(path.read_text())['pid'] == os.getpid()


@pytest.mark.parametrize('race', ['replaced_before_flock',
                                  'removed_after_flock'])
def test_a_lock_file_changed_under_us_is_taken_again(tmp_path, monkeypatch,
                                                     race):
    """Between our open and our flock the holder may release (delete the
    file) and a third process create a new one: a lock on the deleted inode
    protects nothing. Or the holder releases right after our flock on its
    old inode. Either way the lock is taken again, on the file everyone
    sees."""
    work = tmp_path / 'work'
    work.mkdir()
    path = str(work / lock.LOCK_NAME)
    real_flock = lock.fcntl.flock
    calls = []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1 and race == 'replaced_before_flock':
            os.unlink(path)
            with open(path, 'w') as f:
                f.write('{}')
        result = real_flock(fd, op)
        if len(calls) == 1 and race == 'removed_after_flock':
            os.unlink(path)
        return result
    monkeypatch.setattr(lock.fcntl, 'flock', flock)
    with lock.WorkDirLock(str(work)):
        assert len(calls) == 2
        assert json.loads(open(path).read())['pid'] == os.getpid()
        # the file everyone sees is the one we hold: it keeps others out
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                real_flock(fd, lock.fcntl.LOCK_EX | lock.fcntl.LOCK_NB)
        finally:
            os.close(fd)


@pytest.mark.parametrize('with_flock', [True, False])
def test_lock_file_is_readable_by_all_writable_by_its_owner(
        tmp_path, monkeypatch, with_flock):
    """Another user's training must be able to read who holds the dir (for
    its message); nobody else may write it, and it is no program."""
    if not with_flock:
        monkeypatch.setattr(lock, 'fcntl', None)
    old = os.umask(0)
    try:
        with lock.WorkDirLock(str(tmp_path / 'work')) as held:
            mode = os.stat(held.path).st_mode & 0o777
    finally:
        os.umask(old)
    assert oct(mode) == oct(0o644)


@pytest.mark.slow
def test_the_lock_works_where_fcntl_does_not_exist(tmp_path):
    """On Windows ``import fcntl`` fails: the lock falls back to its
    O_EXCL file (a fresh interpreter where fcntl cannot be imported)."""
    work = tmp_path / 'work'
    with held_elsewhere(work, without_fcntl=True) as pid:
        holder = json.loads((work / lock.LOCK_NAME).read_text())
        assert holder['pid'] == pid
    assert not (work / lock.LOCK_NAME).exists()


# --------------------------------------------------------------------------
# Which checkpoint a resume takes
# --------------------------------------------------------------------------
def _ckpt(path, step=1):
    torch.save(dict(meta=dict(step=step), state_dict={}), str(path))


def test_checkpoint_problems_are_told_apart(tmp_path):
    assert checkpoint_problem(str(tmp_path / 'none.pth')) == \
        'it does not exist'
    assert checkpoint_problem(str(tmp_path)) == 'it is not a file'
    bad = tmp_path / 'bad.pth'
    for data, words in ((b'', 'empty'), (b'<html><body>', 'HTML'),
                        (b'\xff\xfe<\x00' + b'\x00' * 8, 'neither'),
                        (b'\x81\x02' + b'\x00' * 8, 'neither')):
        bad.write_bytes(data)
        assert 'not a checkpoint' in checkpoint_problem(str(bad))
        assert words in checkpoint_problem(str(bad))
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': 1}, str(legacy), _use_new_zipfile_serialization=False)
    assert checkpoint_problem(str(legacy)) is None
    with zipfile.ZipFile(tmp_path / 'other.pth', 'w') as zf:
        zf.writestr('a/readme.txt', 'hi')
    assert 'data.pkl' in checkpoint_problem(str(tmp_path / 'other.pth'))
    good = tmp_path / 'good.pth'
    _ckpt(good)
    assert checkpoint_problem(str(good)) is None
    data = good.read_bytes()
    bad.write_bytes(data[:len(data) - 30])
    assert checkpoint_problem(str(bad)).startswith('truncated')


def test_resume_prefers_last_checkpoint_among_equally_new(tmp_path):
    a, b = tmp_path / 'epoch_1.pth', tmp_path / 'epoch_2.pth'
    _ckpt(a), _ckpt(b)
    same = os.stat(a).st_mtime_ns
    os.utime(b, ns=(same, same))
    (tmp_path / 'last_checkpoint').write_text(str(a))
    assert find_resume_checkpoint(str(tmp_path)) == (str(a), [])
    (tmp_path / 'last_checkpoint').write_text(str(b))
    assert find_resume_checkpoint(str(tmp_path)) == (str(b), [])
    # an empty last_checkpoint (mmengine writes it in place) names nothing
    (tmp_path / 'last_checkpoint').write_text('')
    assert find_resume_checkpoint(str(tmp_path))[0] in (str(a), str(b))
    # not a work dir yet: nothing to resume, no error
    assert find_resume_checkpoint(str(tmp_path / 'new')) == (None, [])


def test_last_checkpoint_naming_a_file_elsewhere_is_a_candidate(tmp_path):
    """mmengine's last_checkpoint may name a checkpoint outside the work
    dir (e.g. after --work-dir changed): it is still the newest."""
    work = tmp_path / 'work'
    work.mkdir()
    _ckpt(work / 'epoch_1.pth')
    elsewhere = tmp_path / 'old' / 'iter_9.pth'
    elsewhere.parent.mkdir()
    _ckpt(elsewhere)
    later = os.stat(work / 'epoch_1.pth').st_mtime_ns + 10**9
    os.utime(elsewhere, ns=(later, later))
    (work / 'last_checkpoint').write_text(str(elsewhere) + '\n')
    assert find_resume_checkpoint(str(work)) == (str(elsewhere), [])


def test_remote_resume_paths_are_left_to_mmengine():
    check_resume_checkpoint('https://example.com/epoch_3.pth')  # no raise
    with pytest.raises(CheckpointError, match='does not exist'):
        check_resume_checkpoint('/no/such/epoch_3.pth')


def test_only_interrupted_atomic_writes_are_removed(tmp_path):
    ours = ['.epoch_3.pth.a1B2.tmp', '.iter_100.pth.x.tmp',
            '.best_coco_bbox_mAP_epoch_2.pth.q9.tmp',
            '.last_checkpoint.z.tmp']
    theirs = ['epoch_3.pth', 'notes.tmp', '.epoch_3.pth.tmp',
              'epoch_3.pth.a1.tmp', '.epoch_x.pth.a.tmp', '.my.tmp']
    for name in ours + theirs:
        (tmp_path / name).write_text('x')
    removed = remove_interrupted_writes(str(tmp_path))
    assert sorted(osp.basename(p) for p in removed) == sorted(ours)
    assert sorted(os.listdir(tmp_path)) == sorted(theirs)
    assert remove_interrupted_writes(str(tmp_path / 'none')) == []


# --------------------------------------------------------------------------
# What the checkpoint hook keeps
# --------------------------------------------------------------------------
def test_best_checkpoints_per_metric_by_iteration(tmp_path):
    scores = [dict(acc=0.1, loss=5.0), dict(acc=0.3, loss=6.0),
              dict(acc=0.2, loss=4.0)]
    (tmp_path / 'mine.pth').write_bytes(b'a file of the user')
    runner = scripted_runner(tmp_path, scores, save_best=['acc', 'loss'],
                             rule=['greater', 'less'], max_keep_ckpts=1)
    runner.train()
    # acc best at iteration 4, loss at 6; the earlier ones were retired
    assert _files(tmp_path) == ['best_acc_iter_4.pth', 'best_loss_iter_6.pth',
                                'iter_6.pth', 'mine.pth']
    assert (tmp_path / 'last_checkpoint').read_text() == \
        str(tmp_path / 'iter_6.pth')
    hub = runner.message_hub
    assert hub.get_info('best_score_acc') == 0.3
    assert hub.get_info('best_score_loss') == 4.0
    assert hub.get_info('best_ckpt_loss') == \
        str(tmp_path / 'best_loss_iter_6.pth')
    best = torch.load(str(tmp_path / 'best_acc_iter_4.pth'),
                      weights_only=False)
    assert best['meta']['iter'] == 4 and 'optimizer' not in best
    assert 'param_schedulers' not in best  # weights only, as mmengine's
    last = torch.load(str(tmp_path / 'iter_6.pth'), weights_only=False)
    assert 'optimizer' in last and len(last['param_schedulers']) == 1


@pytest.mark.parametrize('keep,left', [
    (-1, ['iter_2.pth', 'iter_4.pth', 'iter_6.pth']),
    (0, ['iter_2.pth', 'iter_4.pth', 'iter_6.pth']),  # as mmengine
    (1, ['iter_6.pth']), (2, ['iter_4.pth', 'iter_6.pth'])])
def test_max_keep_ckpts_retires_only_superseded_checkpoints(tmp_path, keep,
                                                            left):
    scripted_runner(tmp_path, [dict(acc=0.1)] * 3,
                    max_keep_ckpts=keep).train()
    assert _files(tmp_path) == left


def test_a_new_best_at_a_late_step_keeps_the_last_checkpoint(tmp_path):
    """A new best saves the step's checkpoint again (so that it records
    the best): that second save of the same step must not count as another
    checkpoint, or max_keep_ckpts=2 would keep [300, 300] and retire --
    delete -- iter_300 at the next save."""
    runner = scripted_runner(tmp_path, [dict(acc=0.1), dict(acc=0.2)],
                             iters=600, every=300, save_best='acc',
                             max_keep_ckpts=2)
    runner.train()
    assert _files(tmp_path) == ['best_acc_iter_600.pth', 'iter_300.pth',
                                'iter_600.pth']
    assert list(runner.message_hub.get_info('keep_ckpt_ids')) == [300, 600]


def test_auto_best_follows_the_first_metric(tmp_path):
    scores = [dict(acc=0.5, loss=1.0), dict(acc=0.4, loss=0.1),
              dict(acc=0.6, loss=0.2)]
    runner = scripted_runner(tmp_path, scores, save_best='auto')
    runner.train()
    assert [n for n in _files(tmp_path) if n.startswith('best')] == \
        ['best_acc_iter_6.pth']
    assert runner.message_hub.get_info('best_score') == 0.6


def test_atomic_backend_writes_whole_files_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / 'sub' / 'note.txt'
    checkpointing.AtomicLocalBackend().put_text('hé', str(path),
                                                encoding='latin-1')
    assert path.read_bytes() == b'h\xe9'
    big = bytes(range(256)) * (3 * 4096 + 7)  # over 3 MiB: several chunks
    checkpointing.atomic_write(big, str(path))
    assert path.read_bytes() == big
    checkpointing.AtomicLocalBackend().put(b'\x00\x01', str(path))

    def fail(f, data):  # the disk fills up after the first byte
        f.write(data[:1])
        raise OSError('disk full')
    monkeypatch.setattr(checkpointing, '_write_data', fail)
    with pytest.raises(OSError, match='disk full'):
        checkpointing.atomic_write(b'new content', str(path))
    assert path.read_bytes() == b'\x00\x01'  # the old file, whole
    assert os.listdir(path.parent) == ['note.txt']  # no temporary left


def test_users_own_backend_args_are_kept(tmp_path):
    """A checkpoint hook given the user's ``backend_args`` writes through
    that backend (a remote store, say), as mmengine's hook does; only the
    default local case is made atomic."""
    from mmengine.fileio import LocalBackend, register_backend

    written = []

    class Recording(LocalBackend):
        def put(self, obj, filepath):
            written.append(osp.basename(str(filepath)))
            super().put(obj, filepath)

    register_backend('iformer_test_recording', Recording, force=True)
    scripted_runner(tmp_path, [dict(acc=0.1)] * 3,
                    backend_args=dict(backend='iformer_test_recording')
                    ).train()
    assert written == ['iter_2.pth', 'iter_4.pth', 'iter_6.pth']
    assert sorted(_files(tmp_path)) == written


def test_cuda_generator_state_is_saved_and_restored_where_it_fits(
        monkeypatch):
    """On a GPU machine the CUDA generators' states go into the checkpoint
    and come back on resume, but only onto as many devices as were saved
    (torch's CUDA calls are stood in for: this machine has no GPU)."""
    calls = []
    fake = [torch.tensor([1], dtype=torch.uint8),
            torch.tensor([2], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_initialized', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_rng_state_all', lambda: fake)
    monkeypatch.setattr(torch.cuda, 'set_rng_state_all', calls.append)
    state = checkpointing.get_rng_state()
    assert state['cuda'] is fake
    for devices, restored in ((2, [fake]), (1, []), (3, [])):
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: devices)
        calls.clear()
        checkpointing.set_rng_state(state)
        assert calls == restored, devices
    del state['cuda']  # saved without a GPU
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    checkpointing.set_rng_state(state)
    assert calls == []


# --------------------------------------------------------------------------
# load_from through the strict loader
# --------------------------------------------------------------------------
def test_load_from_is_strict_when_testing_and_a_summary_when_training(
        tmp_path):
    """``default_hooks.strict_load``: a checkpoint that does not fit the
    model is an error naming the keys when testing, unless strict=False;
    fine-tuning loads what fits. ``default_hooks.dump_metrics`` writes a
    test's metrics. Resuming leaves it to mmengine (the resume
    tests of test_reliability.py run with this hook)."""
    ref = RUNNERS.build(Config(tiny_cfg(str(tmp_path / 'ref'))))
    state = {k: torch.full_like(v, 0.5)
             for k, v in ref.model.state_dict().items()}
    state['extra.weight'] = torch.zeros(1)
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': state}, str(path))

    def runner(name, strict=True, **cfg):
        cfg = Config(dict(tiny_cfg(str(tmp_path / name), iters=1), **cfg,
                          load_from=str(path)))
        cfg.default_hooks.strict_load.strict = strict
        cfg.default_hooks.dump_metrics = dict(
            type='DumpMetricsHook', out_file=str(tmp_path / f'{name}.json'))
        cfg.test_dataloader = cfg.val_dataloader
        cfg.test_evaluator = cfg.val_evaluator
        cfg.test_cfg = dict()
        return RUNNERS.build(cfg)
    with pytest.raises(CheckpointMismatchError, match='extra.weight'):
        runner('strict').test()
    partial = runner('partial', strict=False)
    metrics = partial.test()
    # default_hooks.dump_metrics (tools/test.py --out-item metrics) writes
    # what the test returned
    with open(tmp_path / 'partial.json') as f:
        assert json.load(f) == pytest.approx(dict(metrics))
    assert not (tmp_path / 'strict.json').exists()
    assert torch.equal(partial.model.fc1.weight, state['fc1.weight'])
    tune = runner('tune', train_cfg=dict(
        type='ResumableEpochBasedTrainLoop', max_epochs=1))
    tune.train()  # loads what fits: the weights moved on from 0.5
    assert not torch.equal(tune.model.fc1.weight, state['fc1.weight'])


# --------------------------------------------------------------------------
# The upstream code we stand on
# --------------------------------------------------------------------------
def test_the_copied_loop_body_is_still_mmengines():
    """``ResumableEpochBasedTrainLoop.run_epoch`` is mmengine 0.10.7's
    ``EpochBasedTrainLoop.run_epoch`` with one line changed: if the
    installed mmengine changed that method, the copy must be read again."""
    from mmengine.runner import EpochBasedTrainLoop
    source = textwrap.dedent(inspect.getsource(
        EpochBasedTrainLoop.run_epoch))
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == \
        '15a2640790e3e43e', source


@pytest.fixture
def tiny_det_config(tmp_path):
    """The tiny run as an mmdet config file (iteration-based, 12
    iterations, a checkpoint every 3), with a hook that stops training
    before iteration ``STOP_AT_ITER`` (an environment variable) as a kill
    would."""
    (tmp_path / 'stop_hook.py').write_text(textwrap.dedent('''
        import os
        from mmengine.hooks import Hook
        from mmengine.registry import HOOKS

        class Killed(Exception):
            pass

        @HOOKS.register_module(force=True)
        class StopAtIter(Hook):
            def before_train_iter(self, runner, batch_idx, data_batch=None):
                if runner.iter == int(os.environ.get('STOP_AT_ITER', -1)):
                    raise Killed(runner.iter)
        '''))
    cfg = tiny_cfg('unused', False, iters=12, iter_ckpt_interval=3,
                   custom_hooks=[dict(type='StopAtIter')])
    del cfg['work_dir']
    cfg['default_scope'] = 'mmdet'
    cfg['custom_imports'] = dict(
        imports=['iformer_mm', 'tests._tiny', 'stop_hook'],
        allow_failed_imports=False)
    Config(cfg).dump(str(tmp_path / 'tiny.py'))
    return tmp_path / 'tiny.py'


def _final(work):
    ckpt = torch.load(str(work / 'iter_12.pth'), weights_only=False)
    return ckpt['state_dict'], ckpt['optimizer']['state']


def _same(a, b):
    for x, y in zip(a, b):
        flat_x, flat_y = torch.utils._pytree.tree_flatten(x), \
            torch.utils._pytree.tree_flatten(y)
        assert flat_x[1] == flat_y[1]
        assert all(torch.equal(u, v) if isinstance(u, torch.Tensor) else
                   u == v for u, v in zip(flat_x[0], flat_y[0]))


def test_mmdets_own_train_script_runs_our_config_as_ours(
        tiny_det_config, monkeypatch):
    """mmdet's tools/train.py builds our runner, loops and hooks from the
    config: the same final weights as tools/train.py, and interrupted then
    resumed (``--resume``) it continues from the newest checkpoint to the
    same weights, not replaying the iterations already trained."""
    import runpy

    from iformer_mm.engine.cli import train_main, upstream_tool
    ws = tiny_det_config.parent
    monkeypatch.chdir(ws)
    monkeypatch.syspath_prepend(str(ws))

    def mmdet_train(*args):
        script = upstream_tool('mmdet', 'train')
        monkeypatch.setattr(sys, 'argv', [script, 'tiny.py', *args])
        runpy.run_path(script, run_name='__main__')

    train_main(['tiny.py', '--work-dir', 'ours'])
    mmdet_train('--work-dir', 'theirs')
    _same(_final(ws / 'ours'), _final(ws / 'theirs'))
    monkeypatch.setenv('STOP_AT_ITER', '8')
    with pytest.raises(Exception, match='8') as info:
        mmdet_train('--work-dir', 'killed')
    assert type(info.value).__name__ == 'Killed'
    assert _files(ws / 'killed') == ['iter_3.pth', 'iter_6.pth']
    monkeypatch.delenv('STOP_AT_ITER')
    mmdet_train('--work-dir', 'killed', '--resume')
    assert _files(ws / 'killed') == ['iter_12.pth', 'iter_3.pth',
                                     'iter_6.pth', 'iter_9.pth']
    _same(_final(ws / 'ours'), _final(ws / 'killed'))
