"""What the latency tool benchmarks: iFormer variants, configs, and peers.

A backbone is named in one of three ways:

* an iFormer arch, optionally with an attention layout:
  ``iformer-m`` (= ``iformer-m:cc-hybrid``), ``iformer-m:global``,
  ``iformer-m:hybrid``, ``iformer-l:window``; ``m`` alone works too;
* an iFormer-mm / OpenMMLab config file (its ``model.backbone`` is built);
* a peer: a preset from :data:`PEERS` (``resnet18``, ``swin-t``, ...) or any
  backbone of the OpenMMLab registries as ``SCOPE.Type`` with optional JSON
  keyword arguments, e.g. ``mmpretrain.ConvNeXt{"arch": "small"}``; or a
  reference network of the latency predictor that OpenMMLab lacks
  (``fastvit-sa12``, ``repvit-m1-1``, ...: its classifier only).

Two programs can be converted and timed (``--program``): the whole
classifier, head included, with one output -- what the authors'
``export_coreml.py`` converts (``create_model(..., num_classes=1000)``,
traced, one ``ImageType`` input) and so, most likely, what the paper's
Table 5 timed at 512x512 -- or the dense backbone with its four feature
maps, what a detector or segmentor runs. Configs and registry names have
only the dense backbone.

Weights are random (latency and the op graph do not depend on them); a
config's ``init_cfg`` is dropped so that nothing is downloaded.
"""
from __future__ import annotations

import copy
import importlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SCOPES, load_config
from ..errors import ConfigError

# --------------------------------------------------------------------------
# iFormer attention layouts (Table 17) and the paper's iPhone 13 figures.
# --------------------------------------------------------------------------
IFORMER_ARCHS = ('t', 's', 'm', 'l', 'l2', 'h')

#: layout name -> (IFormer kwargs, label). Table 17's three settings are
#: ``global``, ``hybrid`` and ``cc-hybrid``; ``authors`` is the layout of the
#: released detection/segmentation code (``detection/iformer.py``,
#: ``iFormer_m``: explicit attention) and ``authors-fa`` the same with
#: ``scaled_dot_product_attention`` (``iFormer_m_faster``).
IFORMER_LAYOUTS: Dict[str, Tuple[dict, str]] = {
    'global': (dict(attention='global', window_chunks=1), 'global SHMA'),
    'hybrid': (dict(attention='hybrid', window_chunks=1),
               'hybrid window SHMA'),
    'cc-hybrid': (dict(attention='hybrid', window_chunks=16),
                  'channel-chunked hybrid SHMA'),
    'window': (dict(attention='window', window_chunks=1),
               'window SHMA (every block)'),
    'authors': (dict(attention='authors', window_chunks=16),
                "authors' released dense layout, chunked"),
    'authors-fa': (dict(attention='authors', window_chunks=16,
                        fused_attn=True),
                   "authors' released dense layout, chunked, SDPA"),
}
LAYOUT_ALIASES = {'cc': 'cc-hybrid', 'cc_hybrid': 'cc-hybrid',
                  'hybrid-cc': 'cc-hybrid', 'chunked': 'cc-hybrid',
                  'shma': 'global', 'authors_fa': 'authors-fa',
                  'faster': 'authors-fa'}
DEFAULT_LAYOUT = 'cc-hybrid'
TABLE17_LAYOUTS = ('global', 'hybrid', 'cc-hybrid')
#: The archs that the released detection code defines (with a ``_faster``
#: SDPA twin): the ones the ``authors`` layouts are benchmarked for.
AUTHORS_ARCHS = ('m', 'l', 'l2')


