"""Checkpoint loading that stays ``weights_only=True`` under torch >= 2.6.

torch 2.6 made ``torch.load`` default to ``weights_only=True``. mmengine
0.10.7 calls ``torch.load`` without that argument, so under torch 2.6+ its
Runner cannot read back the checkpoints it wrote itself: besides tensors they
carry the ``MessageHub`` state, whose ``HistoryBuffer`` objects hold numpy
arrays and a table of statistics methods. The usual workaround
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` or ``weights_only=False``) turns every
checkpoint into arbitrary code execution.

This module instead:

* allow-lists exactly the globals that mmengine Runner checkpoints contain
  (:data:`RUNNER_CHECKPOINT_GLOBALS`, found by saving real Runner
  checkpoints and asking :func:`torch.serialization.get_unsafe_globals_in_checkpoint`
  what was missing). ``builtins.getattr`` is among them, because the
  statistics table pickles as ``getattr(HistoryBuffer, 'min')``; it is
  registered as a narrowed getattr that only resolves HistoryBuffer's own
  statistics methods, never a general ``getattr``;
* re-registers mmengine's local-file and http(s) checkpoint loaders so they
  pass ``weights_only=True`` explicitly (which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
  cannot override) and turn a refusal into :class:`UnsafeCheckpointError`,
  naming the offending globals; nothing from a refused file is executed and
  there is no fallback to an unrestricted unpickle;
* offers :func:`safe_load` and :func:`allow_globals` for files that need more
  types in a limited scope, e.g. the authors' release checkpoints
  (:data:`RELEASE_CHECKPOINT_GLOBALS`).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import os.path as osp
import pickle
import re
from typing import Any, Callable, Iterable, Iterator, List, Optional, \
    Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import CheckpointError

__all__ = [
    'UnsafeCheckpointError', 'CheckpointNotFoundError',
    'check_checkpoint_path',
    'RUNNER_CHECKPOINT_GLOBALS', 'diagnose_checkpoint_file',
    'RELEASE_CHECKPOINT_GLOBALS', 'safe_load', 'allow_globals',
    'patch_mmengine_checkpoint_loaders', 'torch_defaults_to_weights_only'
]

SafeGlobal = Union[Callable, Tuple[Callable, str]]


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint references globals outside the allow-list.

    Raised instead of unpickling it: nothing from the file has run. A
    :class:`~iformer_mm.errors.CheckpointError` (the tools print it in one
    line, exit 2) and a ``pickle.UnpicklingError``.
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (or is not a file)."""


def torch_defaults_to_weights_only() -> bool:
    """Whether this torch's ``torch.load`` defaults to ``weights_only=True``
    (torch >= 2.6) and has the allow-list API this module relies on."""
    if not hasattr(torch.serialization, 'add_safe_globals') or \
            not hasattr(torch.serialization, 'safe_globals'):
        return False
    major, minor = (int(p) for p in torch.__version__.split('.')[:2])
    return (major, minor) >= (2, 6)


# --------------------------------------------------------------------------
# numpy names. numpy 2 pickles ``numpy._core.multiarray.*``; checkpoints
# written under numpy 1.x say ``numpy.core.multiarray.*``. Both spellings
# resolve to the same (safe) numpy functions.
# --------------------------------------------------------------------------
def _numpy_multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _both_spellings(fn: Callable, name: str) -> List[SafeGlobal]:
    return [(fn, f'numpy._core.multiarray.{name}'),
            (fn, f'numpy.core.multiarray.{name}')]


_multiarray = _numpy_multiarray()
NUMPY_ARRAY_GLOBALS: List[SafeGlobal] = [
    *_both_spellings(_multiarray._reconstruct, '_reconstruct'),
    np.ndarray,
    np.dtype,
]
NUMPY_SCALAR_GLOBALS: List[SafeGlobal] = [
    *_both_spellings(_multiarray.scalar, 'scalar'),
    np.dtype,
]
# Unpickling a dtype ends in BUILD on an instance of its DType class, so the
# classes of the dtypes that occur must be allowed too: HistoryBuffer keeps
# float64/int64 arrays; metric values are float64/float32/int64/int32/bool.
NUMPY_RUNNER_DTYPES: List[type] = [
    type(np.dtype(t))
    for t in ('float64', 'float32', 'int64', 'int32', 'bool')
]


