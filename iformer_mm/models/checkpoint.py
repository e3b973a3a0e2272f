"""Checkpoints: reading them safely, every key layout, strict loading.

The one place for checkpoints in iformer_mm:

* **Reading.** :func:`safe_load` is ``torch.load(weights_only=True)`` with
  exact allow-lists: :data:`RUNNER_CHECKPOINT_GLOBALS` (what an mmengine
  Runner checkpoint holds besides tensors) and, in a scope only,
  :data:`RELEASE_CHECKPOINT_GLOBALS` (the iFormer authors' release files).
  A file that asks for anything else is refused
  (:class:`UnsafeCheckpointError`) and nothing in it runs; a file that is
  not a checkpoint, or is truncated or damaged, raises
  :class:`~iformer_mm.errors.CheckpointError` saying which
  (:func:`diagnose_checkpoint_file`, from its bytes alone).
  :func:`download_checkpoint` fetches ``http(s)://`` files into torch hub's
  cache, as mmengine does. :mod:`iformer_mm.compat.checkpoint` makes
  mmengine's own loaders use all this on ``import iformer_mm``.
* **Layouts.** The same weights come in several key layouts:

  * ours (= timm's ``iformer_*`` names): ``stem.conv1.c.weight``,
    ``stages.2.downsample.bn.weight``,
    ``stages.2.blocks.9.mixer.module.q.c.weight``, classifier
    ``head.head.l.weight`` / ``head.head_dist.l.weight``;
  * the authors' names (their ImageNet release ``iFormer_<arch>.pth`` and
    the backbone of their mmdet / mmseg code): ``downsample_layers.0.*``
    for the stem, ``downsample_layers.i.0.*`` for the stage-i downsample,
    ``stages.i.j.block.<token_channel_mixer|channel_mixer|...>.m.*`` for
    the blocks, ``classifier.classifier[_dist].*`` for the head;
  * wrappers: the release keeps the weights in ``model`` (and, when
    trained with EMA, ``model_ema``) next to training metadata; OpenMMLab
    Runner checkpoints keep a whole model in ``state_dict``
    (``backbone.*``, ``neck.*``, ``rpn_head.*`` ...); DDP adds ``module.``.

  :func:`split_checkpoint` takes any of them apart into backbone weights
  (our names), classifier weights and the rest of a whole model.
* **Loading.** Two loaders sit on top, both strict by default, both
  returning a :class:`LoadReport`:

  * :func:`load_iformer_checkpoint` loads the backbone part into an
    :class:`~iformer_mm.models.backbones.IFormer` (its
    ``init_cfg=dict(type='Pretrained', ...)``);
  * :func:`load_model_checkpoint` loads a whole model (a detector,
    segmentor or classifier): ``tools/test.py``, ``tools/demo.py``,
    ``tools/benchmark.py`` and ``load_from`` in training all go through it.

  A file that does not fit raises
  :class:`~iformer_mm.errors.CheckpointMismatchError` naming the missing and
  unexpected keys and the tensors of the wrong shape (with both shapes).

This module does not import the network: the network imports it (to load
its ``init_cfg`` checkpoint). It recognises an IFormer by its class name and
its table of archs (``arch_zoo``), and builds the per-arch shapes from the
class it finds.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import os.path as osp
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, \
    Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..errors import CheckpointError, CheckpointMismatchError

StateDict = Dict[str, torch.Tensor]
SafeGlobal = Union[Callable, Tuple[Callable, str]]


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint references globals outside the allow-list.

    Raised instead of unpickling it: nothing from the file has run. A
    :class:`~iformer_mm.errors.CheckpointError` (the tools print it in one
    line, exit 2) and a ``pickle.UnpicklingError``.
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (or is not a file)."""


