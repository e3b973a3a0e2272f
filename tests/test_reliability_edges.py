"""Edges of the work-dir lock and of resume (issue 14, engine group): the
lock without flock (Windows), who holds it, resume's choice among damaged
and equally new checkpoints, leftovers of interrupted writes."""
import json
import logging
import os
import os.path as osp
import subprocess
import sys
import uuid
import zipfile

import pytest
import torch

from iformer_mm.errors import CheckpointError


def _dead_pid():
    proc = subprocess.Popen(['true'])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------
# the lock
# --------------------------------------------------------------------------
def test_holder_descriptions_and_liveness():
    from iformer_mm.engine.lock import _describe, _pid_alive
    assert _describe({}) == 'another process'
    assert _describe(dict(pid=12)) == 'PID 12'
    assert _describe(dict(pid=12, host='gpu3', started='09:00')) == \
        'PID 12 on gpu3, started 09:00'
    assert _describe(dict(pid=12, started='09:00')) == \
        'PID 12, started 09:00'
    assert _pid_alive(os.getpid())
    assert not _pid_alive(_dead_pid())


def test_liveness_check_sends_no_signal(monkeypatch):
    """Asking whether the holder lives must not disturb it: signal 0 only
    (a real signal, e.g. SIGHUP, would end a training run from a terminal)."""
    import signal

    from iformer_mm.engine.lock import _pid_alive
    received = []
    previous = {sig: signal.signal(sig, lambda n, f: received.append(n))
                for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM)}
    try:
        assert _pid_alive(os.getpid())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert received == []


def test_liveness_of_pids_we_may_not_signal(monkeypatch):
    """Signal 0 to another user's process fails with EPERM: it exists, so
    the lock is busy; any other error (e.g. EINVAL) is no live holder."""
    import errno

    from iformer_mm.engine import lock

    def kill_raising(error):
        def kill(pid, sig):
            raise error
        return kill
    for error, alive in ((PermissionError(errno.EPERM, 'no'), True),
                         (ProcessLookupError(errno.ESRCH, 'gone'), False),
                         (OSError(errno.EINVAL, 'bad'), False)):
        monkeypatch.setattr(lock.os, 'kill', kill_raising(error))
        assert lock._pid_alive(4242) is alive, error


def test_a_lock_file_of_our_own_pid_is_no_takeover(tmp_path):
    """A lock file this very process left (a long-lived process whose
    earlier run was interrupted) is taken without reporting a takeover."""
    from iformer_mm.engine.lock import LOCK_NAME, WorkDirLock
    work = tmp_path / 'work'
    work.mkdir()
    (work / LOCK_NAME).write_text(json.dumps(dict(pid=os.getpid(),
                                                  host='here')))
    with WorkDirLock(str(work)) as held:
        assert held.took_over is None
    (work / LOCK_NAME).write_text(json.dumps(dict(pid=os.getpid() + 1,
                                                  host='here')))
    with WorkDirLock(str(work)) as held:
        assert held.took_over == dict(pid=os.getpid() + 1, host='here')


def test_unreadable_lock_files_name_no_holder(tmp_path):
    from iformer_mm.engine.lock import _read_holder
    path = tmp_path / 'lock'
    assert _read_holder(str(path)) == {}
    path.write_text('{broken')
    assert _read_holder(str(path)) == {}
    path.write_text('[1, 2]')
    assert _read_holder(str(path)) == {}
    path.write_text('{"pid": 5}')
    assert _read_holder(str(path)) == {'pid': 5}


@pytest.fixture
def no_flock(monkeypatch):
    """The lock as on a system without fcntl (Windows)."""
    from iformer_mm.engine import lock
    monkeypatch.setattr(lock, 'fcntl', None)
    return lock


