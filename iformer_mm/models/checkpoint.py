"""Reading iFormer checkpoints of every layout, and loading them strictly.

The same weights come in several key layouts:

* ours (= timm's ``iformer_*`` names): ``stem.conv1.c.weight``,
  ``stages.2.downsample.bn.weight``, ``stages.2.blocks.9.mixer.module.q.c.weight``,
  classifier ``head.head.l.weight`` / ``head.head_dist.l.weight``;
* the authors' names (their ImageNet release ``iFormer_<arch>.pth`` and the
  backbone of their mmdet / mmseg code): ``downsample_layers.0.*`` for the
  stem, ``downsample_layers.i.0.*`` for the stage-i downsample,
  ``stages.i.j.block.<token_channel_mixer|channel_mixer|...>.m.*`` for the
  blocks, ``classifier.classifier[_dist].*`` for the head;
* wrappers: the release keeps the weights in ``model`` (and, when trained
  with EMA, ``model_ema``) next to training metadata; OpenMMLab Runner
  checkpoints keep a whole model in ``state_dict`` (``backbone.*``,
  ``neck.*``, ``rpn_head.*`` ...); DDP adds ``module.``.

:func:`split_checkpoint` takes any of them apart into backbone weights (our
names), classifier weights and the rest of a whole model. Two loaders sit on
top, both strict by default, both returning a :class:`LoadReport`:

* :func:`load_iformer_checkpoint` loads the backbone part into an
  :class:`~iformer_mm.models.backbones.IFormer` (its
  ``init_cfg=dict(type='Pretrained', ...)``);
* :func:`load_model_checkpoint` loads a whole model (a detector, segmentor
  or classifier): ``tools/test.py``, ``tools/demo.py``, ``tools/benchmark.py``
  and ``load_from`` in training all go through it.

A file that does not fit raises :class:`~iformer_mm.errors.CheckpointMismatchError`
naming the missing and unexpected keys and the tensors of the wrong shape
(with both shapes); a file that is not a checkpoint at all raises
:class:`~iformer_mm.errors.CheckpointError` saying what it is.
"""
from __future__ import annotations

import os
import os.path as osp
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..compat import RELEASE_CHECKPOINT_GLOBALS, safe_load
from ..errors import CheckpointError, CheckpointMismatchError

StateDict = Dict[str, torch.Tensor]

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


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------
def safe_torch_load(path: str, map_location='cpu'):
    """``torch.load`` with ``weights_only=True`` and the release types.

    Arbitrary objects in the file are refused by torch's weights-only
    unpickler (:class:`iformer_mm.compat.UnsafeCheckpointError`); nothing in
    the file is executed. A file that is not a checkpoint, or is truncated,
    raises :class:`~iformer_mm.errors.CheckpointError` saying so.
    """
    return safe_load(path, map_location=map_location,
                     extra_safe_globals=RELEASE_CHECKPOINT_GLOBALS)


def load_checkpoint_file(filename: str, map_location='cpu') -> dict:
    """Read a local file or an ``http(s)://`` URL (cached in torch hub).

    Raises:
        CheckpointError: the file is missing, not a checkpoint, truncated,
            unsafe (names the offending global), or the download failed.
    """
    filename = str(filename)
    if re.match(r'^https?://', filename):
        cache = osp.join(torch.hub.get_dir(), 'checkpoints')
        local = osp.join(cache, osp.basename(filename))
        if not osp.exists(local):
            os.makedirs(cache, exist_ok=True)
            try:
                torch.hub.download_url_to_file(filename, local, progress=True)
            except Exception as e:  # no network, 404 ...
                raise CheckpointError(
                    f'Could not download {filename} ({e}). Download it by '
                    f'hand and pass the local path, e.g. --cfg-options '
                    f'model.backbone.init_cfg.checkpoint=/path/'
                    f'{osp.basename(filename)}') from e
        filename = local
    return safe_torch_load(filename, map_location)


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
    state, wrapper = _unwrap(ckpt, key)
    state = _strip_module(state)
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        selected = OrderedDict((k[len(prefix):], v) for k, v in state.items()
                               if k.startswith(prefix))
        if not selected:
            tops = sorted({k.split('.', 1)[0] + '.' for k in state})
            raise CheckpointMismatchError(
                f'No key of the checkpoint starts with prefix {prefix!r}; '
                f'its keys start with {", ".join(tops[:8])}. Fix or drop '
                "init_cfg's prefix.", unexpected=list(state)[:50])
        state = selected
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


def guess_arch(backbone: StateDict) -> Optional[str]:
    """The ``IFormer`` arch whose keys and shapes ``backbone`` (our names)
    has exactly, or None."""
    have = {k: tuple(v.shape) for k, v in backbone.items()}
    for arch, want in _arch_shapes().items():
        if have == want:
            return arch
    return None


_ARCH_SHAPES: Dict[str, Dict[str, tuple]] = {}


def _arch_shapes() -> Dict[str, Dict[str, tuple]]:
    """Key -> shape of every ``IFormer`` arch (built on the meta device:
    no memory, no time)."""
    if not _ARCH_SHAPES:
        from .backbones import IFormer
        for arch in IFormer.arch_zoo:
            with torch.device('meta'):
                net = IFormer(arch)
            _ARCH_SHAPES[arch] = {k: tuple(v.shape)
                                  for k, v in net.state_dict().items()}
    return _ARCH_SHAPES


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
            line += f'; {len(self.ignored)} ignored ({_heads(self.ignored)})'
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


def _heads(keys: Sequence[str]) -> str:
    """``neck.*, rpn_head.*`` for a list of keys."""
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


def _arch_hint(backbone: StateDict, model_arch: Optional[str]) -> str:
    arch = guess_arch(backbone) if backbone else None
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
            hint = _arch_hint(conv.backbone,
                              getattr(backbone, 'arch_name', None))
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
    """The model inside DDP-style wrappers and TTA models."""
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
    from .backbones import IFormer
    conv = split_checkpoint(ckpt, prefix=prefix, key=key)
    if isinstance(model, IFormer):
        return OrderedDict(conv.backbone), conv
    bb = _prefixes_of(model, 'IFormer')
    if len(bb) != 1:  # not an iFormer model: the file's keys as they are
        state, _ = _unwrap(ckpt, key)
        state = _strip_module(state)
        if prefix:
            prefix = prefix if prefix.endswith('.') else prefix + '.'
            state = OrderedDict((k[len(prefix):], v) for k, v in
                                state.items() if k.startswith(prefix))
        return state, conv
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
        hint = _arch_hint(conv.backbone, getattr(backbone, 'arch_name',
                                                 None))
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
    'CLASSIFIER_RENAMES', 'ConvertedCheckpoint', 'LoadReport',
    'RELEASE_RENAMES', 'compare_state', 'convert_to_ours', 'guess_arch',
    'load_checkpoint_file', 'load_iformer_checkpoint',
    'load_model_checkpoint', 'load_state_into_model', 'safe_torch_load', 'split_checkpoint',
    'state_dict_for_model', 'to_openmmlab', 'unwrap_state_dict'
]