# --------------------------------------------------------------------------
# The allow-lists. torch >= 2.6 loads with weights_only=True; the globals
# below are what Runner checkpoints and the release files need beyond
# torch's defaults, found by saving real ones and asking
# torch.serialization.get_unsafe_globals_in_checkpoint what was missing.
#
# numpy names: numpy 2 pickles ``numpy._core.multiarray.*``; checkpoints
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
# Files by URL
# --------------------------------------------------------------------------
def download_checkpoint(url: str, model_dir: Optional[str] = None,
                        progress: Optional[bool] = None) -> str:
    """The local copy of ``url``, downloaded unless it is there already.

    Like mmengine's http(s) loader: the file is cached as
    ``<torch hub dir>/checkpoints/<file name of the URL's path>`` (or in
    ``model_dir``); in a distributed run rank 0 downloads first while the
    others wait at a barrier, then use its file (fetching it themselves only
    where it is still absent, e.g. on another machine's disk). A progress
    bar is shown only where stdin is a terminal, unless ``progress`` says.

    Raises:
        CheckpointError: the download failed (one line, with what to do).
    """
    from urllib.parse import urlparse

    from mmengine import dist
    if progress is None:
        progress = os.isatty(0)
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    name = osp.basename(urlparse(url).path)
    cached = osp.join(model_dir, name)

    def fetch():
        if osp.exists(cached):
            return
        os.makedirs(model_dir, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, cached, progress=progress)
        except Exception as e:  # no network, 404 ...
            raise CheckpointError(
                f'Could not download {url} ({e}). Download it by hand and '
                'pass the local path, e.g. --cfg-options '
                f'model.backbone.init_cfg.checkpoint=/path/{name}') from e

    rank, world_size = dist.get_dist_info()
    if rank == 0:
        fetch()
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            fetch()
    return cached


def load_checkpoint_file(filename: str, map_location='cpu') -> dict:
    """Read a local file or an ``http(s)://`` URL (see
    :func:`download_checkpoint`) with :func:`safe_torch_load`.

    Raises:
        CheckpointError: the file is missing, not a checkpoint, truncated,
            unsafe (names the offending global), or the download failed.
    """
    filename = str(filename)
    if re.match(r'^https?://', filename):
        filename = download_checkpoint(filename)
    return safe_torch_load(filename, map_location)


def safe_torch_load(path: str, map_location='cpu'):
    """:func:`safe_load` with the release types
    (:data:`RELEASE_CHECKPOINT_GLOBALS`) allowed: what every loader here
    reads files with."""
    return safe_load(path, map_location=map_location,
                     extra_safe_globals=RELEASE_CHECKPOINT_GLOBALS)


# --------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------
# (pattern, replacement) applied in order to backbone keys in the authors'
# names, *after* any wrapper prefix (``backbone.``, ``module.``) is removed.
RELEASE_RENAMES: List[Tuple[str, str]] = [
    (r'^downsample_layers\.0\.0\.', 'stem.conv1.'),
    (r'^downsample_layers\.0\.2\.conv_exp_bn1\.', 'stem.conv2.'),
    (r'^downsample_layers\.0\.2\.conv_pwl_bn2\.', 'stem.conv3.'),
    (r'^downsample_layers\.(\d+)\.0\.', r'stages.\1.downsample.'),
    (r'^stages\.(\d+)\.(\d+)\.block\.', r'stages.\1.blocks.\2.'),
    (r'\.token_channel_mixer\.', '.mixer.'),
    (r'\.channel_mixer\.', '.mixer.'),
    (r'\.token_mixer\.', '.mixer.'),
    (r'\.m\.', '.module.'),
]

# Classifier keys -> the names inside IFormerClsHead (``head.*``,
# ``head_dist.*``), from the authors' names and from timm's / ours.
CLASSIFIER_RENAMES: List[Tuple[str, str]] = [
    (r'^classifier\.classifier_dist\.', 'head_dist.'),
    (r'^classifier\.classifier\.', 'head.'),
    (r'^classifier\.', 'head.'),
    (r'^head\.head_dist\.', 'head_dist.'),
    (r'^head\.head\.', 'head.'),
]