# --------------------------------------------------------------------------
# Published iPhone 13 Core ML latencies, attached to the network that
# produced them.
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishedLatency:
    """One published iPhone 13 Core ML latency and where it comes from.

    A figure belongs to one network (``key``: arch *and* attention layout)
    at one input size; the tool prints it only beside a result of that
    network at that size. ``ms=None`` is the paper's "Failed".

    Paper figures name their ``table``, the ``row`` label the table uses and
    the ``column`` (0-based, tab-separated) that holds the latency, so that
    a test can read each one back from the paper's text. Figures from the
    authors' released code name the ``file``, the ``function`` and the
    comment (``quote``) written above it.
    """
    key: str
    size: Tuple[int, int]
    ms: Optional[float]
    table: Optional[int] = None
    row: str = ''
    column: int = 2
    file: str = ''
    function: str = ''
    quote: str = ''
    note: str = ''

    @property
    def failed(self) -> bool:
        return self.ms is None

    @property
    def kind(self) -> str:
        return 'paper' if self.table is not None else 'released code'

    @property
    def source(self) -> str:
        if self.table is not None:
            return f'paper, Table {self.table}'
        return f'{self.file}, {self.function} (comment "{self.quote}")'

    def as_dict(self) -> Dict[str, Any]:
        return dict(iphone13_ms=self.ms, failed=self.failed,
                    size=list(self.size), kind=self.kind,
                    source=self.source, note=self.note)


_P512, _P224 = (512, 512), (224, 224)
_RELEASED_M = ('The released code (detection/iformer.py) puts 4.3 ms on '
               'iFormer_m and 4.0 ms on iFormer_m_faster (SDPA), both in its '
               "own layout (our 'authors' / 'authors-fa'); the paper's text "
               '(Appendix F, Tables 16-17) gives 4.0 ms to the channel-'
               'chunked hybrid layout.')
_CLS = ('Table 18 times the classification network (with its head) at '
        '224x224; the paper says it uses global SHMA at 224 (Table 17).')
_S24 = 'Table 5 and Table 13 disagree for this network: both are listed.'

