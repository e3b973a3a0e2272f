"""Which checkpoint ``--resume`` continues from.

mmengine resumes from the file named in ``<work_dir>/last_checkpoint`` and
crashes if that file is truncated (a kill during a non-atomic save, a full
disk, an interrupted copy). :func:`find_resume_checkpoint` instead takes
the newest *intact* checkpoint of the work dir and says which newer ones it
skipped and why; :func:`check_resume_checkpoint` checks an explicit
``--resume PATH``.
"""
from __future__ import annotations

import os
import os.path as osp
import re
import zipfile
from typing import List, Optional, Tuple

from ..errors import CheckpointError

#: checkpoints CheckpointHook writes (not best_*, not published *-<sha>.pth)
_CKPT_NAME = re.compile(r'^(epoch|iter)_\d+\.pth$')
#: temporary files of an atomic write that a kill interrupted
_TEMP_NAME = re.compile(r'^\.((epoch|iter)_\d+\.pth|best_.+\.pth|'
                        r'last_checkpoint)\.[A-Za-z0-9_]+\.tmp$')


def checkpoint_problem(path: str) -> Optional[str]:
    """``None`` if ``path`` is a complete checkpoint file, else why not.

    A torch checkpoint is a zip archive: a truncated one has lost the
    directory at its end, and a damaged one fails its CRC check. (Files in
    torch's legacy non-zip format are not checked here.)
    """
    if not osp.exists(path):
        return 'it does not exist'
    if not osp.isfile(path):
        return 'it is not a file'
    size = osp.getsize(path)
    if size == 0:
        return 'it is empty (0 bytes)'
    with open(path, 'rb') as f:
        head = f.read(4)
    if head[:1] == b'\x80':  # a pickle's PROTO opcode
        return None  # legacy torch.save format, no directory to check
    if head != b'PK\x03\x04':
        return 'it is not a checkpoint (not a torch zip archive)'
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(n.endswith('/data.pkl') for n in names):
                return 'it is not a checkpoint (no data.pkl in the archive)'
            bad = archive.testzip()
    except zipfile.BadZipFile:
        return f'it is truncated ({size} bytes, the archive has no end)'
    except (OSError, EOFError, ValueError) as e:
        return f'it is truncated or damaged ({e})'
    if bad is not None:
        return f'it is damaged (CRC error in {bad})'
    return None


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


def resolve_resume(work_dir: str, resume: Optional[str]) -> Optional[str]:
    """The checkpoint a training with ``--resume [resume]`` continues from.

    ``resume``: ``None`` (no resume: returns ``None``), ``'auto'`` (the
    newest intact checkpoint of ``work_dir``; prints which newer ones were
    skipped, or one line saying there is nothing to resume) or a path
    (checked). Raises :class:`CheckpointError` for a path that cannot be
    resumed from.
    """
    if resume is None:
        return None
    if resume != 'auto':
        check_resume_checkpoint(resume)
        return resume
    path, skipped = find_resume_checkpoint(work_dir)
    for line in skipped:
        print(f'[iformer_mm] --resume: {line}', flush=True)
    if path is None:
        print(f'[iformer_mm] --resume: no checkpoint in {work_dir} to resume '
              f'from; starting from scratch.', flush=True)
    elif skipped:
        print(f'[iformer_mm] --resume: resuming from {path}, the newest '
              f'intact checkpoint.', flush=True)
    return path


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