_AUTHORS_BACKBONE = re.compile(r'^(downsample_layers\.|stages\.\d+\.\d+\.)')
_OUR_BACKBONE = re.compile(r'^(stem\.|stages\.\d+\.(blocks|downsample)\.)')
_CLASSIFIER = re.compile(r'^(classifier\.|head\.)')
#: wrapper keys that hold the weights, in the order they are preferred
STATE_KEYS = ('state_dict', 'model', 'model_ema')


def _is_state_dict(d) -> bool:
    return isinstance(d, dict) and bool(d) and all(
        isinstance(v, torch.Tensor) for v in d.values())


def _unwrap(ckpt, key: Optional[str] = None
            ) -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    """The weights in ``ckpt`` and the wrapper key they were found under."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f'The checkpoint holds a {type(ckpt).__name__}, not a dict of '
            'weights; save model.state_dict() (or a dict holding it under '
            "'state_dict' / 'model').")
    if key is not None:
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(
                f'The checkpoint has no {key!r} entry; it has '
                f'{sorted(map(str, ckpt))[:8]}.')
        return _tensors_only(ckpt[key], key), key
    if _is_state_dict(ckpt):
        return ckpt, None
    for name in STATE_KEYS:
        if isinstance(ckpt.get(name), dict):
            return _tensors_only(ckpt[name], name), name
    tensors = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if tensors:
        return tensors, None
    raise CheckpointError(
        'The checkpoint holds no weights: no tensors and none of the '
        f"entries {STATE_KEYS}; its top-level keys are "
        f'{sorted(map(str, ckpt))[:8]}.')


def _tensors_only(d: dict, where: str) -> StateDict:
    out = {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}
    if not out:
        raise CheckpointError(f'The checkpoint\'s {where!r} entry holds no '
                              'tensors.')
    return out


def unwrap_state_dict(ckpt, key: Optional[str] = None) -> StateDict:
    """Descend through ``state_dict`` / ``model`` / ``model_ema`` wrappers
    (in that order of preference, or ``key``) to the weights."""
    return _unwrap(ckpt, key)[0]


# --------------------------------------------------------------------------
# Taking a checkpoint apart
# --------------------------------------------------------------------------
def _rename(key: str, rules: Sequence[Tuple[str, str]]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _strip_module(state: StateDict) -> 'OrderedDict[str, torch.Tensor]':
    """Remove DDP's ``module.`` prefix (from every key that has it)."""
    return OrderedDict((k[len('module.'):] if k.startswith('module.') else k,
                        v) for k, v in state.items())


def _selected(ckpt, prefix: Optional[str], key: Optional[str]
              ) -> Tuple['OrderedDict[str, torch.Tensor]', Optional[str],
                         Optional[str]]:
    """The file's weights as they are named in it, out of their wrapper,
    without DDP's ``module.``, only those under ``prefix`` (removed).
    Returns them, the wrapper key and the prefix (ending in ``.``)."""
    state, wrapper = _unwrap(ckpt, key)
    state = _strip_module(state)
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state = OrderedDict((k[len(prefix):], v) for k, v in state.items()
                            if k.startswith(prefix))
    return state, wrapper, prefix