# HistoryBuffer fills its class-level table lazily (on first instance), so
# the defaults are listed here for a process that has not made one yet.
_DEFAULT_STATISTICS = frozenset({'min', 'max', 'current', 'mean'})


def _history_buffer_getattr() -> Tuple[Callable, str]:
    """``getattr`` narrowed to ``HistoryBuffer``'s statistics methods.

    ``HistoryBuffer.__getstate__`` stores its ``_statistics_methods`` table,
    which pickles as ``builtins.getattr(HistoryBuffer, 'min')`` and so on.
    Registering the real ``getattr`` would let a checkpoint fetch any
    attribute of any allow-listed object; this one resolves only the
    statistics methods registered on HistoryBuffer.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    def history_buffer_getattr(obj: Any, name: str) -> Any:
        allowed = _DEFAULT_STATISTICS | set(HistoryBuffer._statistics_methods)
        if obj is HistoryBuffer and isinstance(name, str) and \
                name in allowed and not name.startswith('_'):
            return getattr(obj, name)
        raise UnsafeCheckpointError(
            f'checkpoint asked for getattr({obj!r}, {name!r}); only '
            'HistoryBuffer statistics methods may be resolved')

    return (history_buffer_getattr, 'builtins.getattr')


def _runner_checkpoint_globals() -> List[SafeGlobal]:
    from mmengine.logging.history_buffer import HistoryBuffer
    return [
        # MessageHub state: log_scalars are HistoryBuffers ...
        HistoryBuffer,
        _history_buffer_getattr(),
        # ... holding numpy arrays (_log_history, _count_history)
        *NUMPY_ARRAY_GLOBALS,
        # runtime_info / best_score: metrics come back as numpy scalars
        # (e.g. mmseg's IoUMetric) and CheckpointHook(save_best=...) keeps
        # them in the message hub.
        *NUMPY_SCALAR_GLOBALS,
        *NUMPY_RUNNER_DTYPES,
    ]


#: What a checkpoint written by mmengine's Runner (``epoch_*.pth``,
#: ``iter_*.pth``, ``best_*.pth``) contains beyond torch's own defaults.
#: Added to torch's global allow-list on ``import iformer_mm``.
RUNNER_CHECKPOINT_GLOBALS: List[SafeGlobal] = _runner_checkpoint_globals()


def _numpy_dtype_classes() -> List[type]:
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is None:  # pragma: no cover - numpy < 1.25
        return []
    names = ['Float16DType', 'Float32DType', 'Float64DType', 'Int8DType',
             'Int16DType', 'Int32DType', 'Int64DType', 'UInt8DType',
             'UInt16DType', 'UInt32DType', 'UInt64DType', 'BoolDType']
    return [getattr(dtypes, n) for n in names if hasattr(dtypes, n)] or \
        NUMPY_RUNNER_DTYPES


#: Extra globals for the iFormer authors' release checkpoints (training
#: scripts saved ``args`` as an ``argparse.Namespace`` and metrics as numpy
#: scalars). Use them in a scope only: ``safe_load(path,
#: extra_safe_globals=RELEASE_CHECKPOINT_GLOBALS)`` or ``with
#: allow_globals(RELEASE_CHECKPOINT_GLOBALS): ...``. Not added globally.
RELEASE_CHECKPOINT_GLOBALS: List[SafeGlobal] = [
    argparse.Namespace,
    *NUMPY_SCALAR_GLOBALS,
    *NUMPY_ARRAY_GLOBALS,
    *_numpy_dtype_classes(),
]


@contextlib.contextmanager
def allow_globals(extra: Iterable[SafeGlobal] = ()) -> Iterator[None]:
    """Allow ``extra`` globals for ``weights_only`` loads inside the block.

    Unlike ``torch.serialization.safe_globals``, which on exit removes every
    global it was given -- including ones that were allowed before, e.g.
    ``numpy.dtype`` from :data:`RUNNER_CHECKPOINT_GLOBALS` -- this adds only
    what is missing and on exit removes only what it added.
    """
    if not hasattr(torch.serialization, 'add_safe_globals'):
        yield
        return
    before = torch.serialization.get_safe_globals()
    added = [g for g in dict.fromkeys(extra) if g not in before]
    if added:
        torch.serialization.add_safe_globals(added)
    try:
        yield
    finally:
        if added:
            keep = [g for g in torch.serialization.get_safe_globals()
                    if g not in added]
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(keep)


def _unsafe_globals(source: Any) -> List[str]:
    """Statically list the globals ``source`` needs that are not allowed.

    Never unpickles anything. Returns [] when it cannot tell.
    """
    fn = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)
    if fn is None:
        return []
    try:
        if hasattr(source, 'seek'):
            source.seek(0)
        return list(fn(source))
    except Exception:  # noqa: BLE001 - only used to improve a message
        return []


def _unpickler_reason(err: BaseException) -> str:
    """The specific line of torch's long weights_only error message."""
    lines = [ln.strip() for ln in str(err).splitlines()]
    for i, line in enumerate(lines):
        if 'WeightsUnpickler error' in line:
            rest = line.split('WeightsUnpickler error:', 1)[-1].strip()
            following = [ln for ln in lines[i + 1:] if ln]
            return rest or (following[0] if following else line)
    for line in lines:  # torch >= 2.7 words a blocked module without it
        if re.search(r'(?i)unsupported global', line):
            return line
    return lines[0] if lines else repr(err)