#: Every published figure the tool knows. Keys are backbone keys.
PUBLISHED_LATENCIES: Tuple[PublishedLatency, ...] = (
    # Table 17: iFormer-M attention layouts (Appendix F describes them).
    PublishedLatency('iformer-m:global', _P224, 1.10, table=17, row='SHMA',
                     note='Table 17 row "SHMA, 224".'),
    PublishedLatency('iformer-m:global', _P512, None, table=17, row='SHMA',
                     note='Table 17 row "SHMA, 512": Failed.'),
    PublishedLatency('iformer-m:hybrid', _P512, 11.46, table=17,
                     row='Hybrid SHMA'),
    PublishedLatency('iformer-m:cc-hybrid', _P512, 4.0, table=17,
                     row='CC Hybrid SHMA', note=_RELEASED_M),
    # Table 5: backbones at 512x512 (Mask R-CNN / Semantic FPN).
    PublishedLatency('iformer-m:cc-hybrid', _P512, 4.00, table=5,
                     row='iFormer-M', note=_RELEASED_M),
    PublishedLatency('iformer-l:cc-hybrid', _P512, 6.60, table=5,
                     row='iFormer-L'),
    PublishedLatency('iformer-l:cc-hybrid', _P512, 6.60, table=13,
                     row='iFormer-L'),
    PublishedLatency('iformer-l2:cc-hybrid', _P512, 9.06, table=13,
                     row='iFormer-L2',
                     note='The released code writes 9.06 ms above '
                     "iFormer_l2 (its own layout, explicit attention: our "
                     "'authors'); the paper's text describes the "
                     'channel-chunked hybrid layout for 512x512.'),
    PublishedLatency('efficientnet-b0', _P512, 4.55, table=5,
                     row='EfficientNet-B0'),
    PublishedLatency('resnet18', _P512, 2.85, table=5, row='ResNet18'),
    PublishedLatency('poolformer-s12', _P512, 5.70, table=5,
                     row='PoolFormer-S12'),
    PublishedLatency('efficientformer-l1', _P512, 3.50, table=5,
                     row='EfficientFormer-L1'),
    PublishedLatency('resnet50', _P512, 7.20, table=5, row='ResNet50'),
    PublishedLatency('resnet50', _P512, 7.20, table=13, row='ResNet50'),
    PublishedLatency('poolformer-s24', _P512, 10.0, table=5,
                     row='PoolFormer-S24', note=_S24),
    PublishedLatency('poolformer-s24', _P512, 12.30, table=13,
                     row='PoolFormer-S24', note=_S24),
    PublishedLatency('convnext-t', _P512, 13.6, table=5, row='ConvNeXt-T',
                     note=_S24),
    PublishedLatency('convnext-t', _P512, 12.6, table=13, row='ConvNeXt-T',
                     note=_S24),
    PublishedLatency('efficientformer-l3', _P512, 8.40, table=5,
                     row='EfficientFormer-L3'),
    PublishedLatency('efficientformer-l3', _P512, 8.40, table=13,
                     row='EfficientFormer-L3'),
    PublishedLatency('pvtv2-b1', _P512, 27.00, table=5, row='PVTv2-B1'),
    PublishedLatency('pvtv2-b1', _P512, 27.00, table=13, row='PVTv2-B1'),
    PublishedLatency('swin-t', _P512, None, table=5, row='Swin-T'),
    PublishedLatency('swin-t', _P512, None, table=13, row='Swin-T'),
    # Table 18: classification networks at 224x224.
    PublishedLatency('iformer-t:global', _P224, 0.60, table=18,
                     row='iFormer-T', column=3, note=_CLS),
    PublishedLatency('iformer-s:global', _P224, 0.85, table=18,
                     row='iFormer-S', column=3, note=_CLS),
    PublishedLatency('iformer-m:global', _P224, 1.10, table=18,
                     row='iFormer-M', column=3, note=_CLS),
    PublishedLatency('iformer-l:global', _P224, 1.60, table=18,
                     row='iFormer-L', column=3, note=_CLS),
    PublishedLatency('efficientnet-b0', _P224, 0.89, table=18,
                     row='EfficientNet-B0', column=3,
                     note='Table 18 times the classification network.'),
    # The authors' released code: comments above the detection backbones
    # (detection/iformer.py; segmentation/iformer.py repeats them). The
    # comments give no size; the code is the 512x512 dense-prediction
    # backbone, the size at which the paper times backbones (Sec. 4.2).
    PublishedLatency('iformer-m:authors', _P512, 4.3,
                     file='detection/iformer.py', function='iFormer_m',
                     quote='# 4.3ms',
                     note='The comment gives no size; 512x512 assumed.'),
    PublishedLatency('iformer-m:authors-fa', _P512, 4.0,
                     file='detection/iformer.py', function='iFormer_m_faster',
                     quote='# using fused_attn 4.0ms',
                     note='The comment gives no size; 512x512 assumed.'),
    PublishedLatency('iformer-l2:authors', _P512, 9.06,
                     file='detection/iformer.py', function='iFormer_l2',
                     quote='# 24.5M   4500M  9.06ms',
                     note='Same figure as Table 13 (iFormer-L2).'),
)
# Not attached: the comment "# 14.7M  2627M 1.60ms" above iFormer_l in
# detection/iformer.py is Table 18's 224x224 classification figure (1.60 ms),
# not a 512x512 detection-backbone latency.


def published_latencies(key: str, size: Optional[Tuple[int, int]] = None
                        ) -> List[PublishedLatency]:
    """The published figures of backbone ``key``; with ``size``, only those
    measured at that input size."""
    return [f for f in PUBLISHED_LATENCIES if f.key == key and
            (size is None or tuple(f.size) == tuple(size))]