@dataclass
class ConvertedCheckpoint:
    """A checkpoint taken apart (see :func:`split_checkpoint`).

    Attributes:
        backbone: backbone weights, our names (``stem.*``, ``stages.*``).
        classifier: classifier weights, named as inside ``IFormerClsHead``
            (``head.*``, ``head_dist.*``).
        others: the rest of a whole model, keys as in the file
            (``neck.*``, ``rpn_head.*``, ``decode_head.*`` ...).
        names: ``'authors'`` or ``'ours'`` (timm's and this project's).
        whole_model: the file is a whole OpenMMLab model (``backbone.*``).
        wrapper: the entry the weights were in (``'state_dict'``,
            ``'model'``, ``'model_ema'``) or None.
        meta: the file's ``meta`` entry, if any.
    """
    backbone: 'OrderedDict[str, torch.Tensor]'
    classifier: 'OrderedDict[str, torch.Tensor]'
    others: 'OrderedDict[str, torch.Tensor]'
    names: str
    whole_model: bool
    wrapper: Optional[str] = None
    meta: dict = field(default_factory=dict)
    prefix: Optional[str] = None

    @property
    def layout(self) -> str:
        """A short description, e.g. ``"whole model, authors' names"``."""
        what = 'backbone + classifier' if self.classifier else 'backbone'
        if self.whole_model:
            what = 'whole model' if self.others else \
                f"{what}, keys under 'backbone.'"
        names = "authors' names" if self.names == 'authors' else \
            'timm/iformer_mm names'
        where = f", in {self.wrapper!r}" if self.wrapper else ''
        if self.prefix:
            where += f', keys under {self.prefix!r}'
        return f'{what}, {names}{where}'


def _names_of(keys: Sequence[str]) -> str:
    authors = any(_AUTHORS_BACKBONE.match(k) for k in keys)
    ours = any(_OUR_BACKBONE.match(k) for k in keys)
    if authors and ours:
        raise CheckpointError(
            "The checkpoint mixes the authors' backbone names "
            '(downsample_layers.*, stages.i.j.block.*) with ours (stem.*, '
            'stages.i.blocks.*); it was not written by either code.')
    return 'authors' if authors else 'ours'


def split_checkpoint(ckpt, prefix: Optional[str] = None,
                     key: Optional[str] = None) -> ConvertedCheckpoint:
    """Take a checkpoint of any supported layout apart.

    Args:
        ckpt: What ``torch.load`` returned (any wrapper), or a state dict.
        prefix: Use only the keys that start with it (after DDP's
            ``module.``), with it removed, as mmengine's ``Pretrained``
            init does: e.g. ``'backbone.'`` for the backbone of a whole
            model. Without it, a whole model's ``backbone.*`` keys are found
            automatically.
        key: The wrapper entry to read (e.g. ``'model_ema'``); by default
            ``state_dict``, then ``model``, then ``model_ema``.

    Raises:
        CheckpointError: no weights; no key starts with ``prefix``.
    """
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    state, wrapper, prefix = _selected(ckpt, prefix, key)
    if prefix and not state:
        state = _selected(ckpt, None, key)[0]
        tops = sorted({k.split('.', 1)[0] + '.' for k in state})
        raise CheckpointMismatchError(
            f'No key of the checkpoint starts with prefix {prefix!r}; '
            f'its keys start with {", ".join(tops[:8])}. Fix or drop '
            "init_cfg's prefix.", unexpected=list(state)[:50])
    whole = any(k.startswith('backbone.') for k in state)
    backbone, classifier, others = OrderedDict(), OrderedDict(), OrderedDict()
    for k, v in state.items():
        if whole:
            if k.startswith('backbone.'):
                backbone[k[len('backbone.'):]] = v
            elif k.startswith(('head.head.', 'head.head_dist.')):
                classifier[_rename(k, CLASSIFIER_RENAMES)] = v
            else:
                others[k] = v
        elif _CLASSIFIER.match(k):
            classifier[_rename(k, CLASSIFIER_RENAMES)] = v
        else:
            backbone[k] = v
    names = _names_of(list(backbone))
    if names == 'authors':
        backbone = OrderedDict((_rename(k, RELEASE_RENAMES), v)
                               for k, v in backbone.items())
    return ConvertedCheckpoint(backbone, classifier, others, names, whole,
                               wrapper, dict(meta), prefix or None)