def test_lock_without_flock_excludes_a_live_holder(tmp_path, no_flock):
    work = str(tmp_path / 'work')
    first = no_flock.WorkDirLock(work).acquire()
    assert first.acquire() is first and first.held  # re-entrant
    with pytest.raises(no_flock.WorkDirBusyError) as err:
        no_flock.WorkDirLock(work).acquire()
    assert f'PID {os.getpid()}' in str(err.value)
    assert "pass another --work-dir" in str(err.value)
    first.release()
    first.release()  # twice is harmless
    assert not first.held
    assert not osp.exists(osp.join(work, no_flock.LOCK_NAME))


@pytest.mark.parametrize('content', ['dead', 'garbage', 'no_pid'])
def test_lock_without_flock_takes_over_a_stale_file(tmp_path, no_flock,
                                                    content):
    work = tmp_path / 'work'
    work.mkdir()
    path = work / no_flock.LOCK_NAME
    stale = dict(dead=json.dumps(dict(pid=_dead_pid(), host='h')),
                 garbage='{not json', no_pid=json.dumps(dict(host='h')))
    path.write_text(stale[content])
    with no_flock.WorkDirLock(str(work)) as lock:
        assert lock.held
        assert json.loads(path.read_text())['pid'] == os.getpid()
        if content == 'dead':
            assert lock.took_over['host'] == 'h'
        else:
            assert lock.took_over is None
    assert not path.exists()


@pytest.mark.parametrize('race', ['replaced_before_flock',
                                  'removed_after_flock'])
def test_a_lock_file_changed_under_us_is_taken_again(tmp_path, monkeypatch,
                                                     race):
    """Between our open and our flock the holder may delete the file (it
    releases) and a third process create a new one: a lock on the deleted
    inode protects nothing. Or the holder releases right after our flock
    succeeded on its old inode: the stat then finds no file. Either way the
    lock is taken again, on the file that everyone sees."""
    from iformer_mm.engine import lock
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
    with lock.WorkDirLock(str(work)) as held:
        assert len(calls) == 2
        assert os.stat(path).st_ino == os.fstat(held._fd).st_ino
        assert json.loads(open(path).read())['pid'] == os.getpid()


def test_stale_file_vanishing_before_our_unlink_is_a_retry(tmp_path,
                                                           no_flock,
                                                           monkeypatch):
    """Without flock, another process may remove a stale lock file between
    our read and our unlink: the lock is still taken, with no error."""
    work = tmp_path / 'work'
    work.mkdir()
    path = work / no_flock.LOCK_NAME
    path.write_text(json.dumps(dict(pid=_dead_pid())))
    real_read = no_flock._read_holder
    reads = []

    def read_and_vanish(p):
        holder = real_read(p)
        reads.append(holder)
        if len(reads) == 2 and osp.exists(p):  # 1st read: acquire()'s own
            os.unlink(p)
        return holder
    monkeypatch.setattr(no_flock, '_read_holder', read_and_vanish)
    with no_flock.WorkDirLock(str(work)) as held:
        assert held.held and len(reads) == 2
        assert json.loads(path.read_text())['pid'] == os.getpid()


@pytest.mark.parametrize('with_flock', [True, False])
def test_lock_file_is_readable_by_all_writable_by_its_owner(
        tmp_path, monkeypatch, with_flock):
    """Another user's training must be able to read who holds the dir (for
    its message); nobody else may write it, and it is no program."""
    from iformer_mm.engine import lock
    if not with_flock:
        monkeypatch.setattr(lock, 'fcntl', None)
    old = os.umask(0)
    try:
        with lock.WorkDirLock(str(tmp_path / 'work')) as held:
            mode = os.stat(held.path).st_mode & 0o777
    finally:
        os.umask(old)
    assert oct(mode) == oct(0o644)