def _refusal(name: str, err: BaseException,
             unsafe: Sequence[str]) -> UnsafeCheckpointError:
    """``unsafe``: the globals torch's scan of the file found (may be
    empty: then the unpickler's own reason is quoted)."""
    if unsafe:
        what = 'it references ' + ', '.join(unsafe)
    else:
        what = _unpickler_reason(err)
    return UnsafeCheckpointError(
        f'Refused to load checkpoint {name}: {what}, which is '
        'not among the types an mmengine Runner checkpoint contains. It was '
        'read with weights_only=True and nothing from it was executed. If '
        'you trust this file and these types are plain data, load it with '
        'iformer_mm.compat.safe_load(path, extra_safe_globals=[...]) naming '
        'exactly those types, or re-save its tensors with torch.save('
        'state_dict) where you trust it; do not set '
        'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.')


# --------------------------------------------------------------------------
# Files that are not (complete) checkpoints
# --------------------------------------------------------------------------
_ZIP_MAGIC = b'PK\x03\x04'
_EMPTY_ZIP_MAGIC = b'PK\x05\x06'
# torch.save(..., _use_new_zipfile_serialization=False) starts with
# pickle.dumps(MAGIC_NUMBER, protocol=2): PROTO 2, LONG1 of 10 bytes.
_LEGACY_MAGIC = b'\x80\x02\x8a\x0a' + \
    (0x1950a86a20f9469cfc6c).to_bytes(10, 'little')