def convert_to_ours(state_dict) -> 'OrderedDict':
    """Map a release / timm / OpenMMLab checkpoint onto our key names.

    Backbone keys come out bare (``stem.*``, ``stages.*``), classifier keys
    as ``head.head.*`` / ``head.head_dist.*``; other keys of a whole model
    (e.g. a detector's ``neck.*``) are kept as they are.
    """
    conv = split_checkpoint(state_dict)
    out = OrderedDict(conv.backbone)
    out.update(('head.' + k, v) for k, v in conv.classifier.items())
    out.update(conv.others)
    return out


def to_openmmlab(state_dict, with_head: bool = True) -> 'OrderedDict':
    """Any layout -> whole-model names: ``backbone.*``, the classifier as
    ``head.head.*`` (an mmpretrain ``ImageClassifier`` with
    ``IFormerClsHead``) if ``with_head``, other whole-model keys as they
    are."""
    conv = state_dict if isinstance(state_dict, ConvertedCheckpoint) \
        else split_checkpoint(state_dict)
    out = OrderedDict(('backbone.' + k, v) for k, v in conv.backbone.items())
    if with_head:
        out.update(('head.' + k, v) for k, v in conv.classifier.items())
    out.update(conv.others)
    return out


def network_class(module: nn.Module) -> Optional[type]:
    """The IFormer class ``module`` is an instance of (its own class or a
    base), or None.

    Recognised by its name and its table of archs (``arch_zoo``), not
    imported: the network imports this module to load its checkpoints.
    timm's ``IFormer`` has no ``arch_zoo``: it is not one.
    """
    for cls in type(module).__mro__:
        if cls.__name__ == 'IFormer' and \
                isinstance(vars(cls).get('arch_zoo'), dict):
            return cls
    return None


_ARCH_SHAPES: Dict[type, Dict[str, Dict[str, tuple]]] = {}


def arch_shapes(network: type) -> Dict[str, Dict[str, tuple]]:
    """Arch -> key -> shape for every arch of ``network`` (the IFormer
    class: ``network(arch)`` for each arch of ``network.arch_zoo``), built
    once on the meta device (no memory, no time)."""
    if network not in _ARCH_SHAPES:
        shapes = {}
        for arch in network.arch_zoo:
            with torch.device('meta'):
                net = network(arch)
            shapes[arch] = {k: tuple(v.shape)
                            for k, v in net.state_dict().items()}
        _ARCH_SHAPES[network] = shapes
    return _ARCH_SHAPES[network]


def guess_arch(backbone: StateDict, network: type) -> Optional[str]:
    """The arch of ``network`` (the IFormer class) whose keys and shapes
    ``backbone`` (our names) has exactly, or None."""
    have = {k: tuple(v.shape) for k, v in backbone.items()}
    for arch, want in arch_shapes(network).items():
        if have == want:
            return arch
    return None