def test_lock_module_imports_where_fcntl_does_not_exist(tmp_path):
    """On Windows ``import fcntl`` fails: the module must still import and
    fall back to the O_EXCL lock (simulated here in a fresh interpreter
    where fcntl cannot be imported)."""
    code = (
        'import sys, os, json\n'
        'sys.modules["fcntl"] = None  # import fcntl -> ImportError\n'
        'from iformer_mm.engine import lock\n'
        'assert lock.fcntl is None\n'
        f'work = {str(tmp_path / "work")!r}\n'
        'first = lock.WorkDirLock(work).acquire()\n'
        'try:\n'
        '    lock.WorkDirLock(work).acquire()\n'
        'except lock.WorkDirBusyError:\n'
        '    print("busy")\n'
        'first.release()\n'
        'print(os.path.exists(first.path))\n')
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep +
               os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ['busy', 'False']


# --------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------
def _ckpt(path, step=1):
    torch.save(dict(meta=dict(step=step), state_dict={}), str(path))


def test_checkpoint_problems_are_told_apart(tmp_path):
    from iformer_mm.engine.resume import checkpoint_problem
    assert checkpoint_problem(str(tmp_path / 'none.pth')) == \
        'it does not exist'
    assert checkpoint_problem(str(tmp_path)) == 'it is not a file'
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    assert checkpoint_problem(str(empty)) == 'it is empty (0 bytes)'
    text = tmp_path / 'text.pth'
    text.write_text('<html>')
    assert 'not a torch zip archive' in checkpoint_problem(str(text))
    for head in (b'\xff\xfe<\x00', b'\x81\x02', b'\x7f\x02'):  # near 0x80
        text.write_bytes(head + b'\x00' * 8)
        assert 'not a torch zip archive' in checkpoint_problem(str(text))
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': 1}, str(legacy), _use_new_zipfile_serialization=False)
    assert checkpoint_problem(str(legacy)) is None
    other_zip = tmp_path / 'other.pth'
    with zipfile.ZipFile(other_zip, 'w') as zf:
        zf.writestr('a/readme.txt', 'hi')
    assert checkpoint_problem(str(other_zip)) == \
        'it is not a checkpoint (no data.pkl in the archive)'
    good = tmp_path / 'good.pth'
    _ckpt(good)
    data = good.read_bytes()
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(data[:len(data) - 30])
    assert checkpoint_problem(str(cut)).startswith(
        f'it is truncated ({len(data) - 30} bytes')
    assert checkpoint_problem(str(good)) is None


def test_resume_prefers_last_checkpoint_among_equally_new(tmp_path, capsys):
    from iformer_mm.engine.resume import find_resume_checkpoint
    a, b = tmp_path / 'epoch_1.pth', tmp_path / 'epoch_2.pth'
    _ckpt(a), _ckpt(b)
    same = os.stat(a).st_mtime_ns
    os.utime(b, ns=(same, same))
    (tmp_path / 'last_checkpoint').write_text(str(a))
    assert find_resume_checkpoint(str(tmp_path)) == (str(a), [])
    (tmp_path / 'last_checkpoint').write_text(str(b))
    assert find_resume_checkpoint(str(tmp_path)) == (str(b), [])
    # an empty last_checkpoint names nothing
    (tmp_path / 'last_checkpoint').write_text('')
    path, _ = find_resume_checkpoint(str(tmp_path))
    assert path in (str(a), str(b))
    # not a work dir yet: nothing to resume, no error
    assert find_resume_checkpoint(str(tmp_path / 'new')) == (None, [])


def test_last_checkpoint_naming_a_file_elsewhere_is_a_candidate(tmp_path):
    """mmengine's last_checkpoint may name a checkpoint outside the work
    dir (e.g. after --work-dir changed): it is still the newest."""
    from iformer_mm.engine.resume import find_resume_checkpoint
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
    from iformer_mm.engine.resume import check_resume_checkpoint
    check_resume_checkpoint('https://example.com/epoch_3.pth')  # no raise
    with pytest.raises(CheckpointError, match='does not exist'):
        check_resume_checkpoint('/no/such/epoch_3.pth')