# --------------------------------------------------------------------------
# Peers of Table 5 that the OpenMMLab libraries provide.
# --------------------------------------------------------------------------
PEERS: Dict[str, Tuple[str, str, dict]] = {
    'resnet18': ('ResNet-18', 'mmdet',
                 dict(type='ResNet', depth=18, out_indices=(0, 1, 2, 3))),
    'resnet50': ('ResNet-50', 'mmdet',
                 dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3))),
    'swin-t': ('Swin-T', 'mmdet',
               dict(type='SwinTransformer', embed_dims=96,
                    depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                    window_size=7, out_indices=(0, 1, 2, 3))),
    'pvtv2-b1': ('PVTv2-B1', 'mmdet',
                 dict(type='PyramidVisionTransformerV2', embed_dims=64,
                      num_layers=[2, 2, 2, 2], num_heads=[1, 2, 5, 8],
                      out_indices=(0, 1, 2, 3))),
    'poolformer-s12': ('PoolFormer-S12', 'mmpretrain',
                       dict(type='PoolFormer', arch='s12',
                            out_indices=(0, 2, 4, 6))),
    'poolformer-s24': ('PoolFormer-S24', 'mmpretrain',
                       dict(type='PoolFormer', arch='s24',
                            out_indices=(0, 2, 4, 6))),
    'efficientformer-l1': ('EfficientFormer-L1', 'mmpretrain',
                           dict(type='EfficientFormer', arch='l1',
                                out_indices=(0, 1, 2, 3),
                                reshape_last_feat=True)),
    'efficientformer-l3': ('EfficientFormer-L3', 'mmpretrain',
                           dict(type='EfficientFormer', arch='l3',
                                out_indices=(0, 1, 2, 3),
                                reshape_last_feat=True)),
    'convnext-t': ('ConvNeXt-T', 'mmpretrain',
                   dict(type='ConvNeXt', arch='tiny',
                        out_indices=(0, 1, 2, 3),
                        gap_before_final_norm=False)),
    'efficientnet-b0': ('EfficientNet-B0', 'mmpretrain',
                        dict(type='EfficientNet', arch='b0',
                             out_indices=(2, 3, 4, 6))),
}
#: The peer set run by ``--peers``: Table 5's small column, ResNet-50,
#: Swin-T, PVTv2-B1 and ConvNeXt-T.
DEFAULT_PEERS = ('resnet18', 'resnet50', 'swin-t', 'pvtv2-b1',
                 'poolformer-s12', 'efficientformer-l1', 'convnext-t')


def _offset_order(resolution: int) -> List[Tuple[int, int]]:
    """The (dy, dx) offsets in the order LeViT-style bias tables use."""
    points = list(itertools.product(range(resolution), range(resolution)))
    order: Dict[Tuple[int, int], int] = {}
    for p1 in points:
        for p2 in points:
            offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            order.setdefault(offset, len(order))
    return list(order)


@torch.no_grad()
def resize_attention_biases(model: nn.Module, size: Tuple[int, int]) -> str:
    """Resize EfficientFormer's last-stage attention biases to the token
    grid of ``size`` (bicubic over the offset table), as one does to run it
    at a dense-prediction resolution; mmpretrain fixes them at 7x7 (224)."""
    height, width = size
    if height != width:
        raise BackboneError('EfficientFormer attention biases are square: '
                            f'it needs a square input, got {height}x{width}.')
    new = height // 32
    notes = set()
    for module in model.modules():
        if not (hasattr(module, 'attention_biases') and
                hasattr(module, 'attention_bias_idxs')):
            continue
        heads, count = module.attention_biases.shape
        old = int(round(count ** 0.5))
        if old * old != count:
            raise BackboneError(f'Unexpected attention bias table of {count} '
                                'entries.')
        if old == new:
            continue
        grid = torch.zeros(heads, old, old)
        for i, (dy, dx) in enumerate(_offset_order(old)):
            grid[:, dy, dx] = module.attention_biases[:, i]
        grid = F.interpolate(grid[None], size=(new, new), mode='bicubic',
                             align_corners=True)[0]
        order = _offset_order(new)
        table = torch.stack([grid[:, dy, dx] for dy, dx in order], dim=1)
        index = {offset: i for i, offset in enumerate(order)}
        points = list(itertools.product(range(new), range(new)))
        idxs = [index[(abs(a[0] - b[0]), abs(a[1] - b[1]))]
                for a in points for b in points]
        module.attention_biases = nn.Parameter(table)
        module.attention_bias_idxs = torch.tensor(idxs).view(
            len(points), len(points))
        if hasattr(module, 'ab'):
            module.ab = module.attention_biases[:, module.attention_bias_idxs]
        notes.add(f'attention biases resized {old}x{old} -> {new}x{new} '
                  '(bicubic)')
    return '; '.join(sorted(notes))


