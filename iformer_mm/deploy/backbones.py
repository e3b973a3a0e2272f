"""What the latency tool benchmarks: iFormer variants, configs, and peers.

A backbone is named in one of three ways:

* an iFormer arch, optionally with an attention layout:
  ``iformer-m`` (= ``iformer-m:cc-hybrid``), ``iformer-m:global``,
  ``iformer-m:hybrid``, ``iformer-l:window``; ``m`` alone works too;
* an iFormer-mm / OpenMMLab config file (its ``model.backbone`` is built);
* a peer: a preset from :data:`PEERS` (``resnet18``, ``swin-t``, ...) or any
  backbone of the OpenMMLab registries as ``SCOPE.Type`` with optional JSON
  keyword arguments, e.g. ``mmpretrain.ConvNeXt{"arch": "small"}``.

Weights are random (latency and the op graph do not depend on them); a
config's ``init_cfg`` is dropped so that nothing is downloaded.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------
# iFormer attention layouts (Table 17) and the paper's iPhone 13 figures.
# --------------------------------------------------------------------------
IFORMER_ARCHS = ('t', 's', 'm', 'l', 'l2', 'h')

#: layout name -> (IFormer kwargs, label). Table 17's three settings are
#: ``global``, ``hybrid`` and ``cc-hybrid``.
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
}
LAYOUT_ALIASES = {'cc': 'cc-hybrid', 'cc_hybrid': 'cc-hybrid',
                  'hybrid-cc': 'cc-hybrid', 'chunked': 'cc-hybrid',
                  'shma': 'global'}
DEFAULT_LAYOUT = 'cc-hybrid'
TABLE17_LAYOUTS = ('global', 'hybrid', 'cc-hybrid')

# Reported by the paper (iPhone 13, Core ML, 512x512, ms); None = "Failed"
# in the paper (ran too long for Core ML to report).
PAPER_IPHONE13_MS: Dict[str, Tuple[Optional[float], str]] = {
    'iformer-m:cc-hybrid': (4.00, 'Table 5 / Table 17'),
    'iformer-m:hybrid': (11.46, 'Table 17'),
    'iformer-m:global': (None, 'Table 17'),
    'iformer-l:cc-hybrid': (6.60, 'Table 5'),
    'iformer-l2:cc-hybrid': (9.06, 'Table 13'),
    'efficientnet-b0': (4.55, 'Table 5'),
    'resnet18': (2.85, 'Table 5'),
    'poolformer-s12': (5.70, 'Table 5'),
    'efficientformer-l1': (3.50, 'Table 5'),
    'resnet50': (7.20, 'Table 5'),
    'poolformer-s24': (10.0, 'Table 5'),
    'convnext-t': (13.6, 'Table 5'),
    'efficientformer-l3': (8.40, 'Table 5'),
    'pvtv2-b1': (27.00, 'Table 5'),
    'swin-t': (None, 'Table 5'),
}

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
#: The peer set run by ``--peers`` (Table 5's small column plus the issue's
#: minimum list).
DEFAULT_PEERS = ('resnet18', 'resnet50', 'swin-t', 'pvtv2-b1',
                 'poolformer-s12', 'efficientformer-l1', 'convnext-t')
SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


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
    size_divisor: int = 32
    source: str = ''              # where it came from (registry, config)
    paper: Optional[Dict[str, Any]] = None
    # ``adapt(model, (height, width)) -> note``: what a peer needs to run at
    # a resolution other than its classification one (None: nothing).
    adapt: Optional[Callable[[nn.Module, Tuple[int, int]], str]] = \
        field(default=None, repr=False)

    def check_size(self, height: int, width: int) -> None:
        check_resolution(height, width, self.size_divisor, self.label)


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


def _paper(key: str) -> Optional[Dict[str, Any]]:
    if key not in PAPER_IPHONE13_MS:
        return None
    ms, where = PAPER_IPHONE13_MS[key]
    return dict(iphone13_ms=ms, failed=ms is None, source=where)


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
                        paper=_paper(key))


# --------------------------------------------------------------------------
# OpenMMLab registries.
# --------------------------------------------------------------------------
def registry_for(scope: Optional[str]):
    """The ``MODELS`` registry of ``scope`` with its modules registered."""
    import iformer_mm  # noqa: F401  (registers IFormer in the root registry)
    if scope in (None, '', 'mmengine', 'iformer_mm'):
        from mmengine.registry import MODELS
        return MODELS
    if scope not in SCOPES:
        raise BackboneError(f'Unknown OpenMMLab scope {scope!r}; the tool '
                            f'knows {SCOPES}.')
    try:
        if scope == 'mmdet':
            from mmdet.registry import MODELS
            from mmdet.utils import register_all_modules
        elif scope == 'mmseg':
            from mmseg.registry import MODELS
            from mmseg.utils import register_all_modules
        else:
            from mmpretrain.registry import MODELS
            from mmpretrain.utils import register_all_modules
    except ImportError as exc:
        raise BackboneError(f'{scope} is not importable here ({exc}); '
                            f'install it to benchmark its backbones.') from exc
    register_all_modules(init_default_scope=False)
    return MODELS


def _registry_build(scope: Optional[str], cfg: dict) -> nn.Module:
    cfg = copy.deepcopy(cfg)
    cfg.pop('init_cfg', None)
    cfg.pop('pretrained', None)
    return registry_for(scope).build(cfg)


def _registry_spec(scope: str, cfg: dict, key: str, label: str,
                   size_divisor: int) -> BackboneSpec:
    try:
        registry = registry_for(scope)
    except BackboneError as exc:
        if scope not in SCOPES:
            raise
        # The library is missing or broken here: report this backbone as
        # failed in the table and let the run go on.
        reason = str(exc)

        def unavailable() -> nn.Module:
            raise BackboneError(reason)
        return BackboneSpec(key=key, label=label, family='peer',
                            build=unavailable, size_divisor=size_divisor,
                            source=f'{scope}.{cfg["type"]}',
                            paper=_paper(key))
    if registry.get(cfg['type']) is None:
        raise BackboneError(f'{scope} has no backbone {cfg["type"]!r} in its '
                            'MODELS registry.')
    return BackboneSpec(key=key, label=label, family='peer',
                        build=lambda: _registry_build(scope, cfg),
                        size_divisor=size_divisor,
                        source=f'{scope}.{cfg["type"]}', paper=_paper(key))


_REGISTRY_RE = re.compile(r'^(?P<scope>mm\w+)\.(?P<type>\w+)(?P<kwargs>\{.*\})?$',
                          re.DOTALL)


# --------------------------------------------------------------------------
# Configs.
# --------------------------------------------------------------------------
def _config_spec(path: str) -> BackboneSpec:
    if not os.path.isfile(path):
        raise BackboneError(f'Config file not found: {path!r}.')
    from mmengine.config import Config
    cfg = Config.fromfile(path)
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
        att = backbone.get('attention', 'global')
        chunks = backbone.get('window_chunks', 1)
        for layout, (kwargs, _) in IFORMER_LAYOUTS.items():
            if kwargs == dict(attention=att, window_chunks=chunks):
                paper = _paper(f'iformer-{arch}:{layout}')
    return BackboneSpec(
        key=f'config:{name}', label=f'{name} (config backbone)',
        family='iformer' if is_iformer else 'peer',
        build=lambda: _registry_build(scope, backbone), size_divisor=32,
        source=f'{path} [{scope or "root"}.{btype}]', paper=paper)


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
        if cfg['type'] == 'EfficientFormer':
            spec.adapt = resize_attention_biases
        return spec
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
        f'file (.py), a peer preset ({", ".join(sorted(PEERS))}) or '
        'SCOPE.Type from the mmdet/mmseg/mmpretrain registries.')


def table17_specs(arch: str = 'm') -> list:
    """iFormer-``arch`` in Table 17's three layouts."""
    return [_iformer_spec(arch, layout) for layout in TABLE17_LAYOUTS]


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