def test_only_interrupted_atomic_writes_are_removed(tmp_path):
    from iformer_mm.engine.resume import remove_interrupted_writes
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
# SafeCheckpointHook's best checkpoints, by iteration and several metrics
# --------------------------------------------------------------------------
def _iter_runner(work_dir, scores, iters=6, every=2, **hook):
    """A tiny iteration-based run of ``iters`` iterations, validated and
    saved every ``every`` (2, 4 and 6 by default); its metric returns
    ``scores[i]`` (a dict) at the i-th validation."""
    import torch.nn as nn
    from mmengine.evaluator import BaseMetric
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import Dataset

    class Model(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, x, mode='tensor'):
            out = self.linear(torch.stack(x))
            if mode == 'loss':
                return dict(loss=(out ** 2).mean())
            return list(out)

    class Data(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return dict(x=torch.tensor([i / 4., 1.]))

    class Scripted(BaseMetric):
        calls = 0

        def process(self, data_batch, data_samples):
            self.results.append(0)

        def compute_metrics(self, results):
            Scripted.calls += 1
            return dict(scores[Scripted.calls - 1])

    loader = dict(dataset=Data(), batch_size=2, num_workers=0,
                  sampler=dict(type='InfiniteSampler', shuffle=False))
    val_loader = dict(loader, sampler=dict(type='DefaultSampler',
                                           shuffle=False))
    return Runner(
        model=Model(), work_dir=str(work_dir), train_dataloader=loader,
        val_dataloader=val_loader, val_evaluator=[Scripted()],
        val_cfg=dict(),
        train_cfg=dict(by_epoch=False, max_iters=iters, val_interval=every),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        param_scheduler=dict(type='MultiStepLR', milestones=[4],
                             by_epoch=False),
        default_hooks=dict(checkpoint=dict(
            type='SafeCheckpointHook', interval=every, by_epoch=False,
            **hook)),
        randomness=dict(seed=0), default_scope='mmengine',
        # mmengine names runners by the second they start in and shares a
        # MessageHub (with keep_ckpt_ids) between runners of the same name
        experiment_name=f'edges_{uuid.uuid4().hex}')


def _files(work_dir):
    return sorted(n for n in os.listdir(work_dir) if n.endswith('.pth'))


def test_best_checkpoints_per_metric_by_iteration(tmp_path):
    import iformer_mm.engine  # noqa: F401  (registers the hook)
    scores = [dict(acc=0.1, loss=5.0), dict(acc=0.3, loss=6.0),
              dict(acc=0.2, loss=4.0)]
    runner = _iter_runner(tmp_path, scores, save_best=['acc', 'loss'],
                          rule=['greater', 'less'], max_keep_ckpts=1)
    runner.train()
    # acc best at iteration 4, loss at 6; the earlier bests were retired
    assert _files(tmp_path) == ['best_acc_iter_4.pth', 'best_loss_iter_6.pth',
                                'iter_6.pth']
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


def test_only_retired_checkpoints_are_removed(tmp_path, monkeypatch):
    """Without a limit the hook removes nothing (it must not even look for
    a file); with max_keep_ckpts=1 exactly the superseded ones."""
    import iformer_mm.engine  # noqa: F401
    from iformer_mm.engine.checkpointing import SafeCheckpointHook
    removed = []
    real = SafeCheckpointHook._remove

    def record(self, path):
        removed.append(osp.basename(path))
        return real(self, path)
    monkeypatch.setattr(SafeCheckpointHook, '_remove', record)
    _iter_runner(tmp_path / 'all', [dict(acc=0.1)] * 3).train()
    assert removed == []
    _iter_runner(tmp_path / 'one', [dict(acc=0.1)] * 3,
                 max_keep_ckpts=1).train()
    assert removed == ['iter_2.pth', 'iter_4.pth']
    assert _files(tmp_path / 'one') == ['iter_6.pth']


def test_max_keep_ckpts_zero_keeps_every_checkpoint(tmp_path):
    """As mmengine: only a positive max_keep_ckpts retires checkpoints."""
    import iformer_mm.engine  # noqa: F401
    scores = [dict(acc=0.1)] * 3
    _iter_runner(tmp_path, scores, max_keep_ckpts=0).train()
    assert _files(tmp_path) == ['iter_2.pth', 'iter_4.pth', 'iter_6.pth']


def test_load_hooks_tell_resuming_from_loading_weights(monkeypatch):
    """The resume-state hook restores only when resuming and only into a
    loop that can take it (mmengine's own loops cannot); the strict
    load_from hook stands aside when resuming, and loads when the runner
    says nothing about resuming."""
    from types import SimpleNamespace

    from iformer_mm.engine.checkpointing import SafeCheckpointHook
    from iformer_mm.engine.loading import StrictLoadFromHook
    restored = []
    ours = SimpleNamespace(restore_resume_state=restored.append)
    hook = SafeCheckpointHook(interval=1)
    ckpt = dict(meta=dict(epoch=3), state_dict={})
    hook.after_load_checkpoint(SimpleNamespace(_resume=True,
                                               _train_loop=object()), ckpt)
    hook.after_load_checkpoint(SimpleNamespace(_resume=False,
                                               _train_loop=ours), ckpt)
    hook.after_load_checkpoint(SimpleNamespace(_train_loop=ours), ckpt)
    assert restored == []
    hook.after_load_checkpoint(SimpleNamespace(_resume=True,
                                               _train_loop=ours), ckpt)
    assert restored == [dict(epoch=3)]

    loads = []
    strict = StrictLoadFromHook()
    import iformer_mm.engine.loading as L
    complete = [True]
    monkeypatch.setattr(L, 'load_state_into_model',
                        lambda *a, **k: loads.append(a) or SimpleNamespace(
                            summary=lambda: 'summary', complete=complete[0],
                            details=lambda limit: f'details({limit})'))
    logged = []
    logger = SimpleNamespace(log=lambda level, line: logged.append(
        (level, line)))
    model = torch.nn.Linear(1, 1)
    strict.after_load_checkpoint(
        SimpleNamespace(_resume=True, model=model, logger=logger), ckpt)
    assert loads == [] and ckpt['state_dict'] == {} and logged == []
    strict.after_load_checkpoint(SimpleNamespace(model=model, logger=logger),
                                 ckpt)
    assert len(loads) == 1 and set(ckpt['state_dict']) == {'weight', 'bias'}
    # a complete load is news, an incomplete one (--allow-partial) a warning
    complete[0] = False
    strict.after_load_checkpoint(SimpleNamespace(model=model, logger=logger),
                                 ckpt)
    assert logged == [(logging.INFO, 'load_from summary'),
                      (logging.WARNING, 'load_from summary; details(4)')]


def test_a_new_best_at_a_late_step_keeps_the_last_checkpoint(tmp_path):
    """A new best saves the step's checkpoint again (so that it records
    the best): that second save of the same step must not count as another
    checkpoint, or max_keep_ckpts=2 would keep [300, 300] and retire --
    delete -- iter_300 at the next save. Steps above 256 matter: Python
    caches small ints, so an identity test would pass below them."""
    import iformer_mm.engine  # noqa: F401
    scores = [dict(acc=0.1), dict(acc=0.2)]
    runner = _iter_runner(tmp_path, scores, iters=600, every=300,
                          save_best='acc', max_keep_ckpts=2)
    runner.train()
    assert _files(tmp_path) == ['best_acc_iter_600.pth', 'iter_300.pth',
                                'iter_600.pth']
    assert list(runner.message_hub.get_info('keep_ckpt_ids')) == [300, 600]


def test_auto_best_follows_the_first_metric(tmp_path):
    import iformer_mm.engine  # noqa: F401
    scores = [dict(acc=0.5, loss=1.0), dict(acc=0.4, loss=0.1),
              dict(acc=0.6, loss=0.2)]
    runner = _iter_runner(tmp_path, scores, save_best='auto')
    runner.train()
    assert [n for n in _files(tmp_path) if n.startswith('best')] == \
        ['best_acc_iter_6.pth']
    assert runner.message_hub.get_info('best_score') == 0.6


def test_atomic_backend_writes_text_in_its_encoding(tmp_path, monkeypatch):
    from iformer_mm.engine import checkpointing as C
    path = tmp_path / 'sub' / 'note.txt'
    C.AtomicLocalBackend().put_text('hé', str(path), encoding='latin-1')
    assert path.read_bytes() == b'h\xe9'
    C.AtomicLocalBackend().put(b'\x00\x01', str(path))
    assert path.read_bytes() == b'\x00\x01'
    big = bytes(range(256)) * (3 * 4096 + 7)  # over 3 MiB: several chunks
    C.atomic_write(big, str(path))
    assert path.read_bytes() == big
    C.AtomicLocalBackend().put(b'\x00\x01', str(path))

    def fail(f, data):
        f.write(data[:1])
        raise OSError('disk full')
    monkeypatch.setattr(C, '_write_data', fail)
    with pytest.raises(OSError, match='disk full'):
        C.atomic_write(b'new content', str(path))
    assert path.read_bytes() == b'\x00\x01'  # the old file, whole
    assert os.listdir(path.parent) == ['note.txt']  # no temporary left


def test_the_load_from_hook_is_strict_unless_told(tmp_path):
    """install_checkpoint_loading / StrictLoadFromHook refuse a checkpoint
    that does not fit by default: partial loading is an explicit choice."""
    import torch.nn as nn
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    from iformer_mm.engine.loading import (StrictLoadFromHook,
                                           install_checkpoint_loading)
    from iformer_mm.errors import CheckpointMismatchError

    class Model(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, *args, mode='tensor', **kwargs):
            return []
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': {'linear.weight': torch.zeros(1, 2),
                               'extra.weight': torch.zeros(1)}}, str(path))
    assert StrictLoadFromHook().strict is True
    runner = Runner(model=Model(), work_dir=str(tmp_path / 'w'),
                    load_from=str(path), default_scope='mmengine')
    hook = install_checkpoint_loading(runner)
    assert hook.strict is True
    with pytest.raises(CheckpointMismatchError, match='extra.weight'):
        runner.load_or_resume()
    partial = Runner(model=Model(), work_dir=str(tmp_path / 'w2'),
                     load_from=str(path), default_scope='mmengine')
    install_checkpoint_loading(partial, strict=False)
    partial.load_or_resume()
    assert torch.equal(partial.model.linear.weight, torch.zeros(1, 2))


def test_cuda_generator_state_is_saved_and_restored_where_it_fits(
        monkeypatch):
    """On a GPU machine the CUDA generators' states go into the checkpoint
    and come back on resume, but only onto as many devices as were saved
    (torch's CUDA calls are stood in for: this machine has no GPU)."""
    from iformer_mm.engine import checkpointing as C
    calls = []
    fake = [torch.tensor([1], dtype=torch.uint8),
            torch.tensor([2], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_initialized', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_rng_state_all', lambda: fake)
    monkeypatch.setattr(torch.cuda, 'set_rng_state_all', calls.append)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    state = C.get_rng_state()
    assert state['cuda'] is fake
    C.set_rng_state(state)
    assert calls == [fake]
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    C.set_rng_state(state)  # saved on 2 GPUs, resumed on 1: left alone
    assert calls == [fake]
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 3)
    C.set_rng_state(state)  # saved on 2, resumed on 3: left alone too
    assert calls == [fake]
    del state['cuda']
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    C.set_rng_state(state)  # saved without a GPU
    assert calls == [fake]