@dataclass
class BackboneSpec:
    """A resolved backbone: how to build it and what to call it."""
    key: str                      # stable id, also the output sub-folder
    label: str                    # what tables show
    family: str                   # 'iformer' or 'peer'
    build: Callable[[], nn.Module] = field(repr=False)
    size_divisor: int             # inputs must be multiples of it
    source: str = ''              # where it came from (registry, config)
    paper: Optional[Dict[str, Any]] = None
    # ``adapt(model, (height, width)) -> note``: what a peer needs to run at
    # a resolution other than its classification one (None: nothing).
    adapt: Optional[Callable[[nn.Module, Tuple[int, int]], str]] = \
        field(default=None, repr=False)
    # Why this backbone cannot be built here (its library is not installed,
    # e.g. a peer from mmdet on the light install); None: it can.
    unavailable: Optional[str] = None
    # The latency predictor's reference network of this backbone: a key of
    # ``predictor.references.REFERENCES`` and keyword overrides. Its whole
    # classifier (head included, one output) is the program that
    # ``--program classifier`` converts. None: no classifier is known
    # (configs, registry names), only the dense backbone.
    reference: Optional[Tuple[str, Dict[str, Any]]] = None
    # False for a peer that exists here only as a classifier (timm or
    # torchvision), with no OpenMMLab backbone to build.
    dense: bool = True

    def build_classifier(self, size: Tuple[int, int]
                         ) -> Tuple[nn.Module, Dict[str, Any]]:
        """The deploy-ready reference classifier at ``size`` and what
        :func:`.predictor.references.build_reference` says of it (its
        parameter count before reparameterisation, how it was folded)."""
        from .predictor.references import build_reference
        height, width = size
        if height != width:
            raise BackboneError(
                f'{self.label}: the classifier program is built for square '
                f'inputs, got {height}x{width}; use --program dense.')
        key, overrides = self.reference
        return build_reference(key, height, **overrides)

    def check_size(self, height: int, width: int) -> None:
        check_resolution(height, width, self.size_divisor, self.label)

    def published_at(self, size) -> Optional[List[Dict[str, Any]]]:
        """The published figures of this network measured at ``size``
        (``(height, width)``), or None: a figure is never shown beside a
        run at another size."""
        figures = [f for f in (self.paper or [])
                   if tuple(f['size']) == tuple(size)]
        return figures or None


class BackboneError(ValueError):
    """A backbone name, config or argument that cannot be resolved."""


def check_resolution(height: int, width: int, divisor: int = 1,
                     label: str = 'the model') -> None:
    for side in (height, width):
        if not isinstance(side, int) or side < 32:
            raise BackboneError(
                f'Resolution {height}x{width} is too small: every side must '
                'be an integer of at least 32 (the backbones downsample 32x).')
    if divisor > 1 and (height % divisor or width % divisor):
        raise BackboneError(
            f'{label} needs a resolution that is a multiple of {divisor}, '
            f'got {height}x{width}.')


def _paper(key: str) -> Optional[List[Dict[str, Any]]]:
    """Every published figure of ``key`` (any size), JSON-able; the report
    keeps those at the run's size."""
    figures = published_latencies(key)
    return [f.as_dict() for f in figures] or None


# --------------------------------------------------------------------------
# iFormer.
# --------------------------------------------------------------------------
_IFORMER_RE = re.compile(
    r'^(?:iformer[-_]?)?(?P<arch>t|s|m|l|l2|h)(?::(?P<layout>[\w-]+))?$',
    re.IGNORECASE)


def _iformer_spec(arch: str, layout: str, extra: Optional[dict] = None
                  ) -> BackboneSpec:
    layout = LAYOUT_ALIASES.get(layout, layout)
    if layout not in IFORMER_LAYOUTS:
        raise BackboneError(
            f'Unknown iFormer attention layout {layout!r}; choose one of '
            f'{sorted(IFORMER_LAYOUTS)} (e.g. iformer-m:hybrid).')
    kwargs, layout_label = IFORMER_LAYOUTS[layout]
    kwargs = dict(kwargs, **(extra or {}))

    def build() -> nn.Module:
        from iformer_mm.models.backbones import IFormer
        return IFormer(arch=arch, out_indices=(0, 1, 2, 3), **kwargs)

    key = f'iformer-{arch}:{layout}'
    return BackboneSpec(key=key, label=f'iFormer-{arch.upper()} '
                        f'({layout_label})', family='iformer', build=build,
                        size_divisor=32, source='iformer_mm IFormer',
                        paper=_paper(key),
                        reference=(f'iformer-{arch}', kwargs))