# --------------------------------------------------------------------------
# Comparing and loading
# --------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What loading a checkpoint into a module did.

    ``loaded``: keys copied; ``missing``: module keys the file lacks (BN
    ``num_batches_tracked`` counters excepted); ``unexpected``: file keys
    the module lacks; ``mismatched``: ``(key, file shape, module shape)``;
    ``ignored``: file keys deliberately left out (a classifier or a
    detector's neck when only a backbone is loaded).
    """
    source: str
    layout: str
    target: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def counts(self) -> str:
        return (f'{len(self.loaded)} loaded, {len(self.missing)} missing, '
                f'{len(self.unexpected)} unexpected, '
                f'{len(self.mismatched)} of the wrong shape')

    def summary(self) -> str:
        """One line: source, layout, target and the counts."""
        line = f'{self.source} ({self.layout}) -> {self.target}: ' + \
            self.counts()
        if self.ignored:
            line += (f'; {len(self.ignored)} ignored '
                     f'({key_prefixes(self.ignored)})')
        return line

    def details(self, limit: int = 8) -> str:
        """The mismatched keys by name (at most ``limit`` of each kind)."""
        parts = []
        if self.missing:
            parts.append(f'missing {len(self.missing)}'
                         f'{_groups(self.missing)}: '
                         + _names(self.missing, limit))
        if self.unexpected:
            parts.append(f'unexpected {len(self.unexpected)}'
                         f'{_groups(self.unexpected)}: '
                         + _names(self.unexpected, limit))
        if self.mismatched:
            shapes = [f'{k} (file {tuple(a)}, model {tuple(b)})'
                      for k, a, b in self.mismatched]
            parts.append(f'wrong shape {len(self.mismatched)}: '
                         + _names(shapes, limit))
        return '; '.join(parts)


def _names(items: Sequence[str], limit: int) -> str:
    shown = ', '.join(items[:limit])
    if len(items) > limit:
        shown += f', ... ({len(items) - limit} more)'
    return shown


def _groups(keys: Sequence[str]) -> str:
    """`` (neck.* 16, decode_head.* 8)`` when keys span several top-level
    modules, else ''."""
    counts: Dict[str, int] = OrderedDict()
    for k in keys:
        head = k.split('.', 1)[0] + '.*'
        counts[head] = counts.get(head, 0) + 1
    if len(counts) < 2:
        return ''
    shown = [f'{h} {n}' for h, n in list(counts.items())[:6]]
    return ' (' + ', '.join(shown) + (', ...' if len(counts) > 6 else '') \
        + ')'


def key_prefixes(keys: Sequence[str]) -> str:
    """``neck.*, rpn_head.*``: the top-level modules of ``keys``, in
    order, at most six."""
    heads = list(OrderedDict.fromkeys(k.split('.', 1)[0] + '.*'
                                      for k in keys))
    return ', '.join(heads[:6]) + (', ...' if len(heads) > 6 else '')


def compare_state(module: nn.Module, state: StateDict, source: str,
                  layout: str, target: str) -> LoadReport:
    """Compare ``state`` with ``module.state_dict()`` without loading."""
    own = module.state_dict()
    report = LoadReport(source=source, layout=layout, target=target)
    for k, v in state.items():
        if k not in own:
            report.unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            report.loaded.append(k)
    report.missing = [k for k in own if k not in state
                      and not k.endswith('num_batches_tracked')]
    return report


def _apply(module: nn.Module, state: StateDict, report: LoadReport) -> None:
    """Copy the keys of ``report.loaded`` into ``module``."""
    fitting = OrderedDict((k, state[k]) for k in report.loaded)
    module.load_state_dict(fitting, strict=False)


def _target_name(module: nn.Module) -> str:
    arch = getattr(module, 'arch_name', None)
    if arch is not None:
        return f'{type(module).__name__}(arch={arch!r})'
    return type(module).__name__


def _mismatch_error(report: LoadReport, hint: str) -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f'Checkpoint {report.source} ({report.layout}) does not fit '
        f'{report.target}: {report.details()}. {hint}'.rstrip(),
        missing=report.missing, unexpected=report.unexpected,
        mismatched=report.mismatched)


def _arch_hint(backbone: StateDict, module: nn.Module) -> str:
    """Advice when ``backbone`` (our names) is exactly another arch of the
    IFormer ``module`` than its own."""
    network = network_class(module)
    arch = guess_arch(backbone, network) if backbone and network else None
    model_arch = getattr(module, 'arch_name', None)
    if arch is not None and arch != model_arch:
        return f"The file holds an iFormer-{arch.upper()} backbone " \
            f"(arch='{arch}'), the model is arch={model_arch!r}: use a " \
            'config of that arch or the checkpoint of this one.'
    return ''


def load_iformer_checkpoint(backbone: nn.Module, filename: str,
                            prefix: Optional[str] = None,
                            map_location='cpu', strict: bool = True,
                            key: Optional[str] = None,
                            logger='current') -> LoadReport:
    """Load the backbone part of any supported checkpoint into ``backbone``.

    What ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)`` of
    :class:`~iformer_mm.models.backbones.IFormer` calls. Accepts every
    layout (the authors' release, timm's, a plain / ``model`` /
    ``state_dict`` backbone state dict, a whole mmdet / mmseg / mmpretrain
    model in either naming); a classifier and the rest of a whole model are
    ignored (counted in the report).

    Args:
        backbone: The IFormer to load into.
        filename: Path or URL.
        prefix: Select the keys starting with it (e.g. ``'backbone.'``);
            applied to the file's own keys, before any renaming.
        map_location: As for ``torch.load``.
        strict: Raise unless every backbone key matches (default). With
            False, load what fits and warn with the counts.
        key: Wrapper entry to read, e.g. ``'model_ema'`` for the EMA weights
            of a release file that has both.

    Raises:
        CheckpointMismatchError: ``strict`` and a backbone key is missing,
            unexpected or of the wrong shape (all named in the message).
        CheckpointError: the file is missing, not a checkpoint, truncated
            or unsafe.
    """
    conv = split_checkpoint(load_checkpoint_file(filename, map_location),
                            prefix=prefix, key=key)
    report = compare_state(backbone, conv.backbone, str(filename),
                           conv.layout, _target_name(backbone))
    report.ignored = ['head.' + k for k in conv.classifier] + list(
        conv.others)
    report.meta = conv.meta
    if not report.complete:
        if strict:
            hint = _arch_hint(conv.backbone, backbone)
            if not report.loaded and not hint:
                hint = ('No backbone key matched: is it an iFormer '
                        'checkpoint, and is the prefix right?')
            raise _mismatch_error(report, hint)
        print_log('loading the backbone partially (strict=False): '
                  + report.summary() + '; ' + report.details(),
                  logger=logger, level=30)
    _apply(backbone, conv.backbone, report)
    print_log(f'iFormer backbone weights: {report.summary()}',
              logger=logger)
    return report


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP-style wrappers (mmengine's model wrappers) and
    TTA models (``BaseTTAModel``), however deeply nested."""
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def _prefixes_of(model: nn.Module, class_name: str) -> List[str]:
    return [(name + '.') if name else '' for name, m in model.named_modules()
            if type(m).__name__ == class_name]


