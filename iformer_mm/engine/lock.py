"""One training per work dir.

Two trainings writing into the same work dir interleave their logs and
overwrite each other's checkpoints and ``last_checkpoint`` without a word.
:class:`WorkDirLock` makes the second one stop with a
:class:`~iformer_mm.errors.UserError` that names the process holding the
dir. The lock is an ``flock`` on ``<work_dir>/.iformer_mm.lock``: the kernel
releases it when its process ends in any way (also ``kill -9``), so a lock
file left by a dead process is taken over; the file records the holder's
PID, host and start time for the message, and is removed on release.
Within one process the lock is re-entrant: ``tools/train.py`` takes it
before the runner writes anything, and the runner's ``train`` (which
upstream tools call) takes it again.
"""
from __future__ import annotations

import atexit
import json
import os
import os.path as osp
import socket
import time
from typing import Optional

from ..errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = '.iformer_mm.lock'
#: real path of a work dir -> [file descriptor, holders] of the locks this
#: process holds
_HELD: dict = {}


class WorkDirBusyError(UserError):
    """Another training holds the work dir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _read_holder(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder.get('pid'):
        return 'another process'
    text = f"PID {holder['pid']}"
    if holder.get('host'):
        text += f" on {holder['host']}"
    if holder.get('started'):
        text += f", started {holder['started']}"
    return text


class WorkDirLock:
    """Exclusive lock on a work dir; ``acquire()``/``release()`` or ``with``.

    Args:
        work_dir (str): The directory (created if missing).
    """

    def __init__(self, work_dir: str):
        self.work_dir = work_dir
        self.path = osp.join(work_dir, LOCK_NAME)
        self._fd: Optional[int] = None
        self.took_over: Optional[dict] = None

    def _busy(self, holder: dict) -> WorkDirBusyError:
        return WorkDirBusyError(
            f'work dir {self.work_dir!r} is in use by another training '
            f'({_describe(holder)}); wait for it to end, or pass another '
            f'--work-dir (the lock is {self.path}).')

    def _open_locked(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._busy(_read_holder(self.path))
            # The holder may have removed the file between our open and
            # our lock: then we hold a lock on a file nobody else sees.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def _open_exclusive(self) -> int:
        # Without flock: an O_EXCL file, stale when its PID is gone.
        while True:
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL,
                               0o644)
            except FileExistsError:
                holder = _read_holder(self.path)
                pid = holder.get('pid')
                if isinstance(pid, int) and _pid_alive(pid):
                    raise self._busy(holder)
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass

    def acquire(self) -> 'WorkDirLock':
        if self._fd is not None:
            return self
        os.makedirs(self.work_dir, exist_ok=True)
        key = osp.realpath(self.work_dir)
        if key in _HELD:  # this process holds it already
            _HELD[key][1] += 1
            self._fd = _HELD[key][0]
            return self
        previous = _read_holder(self.path)
        fd = self._open_locked() if fcntl is not None else \
            self._open_exclusive()
        if previous.get('pid') and previous.get('pid') != os.getpid():
            self.took_over = previous
        info = dict(pid=os.getpid(), host=socket.gethostname(),
                    started=time.strftime('%Y-%m-%d %H:%M:%S'))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd
        _HELD[key] = [fd, 1]
        atexit.register(self.release)
        return self

    def release(self) -> None:
        """Let go; the last holder in this process frees the lock."""
        if self._fd is None:
            return
        self._fd = None
        key = osp.realpath(self.work_dir)
        held = _HELD[key]
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[key]
        try:
            os.unlink(self.path)  # still holding the lock
        except OSError:
            pass
        os.close(held[0])
        try:
            atexit.unregister(self.release)
        except Exception:  # pragma: no cover
            pass

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def lock_work_dir(work_dir: str) -> Optional[WorkDirLock]:
    """Take the lock of ``work_dir`` on the first process of a distributed
    run (``None`` on the others) and clear what killed atomic writes left.
    """
    from mmengine.dist import get_rank

    from .resume import remove_interrupted_writes
    rank = os.environ.get('RANK', os.environ.get('SLURM_PROCID'))
    if (rank if rank is not None else str(get_rank())) != '0':
        return None
    lock = WorkDirLock(osp.abspath(work_dir)).acquire()
    if lock.took_over:
        print(f'[iformer_mm] took over the lock of {work_dir} left by '
              f"PID {lock.took_over.get('pid')}, which is gone", flush=True)
    for path in remove_interrupted_writes(work_dir):
        print(f'[iformer_mm] removed {path} (an interrupted checkpoint '
              f'write)', flush=True)
    return lock