# --------------------------------------------------------------------------
# OpenMMLab registries.
# --------------------------------------------------------------------------
def registry_for(scope: Optional[str]):
    """The ``MODELS`` registry of ``scope`` with its modules registered."""
    if scope in (None, '', 'mmengine', 'iformer_mm'):
        from mmengine.registry import MODELS
        return MODELS
    if scope not in SCOPES:
        raise BackboneError(f'Unknown OpenMMLab scope {scope!r}; the tool '
                            f'knows {", ".join(SCOPES)}.')
    try:  # each scope is a package of that name with the same layout
        registry = importlib.import_module(f'{scope}.registry')
        utils = importlib.import_module(f'{scope}.utils')
    except ImportError as exc:
        raise BackboneError(f'{scope} is not importable here ({exc}); '
                            f'install it to benchmark its backbones.') from exc
    utils.register_all_modules(init_default_scope=False)
    return registry.MODELS


def _registry_build(scope: Optional[str], cfg: dict) -> nn.Module:
    from mmengine.registry import DefaultScope
    cfg = copy.deepcopy(cfg)
    cfg.pop('init_cfg', None)
    cfg.pop('pretrained', None)
    registry = registry_for(scope)
    # mmengine builds in the *current* default scope when one is set (a
    # config or tool run earlier in this process may have set mmseg's):
    # build in the backbone's own scope instead.
    with DefaultScope.overwrite_default_scope(
            scope if scope in SCOPES else None):
        return registry.build(cfg)


def _registry_spec(scope: str, cfg: dict, key: str, label: str,
                   size_divisor: int) -> BackboneSpec:
    unavailable = None
    try:
        registry = registry_for(scope)
    except BackboneError as exc:
        if scope not in SCOPES:
            raise
        # The library is missing or broken here (e.g. the light install):
        # the run skips this backbone with one line and goes on.
        unavailable = str(exc)
    else:
        if registry.get(cfg['type']) is None:
            raise BackboneError(f'{scope} has no backbone {cfg["type"]!r} in '
                                'its MODELS registry.')

    def build() -> nn.Module:
        if unavailable:
            raise BackboneError(unavailable)
        return _registry_build(scope, cfg)
    return BackboneSpec(key=key, label=label, family='peer', build=build,
                        size_divisor=size_divisor,
                        source=f'{scope}.{cfg["type"]}', paper=_paper(key),
                        unavailable=unavailable)


_REGISTRY_RE = re.compile(r'^(?P<scope>mm\w+)\.(?P<type>\w+)(?P<kwargs>\{.*\})?$',
                          re.DOTALL)


# --------------------------------------------------------------------------
# Configs.
# --------------------------------------------------------------------------
def _config_spec(path: str) -> BackboneSpec:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        raise BackboneError(str(e)) from e
    model = cfg.get('model')
    backbone = model.get('backbone') if model is not None else None
    if backbone is None:
        raise BackboneError(f'{path} has no model.backbone to benchmark.')
    backbone = backbone.to_dict() if hasattr(backbone, 'to_dict') else \
        dict(backbone)
    scope = cfg.get('default_scope')
    btype = str(backbone.get('type', ''))
    if '.' in btype:
        scope, btype = btype.split('.', 1)
        backbone['type'] = btype
    name = os.path.splitext(os.path.basename(path))[0]
    is_iformer = btype == 'IFormer'
    paper = None
    if is_iformer:
        scope = None  # IFormer lives in the root registry: no mmdet needed
        arch = str(backbone.get('arch', 't')).lower()
        have = dict(attention=backbone.get('attention', 'global'),
                    window_chunks=backbone.get('window_chunks', 1),
                    fused_attn=bool(backbone.get('fused_attn', False)))
        for layout, (kwargs, _) in IFORMER_LAYOUTS.items():
            if dict(dict(fused_attn=False), **kwargs) == have:
                paper = _paper(f'iformer-{arch}:{layout}')
    return BackboneSpec(
        key=f'config:{name}', label=f'{name} (config backbone)',
        family='iformer' if is_iformer else 'peer',
        build=lambda: _registry_build(scope, backbone), size_divisor=32,
        source=f'{path} [{scope or "root"}.{btype}]', paper=paper)