def state_dict_for_model(model: nn.Module, ckpt,
                         prefix: Optional[str] = None,
                         key: Optional[str] = None
                         ) -> Tuple['OrderedDict[str, torch.Tensor]',
                                    ConvertedCheckpoint]:
    """A checkpoint of any layout, renamed to ``model``'s keys.

    The backbone weights go under the model's ``IFormer`` (``backbone.``),
    the classifier under its ``IFormerClsHead`` (``head.``), the rest of a
    whole model keeps its keys. A backbone-only file therefore fills only
    the backbone (the rest is reported missing).
    """
    conv = split_checkpoint(ckpt, prefix=prefix, key=key)
    if network_class(model) is not None:
        return OrderedDict(conv.backbone), conv
    bb = _prefixes_of(model, 'IFormer')
    if len(bb) != 1:  # not an iFormer model: the file's keys as they are
        return _selected(ckpt, prefix, key)[0], conv
    heads = _prefixes_of(model, 'IFormerClsHead')
    (head, ) = heads if len(heads) == 1 else ('head.', )
    out = OrderedDict((bb[0] + k, v) for k, v in conv.backbone.items())
    out.update((head + k, v) for k, v in conv.classifier.items())
    out.update(conv.others)
    return out, conv


def load_model_checkpoint(model: nn.Module, filename: str, *,
                          strict: bool = True, map_location='cpu',
                          prefix: Optional[str] = None, logger='current',
                          key: Optional[str] = None) -> LoadReport:
    """Load a whole-model checkpoint into ``model``: the one loader of the
    tools (``tools/test.py``, ``tools/demo.py``, ``tools/benchmark.py``,
    ``load_from`` in training).

    Every layout is accepted and renamed to the model's keys (see
    :func:`state_dict_for_model`): this project's Runner checkpoints, the
    authors' mmdet / mmseg Runner checkpoints, their ImageNet release or a
    timm file for a classifier.

    Args:
        model: The model (DDP / TTA wrappers are looked through).
        filename: Path or URL.
        strict: Raise unless every key matches (default). With False, load
            what fits and warn with the counts (``--allow-partial``).
        map_location: As for ``torch.load``.
        prefix: Use only the file's keys that start with it, removed.
        logger: mmengine logger (name) for the summary line.
        key: Wrapper entry to read (e.g. ``'model_ema'``).

    Returns:
        LoadReport: counts and key lists; ``meta`` holds the file's ``meta``
        (e.g. ``dataset_meta`` with the class names).

    Raises:
        CheckpointMismatchError: ``strict`` and some key is missing,
            unexpected or of the wrong shape (all named in the message).
        CheckpointError: the file is missing, not a checkpoint, truncated
            or unsafe.
    """
    ckpt = load_checkpoint_file(filename, map_location)
    return load_state_into_model(model, ckpt, source=str(filename),
                                 strict=strict, prefix=prefix, key=key,
                                 logger=logger)


