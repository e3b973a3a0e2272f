"""Which checkpoint ``--resume`` continues from.

mmengine resumes from the file named in ``<work_dir>/last_checkpoint`` and
crashes if that file is truncated (a kill during a non-atomic save, a full
disk, an interrupted copy). :func:`find_resume_checkpoint` instead takes
the newest *intact* checkpoint of the work dir and says which newer ones it
skipped and why; :func:`check_resume_checkpoint` checks an explicit
``--resume PATH``. :class:`~iformer_mm.engine.runner.IFormerRunner` calls
both.
"""
from __future__ import annotations

import os
import os.path as osp
import re
from typing import List, Optional, Tuple

from ..errors import CheckpointError

#: checkpoints CheckpointHook writes (not best_*, not published *-<sha>.pth)
_CKPT_NAME = re.compile(r'^(epoch|iter)_\d+\.pth$')
#: temporary files of an atomic write that a kill interrupted
_TEMP_NAME = re.compile(r'^\.((epoch|iter)_\d+\.pth|best_.+\.pth|'
                        r'last_checkpoint)\.[A-Za-z0-9_]+\.tmp$')


def checkpoint_problem(path: str) -> Optional[str]:
    """``None`` if ``path`` is a complete checkpoint file, else why not
    (judged from its bytes: see
    :func:`iformer_mm.compat.checkpoint.diagnose_checkpoint_file`)."""
    from ..compat.checkpoint import diagnose_checkpoint_file
    if not osp.exists(path):
        return 'it does not exist'
    if not osp.isfile(path):
        return 'it is not a file'
    return diagnose_checkpoint_file(path)


def _candidates(work_dir: str) -> List[str]:
    """Checkpoints of ``work_dir``, newest first (``last_checkpoint``'s
    target first among equally new ones)."""
    found = {}
    last = osp.join(work_dir, 'last_checkpoint')
    named = None
    if osp.isfile(last):
        with open(last) as f:
            named = f.read().strip() or None
    for name in os.listdir(work_dir):
        path = osp.join(work_dir, name)
        if _CKPT_NAME.match(name) and osp.isfile(path):
            found[osp.abspath(path)] = path
    if named is not None:
        found.setdefault(osp.abspath(named), named)

    def key(path):
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            mtime = -1
        return (mtime, path == named)

    return sorted(found.values(), key=key, reverse=True)


def find_resume_checkpoint(work_dir: str) -> Tuple[Optional[str], List[str]]:
    """The newest intact checkpoint in ``work_dir`` (``None`` if there is
    none) and one message per newer checkpoint that was skipped.

    Raises:
        CheckpointError: there are checkpoints, but none is intact.
    """
    if not osp.isdir(work_dir):
        return None, []
    skipped = []
    candidates = _candidates(work_dir)
    for path in candidates:
        why = checkpoint_problem(path)
        if why is None:
            return path, skipped
        skipped.append(f'skipping checkpoint {path}: {why}')
    if candidates:
        raise CheckpointError(
            f'--resume: no intact checkpoint in {work_dir} '
            f'({"; ".join(s[len("skipping checkpoint "):] for s in skipped)}'
            f'); move them away to start from scratch, or pass --resume '
            f'PATH.')
    return None, []


def check_resume_checkpoint(path: str) -> None:
    """Raise :class:`CheckpointError` unless ``path`` can be resumed from."""
    if '://' in path:
        return  # remote: mmengine downloads and checks it
    why = checkpoint_problem(path)
    if why is not None:
        raise CheckpointError(
            f'--resume {path}: cannot resume from it, {why}; pass another '
            f'checkpoint, or --resume without a path to take the newest '
            f'intact one of the work dir.')


def remove_interrupted_writes(work_dir: str) -> List[str]:
    """Delete the temporary files of atomic checkpoint writes that a kill
    interrupted (``.epoch_3.pth.<random>.tmp``); only call it while holding
    the work-dir lock. Returns the removed paths."""
    removed = []
    if not osp.isdir(work_dir):
        return removed
    for name in os.listdir(work_dir):
        if _TEMP_NAME.match(name):
            path = osp.join(work_dir, name)
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    return removed