def _read_head(source: Any, n: int = 512) -> Tuple[bytes, int]:
    """The first ``n`` bytes of a path or a seekable file, and its size."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, 'rb') as f:
            head = f.read(n)
        return head, osp.getsize(source)
    pos = source.tell()
    try:
        source.seek(0)
        head = source.read(n)
        source.seek(0, io.SEEK_END)
        size = source.tell()
    finally:
        source.seek(pos)
    return head, size


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        # a multi-byte character cut at the end of the sample
        try:
            text = head[:-3].decode('utf-8')
        except UnicodeDecodeError:
            return False
    printable = sum(c.isprintable() or c in '\n\r\t' for c in text)
    return bool(text) and printable >= 0.95 * len(text)


def _zip_problem(source: Any) -> Optional[str]:
    """What is wrong with a zip checkpoint (``torch.save``'s format), or
    None when its structure is intact."""
    import zipfile
    # zipfile finds the archive from its end: the position does not matter
    pos = None if isinstance(source, (str, os.PathLike)) else source.tell()
    try:
        with zipfile.ZipFile(source) as zf:
            names = zf.namelist()
            if not any(n.endswith('data.pkl') for n in names):
                return 'not a checkpoint: a zip archive without the ' \
                    'data.pkl that torch.save writes'
            bad = zf.testzip()  # reads every member, checks its CRC
            if bad is not None:
                return f'damaged: member {bad} of its zip archive fails ' \
                    'its checksum'
    except zipfile.BadZipFile:
        return 'truncated: its zip archive has no end (central directory)'
    except (EOFError, OSError, ValueError) as e:
        return f'truncated: reading its zip archive stopped early ({e})'
    finally:
        if pos is not None:
            source.seek(pos)
    return None


def diagnose_checkpoint_file(source: Any) -> Optional[str]:
    """Why ``source`` (a path or a seekable binary file) is not a readable
    checkpoint, judged from its bytes alone; None when it looks intact.

    Nothing is unpickled. Recognises an empty file, a text file (an HTML
    error page, a Git LFS pointer ...), a truncated or damaged zip archive
    (``torch.save``'s format), and bytes that are neither a zip archive nor
    a pickle.
    """
    head, size = _read_head(source)
    if size == 0:
        return 'not a checkpoint: the file is empty (0 bytes)'
    if head.startswith(_ZIP_MAGIC) or head.startswith(_EMPTY_ZIP_MAGIC):
        return _zip_problem(source)
    if head.startswith(b'version https://git-lfs'):
        return 'not a checkpoint: a Git LFS pointer (text); fetch the real ' \
            'file with git lfs pull'
    if _looks_like_text(head):
        first = head.decode('utf-8', 'replace').strip().splitlines()
        first = first[0][:40] if first else ''
        kind = 'an HTML page' if first.lower().startswith(
            ('<!doctype html', '<html')) else 'a text file'
        return f'not a checkpoint: {kind} ({size} bytes, starting ' \
            f'{first!r})'
    if head[:1] != b'\x80':  # every pickle protocol >= 2 starts so
        return f'not a checkpoint: {size} bytes that are neither the zip ' \
            'archive torch.save writes nor a pickle'
    if not head.startswith(_LEGACY_MAGIC):
        return 'not a checkpoint: a pickle stream that torch.save did not ' \
            'write (torch.save writes a zip archive, or before torch 1.6 a ' \
            'pickle starting with its magic number)'
    return None


def _not_a_checkpoint(source: Any, name: str,
                      err: BaseException) -> Optional[CheckpointError]:
    """A :class:`CheckpointError` saying what the file is, or None when its
    bytes look like an intact checkpoint (then ``err`` is something else)."""
    try:
        problem = diagnose_checkpoint_file(source)
    except OSError:
        return None
    if problem is None and isinstance(err, EOFError):
        problem = 'truncated: the data ends before the pickle does'
    if problem is None and isinstance(err, pickle.UnpicklingError):
        problem = 'damaged: its pickle data cannot be parsed (' + \
            _unpickler_reason(err) + ')'
    if problem is None:
        return None
    if problem.startswith('truncated') or problem.startswith('damaged'):
        todo = 'The download or save was interrupted or the copy is ' \
            'damaged: download or save it again.'
    else:
        todo = 'Check the path: checkpoints are the .pth files written by ' \
            'torch.save (e.g. by training).'
    return CheckpointError(f'Checkpoint {name} is {problem}. {todo}')


def check_checkpoint_path(path: Union[str, os.PathLike]) -> str:
    """``path`` with ``~`` expanded if it names a file.

    Raises:
        CheckpointNotFoundError: it does not exist or is a directory.
    """
    path = osp.expanduser(os.fspath(path))
    if not osp.isfile(path):
        what = 'is a directory' if osp.isdir(path) else 'does not exist'
        raise CheckpointNotFoundError(
            f'Checkpoint {path!r} {what}; pass the path of a checkpoint '
            'file (.pth).')
    return path


def safe_load(f: Any, map_location: Any = 'cpu',
              extra_safe_globals: Iterable[SafeGlobal] = (),
              **kwargs) -> Any:
    """``torch.load(f, weights_only=True)`` with ``extra_safe_globals``
    allowed in this call only.

    Args:
        f: Path or file-like object written by ``torch.save``.
        map_location: As for :func:`torch.load`. Defaults to ``'cpu'``.
        extra_safe_globals: Classes/functions (or ``(obj, 'module.name')``
            pairs) allowed in this call in addition to torch's defaults and
            :data:`RUNNER_CHECKPOINT_GLOBALS` (always allowed here), e.g.
            :data:`RELEASE_CHECKPOINT_GLOBALS`.
        **kwargs: Passed to :func:`torch.load` (``weights_only`` may not be
            turned off).

    Raises:
        CheckpointNotFoundError: The path does not exist.
        CheckpointError: The file is empty, text, truncated, damaged or
            otherwise not a checkpoint (the message says which).
        UnsafeCheckpointError: The file references other globals (named in
            the message). Nothing in it was executed.
    """
    if kwargs.pop('weights_only', True) is not True:
        raise ValueError('safe_load always loads with weights_only=True')
    # the Runner allow-list is in scope even if other code has removed it
    # from torch's global list (torch.serialization.safe_globals does that
    # on exit to everything it was given)
    extra = [*RUNNER_CHECKPOINT_GLOBALS, *extra_safe_globals]
    if isinstance(f, (str, os.PathLike)):
        f = check_checkpoint_path(f)
        name = repr(f)
    else:
        name = repr(getattr(f, 'name', f))
    try:
        with allow_globals(extra):
            return torch.load(f, map_location=map_location,
                              weights_only=True, **kwargs)
    except UnsafeCheckpointError:
        raise
    except pickle.UnpicklingError as err:
        # A refused global, or bytes that are no pickle at all (torch's
        # weights-only unpickler reports both as UnpicklingError).
        with allow_globals(extra):
            unsafe = _unsafe_globals(f)
        if unsafe or re.search(r'(?i)unsupported global|getattr\(',
                               str(err)):
            raise _refusal(name, err, unsafe) from err
        corrupt = _not_a_checkpoint(f, name, err)
        if corrupt is not None:
            raise corrupt from err
        raise _refusal(name, err, unsafe) from err
    except (EOFError, OSError, RuntimeError, KeyError, IndexError,
            ValueError, TypeError, AttributeError) as err:
        corrupt = _not_a_checkpoint(f, name, err)
        if corrupt is not None:
            raise corrupt from err
        raise


# --------------------------------------------------------------------------
# mmengine integration
# --------------------------------------------------------------------------
def load_from_local(filename, map_location=None):
    """mmengine's local checkpoint loader, with ``weights_only=True``."""
    return safe_load(filename, map_location=map_location)


def load_from_http(filename, map_location=None, model_dir=None,
                   progress=None):
    """mmengine's http(s) checkpoint loader, with ``weights_only=True``.

    Downloads like mmengine (local rank 0 first in distributed runs) into
    torch hub's cache, then loads the file through :func:`safe_load`.
    """
    from mmengine.dist import get_dist_info
    from torch.hub import download_url_to_file, get_dir
    from urllib.parse import urlparse

    if progress is None:
        progress = os.isatty(0)
    model_dir = model_dir or osp.join(get_dir(), 'checkpoints')
    cached = osp.join(model_dir, osp.basename(urlparse(filename).path))

    def fetch():
        if not osp.exists(cached):
            os.makedirs(model_dir, exist_ok=True)
            download_url_to_file(filename, cached, progress=progress)

    rank, world_size = get_dist_info()
    if rank == 0:
        fetch()
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            fetch()
    return safe_load(cached, map_location=map_location)


_PATCHED = False


def patch_mmengine_checkpoint_loaders() -> bool:
    """Register the allow-list and mmengine's weights_only loaders.

    Idempotent. A no-op (returns False) on torch < 2.6, where ``torch.load``
    has no default allow-list to extend.
    """
    global _PATCHED
    if _PATCHED:
        return True
    if not torch_defaults_to_weights_only():
        return False
    torch.serialization.add_safe_globals(list(RUNNER_CHECKPOINT_GLOBALS))
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), loader=load_from_http, force=True)
    _PATCHED = True
    return True