def load_state_into_model(model: nn.Module, ckpt, *, source: str,
                          strict: bool = True, prefix: Optional[str] = None,
                          key: Optional[str] = None, logger='current',
                          verbose: bool = True) -> LoadReport:
    """:func:`load_model_checkpoint` for a checkpoint already read
    (``ckpt``: what ``torch.load`` returned; ``source`` names it in
    messages). With ``verbose=False`` nothing is logged."""
    model = unwrap_model(model)
    state, conv = state_dict_for_model(model, ckpt, prefix=prefix, key=key)
    report = compare_state(model, state, source, conv.layout,
                           _target_name(model))
    report.meta = conv.meta
    if not report.complete:
        if strict:
            raise _mismatch_error(report, _model_hint(model, conv, report))
        if verbose:
            print_log('--allow-partial: loading a checkpoint that does not '
                      'fit the model: ' + report.summary() + '; '
                      + report.details(), logger=logger, level=30)
    _apply(model, state, report)
    if report.complete and verbose:
        print_log(f'Loaded {report.summary()}', logger=logger)
    return report


def _model_hint(model: nn.Module, conv: ConvertedCheckpoint,
                report: LoadReport) -> str:
    bb = _prefixes_of(model, 'IFormer')
    hint = ''
    if bb:
        backbone = dict(model.named_modules())[bb[0].rstrip('.')] \
            if bb[0] else model
        hint = _arch_hint(conv.backbone, backbone)
    if not hint and bb and not conv.others and conv.backbone and \
            any(not k.startswith(tuple(bb)) for k in report.missing):
        hint = ('The file holds only backbone weights: use it as '
                "model.backbone.init_cfg=dict(type='Pretrained', "
                'checkpoint=...) to train from it.')
    if not hint and not report.loaded:
        hint = 'No key matched: is it a checkpoint of this kind of model?'
    return (hint + ' Pass --allow-partial (strict=False) to load what fits '
            'anyway.').strip()


__all__ = [
    # reading
    'CheckpointNotFoundError', 'RELEASE_CHECKPOINT_GLOBALS',
    'RUNNER_CHECKPOINT_GLOBALS', 'UnsafeCheckpointError', 'allow_globals',
    'check_checkpoint_path', 'diagnose_checkpoint_file',
    'download_checkpoint', 'load_checkpoint_file', 'safe_load',
    'safe_torch_load',
    # layouts
    'CLASSIFIER_RENAMES', 'ConvertedCheckpoint', 'RELEASE_RENAMES',
    'arch_shapes', 'convert_to_ours', 'guess_arch', 'network_class',
    'split_checkpoint', 'to_openmmlab', 'unwrap_state_dict',
    # loading
    'LoadReport', 'compare_state', 'key_prefixes', 'load_iformer_checkpoint',
    'load_model_checkpoint', 'load_state_into_model', 'state_dict_for_model',
    'unwrap_model'
]