def _classifier_only_spec(key: str) -> Optional[BackboneSpec]:
    """A network of the predictor's reference set (FastViT, RepViT, ...)
    that has no OpenMMLab backbone here: its classifier program only."""
    from .predictor.data import load_measurements
    from .predictor.references import REFERENCES
    ref = REFERENCES.get(key)
    if ref is None or ref.library == 'iformer_mm':
        return None
    names = [r['network'] for r in load_measurements() if r['key'] == key]
    label = names[0] if names else key

    def build() -> nn.Module:
        raise BackboneError(f'{label} has no OpenMMLab backbone here, only '
                            'its classifier (--program classifier).')
    return BackboneSpec(key=key, label=label, family='peer', build=build,
                        size_divisor=32, source=f'{ref.library}.{ref.name}',
                        paper=_paper(key), reference=(key, {}), dense=False)


# --------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------
def resolve_backbone(name: str) -> BackboneSpec:
    """Turn a command-line backbone name into a :class:`BackboneSpec`."""
    text = name.strip()
    if text.endswith('.py') or os.sep in text:
        return _config_spec(text)
    match = _IFORMER_RE.match(text)
    if match:
        return _iformer_spec(match['arch'].lower(),
                             (match['layout'] or DEFAULT_LAYOUT).lower())
    if text.lower() in PEERS:
        key = text.lower()
        label, scope, cfg = PEERS[key]
        spec = _registry_spec(scope, cfg, key, label, 32)
        spec.reference = (key, {})
        if cfg['type'] == 'EfficientFormer':
            spec.adapt = resize_attention_biases
        return spec
    classifier = _classifier_only_spec(text.lower())
    if classifier is not None:
        return classifier
    match = _REGISTRY_RE.match(text)
    if match:
        kwargs: Dict[str, Any] = {}
        if match['kwargs']:
            try:
                kwargs = json.loads(match['kwargs'])
            except json.JSONDecodeError as exc:
                raise BackboneError(f'Bad JSON arguments in {text!r}: '
                                    f'{exc}.') from exc
        cfg = dict(type=match['type'], **kwargs)
        return _registry_spec(match['scope'], cfg, text, text, 1)
    raise BackboneError(
        f'Unknown backbone {name!r}. Use an iFormer arch '
        f'({", ".join("iformer-" + a for a in IFORMER_ARCHS)}, optionally '
        f'":LAYOUT" with LAYOUT in {sorted(IFORMER_LAYOUTS)}), a config '
        f'file (.py), a peer preset ({", ".join(sorted(PEERS))}), a '
        'reference network of the latency predictor (e.g. fastvit-sa12) or '
        'SCOPE.Type from the mmdet/mmseg/mmpretrain registries.')


def table17_specs(arch: str = 'm') -> list:
    """iFormer-``arch`` in Table 17's three layouts."""
    return [_iformer_spec(arch, layout) for layout in TABLE17_LAYOUTS]


def authors_specs(archs=AUTHORS_ARCHS) -> list:
    """The released code's layouts (explicit attention and SDPA) for the
    archs it defines (M, L, L2)."""
    return [_iformer_spec(arch, layout) for arch in archs
            for layout in ('authors', 'authors-fa')]


def all_variant_specs(layouts=TABLE17_LAYOUTS) -> list:
    return [_iformer_spec(arch, layout) for arch in IFORMER_ARCHS
            for layout in layouts]


def spec_from_module(module: Union[nn.Module, Callable[[], nn.Module]],
                     key: str, label: Optional[str] = None,
                     size_divisor: int = 1) -> BackboneSpec:
    """Wrap an already built module (or a factory) for the library API."""
    build = module if not isinstance(module, nn.Module) else (lambda: module)
    return BackboneSpec(key=key, label=label or key, family='custom',
                        build=build, size_divisor=size_divisor,
                        source='python')
