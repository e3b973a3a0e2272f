"""iFormer backbone (Zheng, ICLR 2025) for OpenMMLab 2.0.

The file reads top to bottom: layers that fold for deployment (``ConvNorm``,
``NormLinear``), the residual wrapper, the four block types of the paper
(``ConvBlock``, ``RepCPE``, ``SHMABlock``, ``FFN``), window partitioning with
channel chunking (paper Appendix F), the attention layouts, the stage, the
network, and the authors' named networks as presets
(:data:`AUTHORS_PRESETS`).

Parameter names follow the layout used by timm's ``iformer_*`` models
(``stem.conv1.c``, ``stages.2.blocks.9.mixer.module.q.bn`` ...), so timm
weights load without renaming and the authors' release format maps onto them
with a fixed set of rules (see :mod:`iformer_mm.models.checkpoint`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

# --------------------------------------------------------------------------
# Variants as data (paper Table 15 and the authors' release).
# ``attn_groups``: CPE + SHMA + FFN groups per stage; ``qk_reduction``: R,
# the query/key width is C / R (None for a stage without SHMA).
# --------------------------------------------------------------------------
ARCH_ZOO: Dict[str, dict] = {
    't': dict(dims=(32, 64, 128, 256), depths=(2, 2, 16, 6),
              attn_groups=(0, 0, 3, 2), qk_reduction=(None, None, 2, 4),
              conv_ratio=3, ffn_ratio=2, layer_scale_init_value=0.),
    's': dict(dims=(32, 64, 176, 320), depths=(2, 2, 19, 6),
              attn_groups=(0, 0, 3, 2), qk_reduction=(None, None, 2, 4),
              conv_ratio=4, ffn_ratio=3, layer_scale_init_value=0.),
    'm': dict(dims=(48, 96, 192, 384), depths=(2, 2, 22, 6),
              attn_groups=(0, 0, 4, 2), qk_reduction=(None, None, 2, 4),
              conv_ratio=4, ffn_ratio=3, layer_scale_init_value=0.),
    'l': dict(dims=(48, 96, 256, 384), depths=(2, 2, 33, 6),
              attn_groups=(0, 0, 8, 2), qk_reduction=(None, None, 2, 4),
              conv_ratio=4, ffn_ratio=3, layer_scale_init_value=0.),
    'l2': dict(dims=(64, 128, 256, 512), depths=(3, 3, 46, 9),
               attn_groups=(0, 0, 11, 3), qk_reduction=(None, None, 2, 4),
               conv_ratio=4, ffn_ratio=3, layer_scale_init_value=0.),
    'h': dict(dims=(96, 192, 384, 768), depths=(5, 5, 60, 18),
              attn_groups=(0, 0, 15, 6), qk_reduction=(None, None, 1, 1),
              conv_ratio=4, ffn_ratio=4, layer_scale_init_value=1e-6),
}

# Layout of the authors' released detection/segmentation code: which stage-3
# SHMA blocks attend in windows; the window is reversed right after the SHMA
# of the last windowed block, stage 4 stays global. M windows all four
# stage-3 blocks, L and L2 all but the last. The authors released no dense
# models for T, S and H; for them the preset follows L (all but the last).
AUTHORS_WINDOWED_STAGE3 = {'m': 'all', 'l': 'all_but_last',
                           'l2': 'all_but_last', 't': 'all_but_last',
                           's': 'all_but_last', 'h': 'all_but_last'}

ATTENTION_MODES = ('global', 'window', 'hybrid')

#: How windows treat the zeros added to reach a multiple of the window size.
#: ``'mask'``: padded keys are masked out of SHMA and the padding is re-zeroed
#: before every CPE, so the valid tokens come out as if the map had not been
#: padded (size-invariant). ``'zeros'``: the map is zero-padded once at the
#: partition and nothing is masked; the padded tokens take part in SHMA, CPE
#: and FFN until the reverse crops them (the authors' released code).
WINDOW_PADDING_MODES = ('mask', 'zeros')


# --------------------------------------------------------------------------
# Layers that fold for deployment.
# --------------------------------------------------------------------------
def _fold_bn(bn: nn.BatchNorm1d | nn.BatchNorm2d):
    """Return (scale, shift) such that ``bn(x) == x * scale + shift``."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return scale, shift


class ConvNorm(nn.Sequential):
    """Bias-free convolution followed by BatchNorm (``c``, ``bn``)."""

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.add_module('c', nn.Conv2d(in_channels, out_channels, kernel_size,
                                       stride, padding, groups=groups,
                                       bias=False))
        self.add_module('bn', nn.BatchNorm2d(out_channels))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        conv, bn = self.c, self.bn
        scale, shift = _fold_bn(bn)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels,
                          conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups, bias=True,
                          device=conv.weight.device, dtype=conv.weight.dtype)
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(shift)
        return fused


class NormLinear(nn.Sequential):
    """BatchNorm1d followed by Linear (``bn``, ``l``): the authors' head."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.add_module('bn', nn.BatchNorm1d(in_features))
        self.add_module('l', nn.Linear(in_features, out_features))
        nn.init.trunc_normal_(self.l.weight, std=0.02)
        nn.init.zeros_(self.l.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        scale, shift = _fold_bn(self.bn)
        fused = nn.Linear(self.l.in_features, self.l.out_features,
                          device=self.l.weight.device,
                          dtype=self.l.weight.dtype)
        fused.weight.copy_(self.l.weight * scale[None, :])
        fused.bias.copy_(self.l.weight @ shift + self.l.bias)
        return fused


class _DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode): the light
    install's stand-in for mmcv's :class:`~mmcv.cnn.bricks.DropPath`."""

    def __init__(self, drop_prob: float = 0.) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0. or not self.training:
            return x
        keep = 1. - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


try:  # mmcv's DropPath (timm's algorithm), as mmdet's and mmseg's backbones
    from mmcv.cnn.bricks.drop import DropPath
except ImportError:  # the light install (no mmcv): timm's, else ours
    try:
        from timm.layers import DropPath
    except ImportError:
        DropPath = _DropPath


class Residual(nn.Module):
    """``x + drop_path(gamma * module(x))``; ``gamma`` only with layer scale."""

    def __init__(self, module: nn.Module, drop_path: float = 0.,
                 layer_scale_init_value: float = 0.,
                 dim: Optional[int] = None) -> None:
        super().__init__()
        self.module = module
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if layer_scale_init_value > 0:
            assert dim is not None
            self.gamma = nn.Parameter(
                torch.full((1, dim, 1, 1), float(layer_scale_init_value)))
        else:
            self.gamma = None

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        y = self.module(x, *args)
        if self.gamma is not None:
            y = self.gamma * y
        return x + self.drop_path(y)


# --------------------------------------------------------------------------
# The four block types.
# --------------------------------------------------------------------------
class ConvBlock(nn.Module):
    """Depthwise 7x7 Conv-BN, 1x1 Conv-BN to r*C, GELU, 1x1 Conv-BN to C."""

    def __init__(self, dim: int, ratio: int, kernel_size: int = 7,
                 drop_path: float = 0., layer_scale_init_value: float = 0.):
        super().__init__()
        self.mixer = Residual(
            nn.Sequential(
                ConvNorm(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim),
                ConvNorm(dim, dim * ratio), nn.GELU(),
                ConvNorm(dim * ratio, dim)),
            drop_path, layer_scale_init_value, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x)


class FFN(nn.Module):
    """1x1 Conv-BN to r*C, GELU, 1x1 Conv-BN to C, residual."""

    def __init__(self, dim: int, ratio: int, drop_path: float = 0.,
                 layer_scale_init_value: float = 0.) -> None:
        super().__init__()
        self.mixer = Residual(
            nn.Sequential(ConvNorm(dim, dim * ratio), nn.GELU(),
                          ConvNorm(dim * ratio, dim)),
            drop_path, layer_scale_init_value, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x)


class RepCPE(nn.Module):
    """Conditional positional encoding: residual depthwise 3x3 Conv-BN.

    ``fuse()`` folds BN and the identity into one depthwise convolution.
    """

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.cpe = Residual(
            ConvNorm(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cpe(x)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        conv = self.cpe.module.fuse()
        kh, kw = conv.kernel_size
        conv.weight[:, 0, kh // 2, kw // 2] += 1
        return conv


class SHMA(nn.Module):
    """Single-head modulation attention.

    ``[V, G] = sigmoid(BN(W_vg x))``, ``Q, K = BN(W_q x), BN(W_k x)`` of width
    ``C / R``, ``A = softmax(Q^T K / sqrt(C / R))``,
    ``out = BN(W_o ((V A^T) * G))``.

    The module works on any batch of maps, so a batch of windows is simply a
    larger batch. ``key_valid`` (``[B, 1, N]`` bool) masks padded tokens out
    of the keys.

    Args:
        dim (int): Channels in and out.
        qk_reduction (int): R; the query/key width is ``dim // R``.
        ratio (int): Value width as a multiple of ``dim``. Defaults to 1.
        fused_attn (bool): Compute ``softmax(Q^T K * scale) V`` with
            :func:`torch.nn.functional.scaled_dot_product_attention` (the
            authors' ``*_faster`` networks, ``fa1`` in their block strings)
            instead of explicit matmul / softmax / matmul. Same scale, same
            key mask (passed as a boolean ``attn_mask``), same result up to
            rounding. Defaults to False.
    """

    def __init__(self, dim: int, qk_reduction: int, ratio: int = 1,
                 fused_attn: bool = False) -> None:
        super().__init__()
        mid = dim * ratio
        dim_qk = dim // qk_reduction
        self.scale = dim_qk ** -0.5
        self.fused_attn = bool(fused_attn)
        self.q = ConvNorm(dim, dim_qk)
        self.k = ConvNorm(dim, dim_qk)
        self.v_gate = ConvNorm(dim, 2 * mid)
        self.proj = ConvNorm(mid, dim)

    def forward(self, x: torch.Tensor,
                key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, _, h, w = x.shape
        v, gate = torch.sigmoid(self.v_gate(x)).chunk(2, dim=1)
        q = self.q(x).flatten(2)  # B, Cqk, N
        k = self.k(x).flatten(2)
        if self.fused_attn:
            # [B, N, C] operands; a bool mask is True where a key takes part.
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2),
                v.flatten(2).transpose(1, 2), attn_mask=key_valid,
                scale=self.scale)  # B, N, Cv
            out = out.transpose(1, 2).reshape(b, -1, h, w)
        else:
            attn = (q.transpose(1, 2) * self.scale) @ k  # B, N, N
            if key_valid is not None:
                attn = attn.masked_fill(~key_valid,
                                        torch.finfo(attn.dtype).min)
            attn = attn.softmax(dim=-1)
            out = (v.flatten(2) @ attn.transpose(1, 2)).view(b, -1, h, w)
        return self.proj(out * gate)

    def extra_repr(self) -> str:
        return f'fused_attn={self.fused_attn}'


class SHMABlock(nn.Module):
    """Residual SHMA with optional drop path and layer scale."""

    def __init__(self, dim: int, qk_reduction: int, drop_path: float = 0.,
                 layer_scale_init_value: float = 0.,
                 fused_attn: bool = False) -> None:
        super().__init__()
        self.mixer = Residual(SHMA(dim, qk_reduction, fused_attn=fused_attn),
                              drop_path, layer_scale_init_value, dim)

    def forward(self, x: torch.Tensor,
                key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.mixer(x, key_valid)


# --------------------------------------------------------------------------
# Window partitioning with channel chunking (paper Appendix F).
# --------------------------------------------------------------------------
def window_partition(x: torch.Tensor, window_size: int,
                     chunks: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B * H/ws * W/ws, C, ws, ws]``.

    Windows are ordered batch first, then row-major over the map. No tensor
    of rank above 5 is formed (Core ML's limit; coremltools expands every
    rank-6 reshape/transpose into a chain of about a dozen ops): with a
    batch of one the window grid is a single rank-5 transpose; otherwise the
    map is split along H first (the window rows move to the batch axis), then
    along W.

    With ``chunks > 1`` the channels are split into ``chunks`` groups that are
    rearranged one after the other and concatenated (channel chunking, paper
    Appendix F); the result is identical, only the size of each transpose
    changes.
    """
    if chunks > 1:
        return torch.cat([window_partition(part, window_size, 1)
                          for part in x.chunk(chunks, dim=1)], dim=1)
    b, c, h, w = x.shape
    ws = window_size
    nh, nw = h // ws, w // ws
    if b == 1:
        # [C, nh, ws, nw, ws] -> [nh, nw, C, ws, ws]
        x = x.reshape(c, nh, ws, nw, ws).permute(1, 3, 0, 2, 4)
        return x.reshape(nh * nw, c, ws, ws)
    # rows of windows to the batch: [B, C, nh, ws, W] -> [B, nh, C, ws, W]
    x = x.reshape(b, c, nh, ws, w).permute(0, 2, 1, 3, 4)
    x = x.reshape(b * nh, c, ws, w)
    # then columns: [B*nh, C, ws, nw, ws] -> [B*nh, nw, C, ws, ws]
    x = x.reshape(b * nh, c, ws, nw, ws).permute(0, 3, 1, 2, 4)
    return x.reshape(b * nh * nw, c, ws, ws)


def window_reverse(windows: torch.Tensor, window_size: int, height: int,
                   width: int, chunks: int) -> torch.Tensor:
    """Inverse of :func:`window_partition` for a padded ``height x width``
    map (no tensor of rank above 5 either)."""
    if chunks > 1:
        return torch.cat([window_reverse(part, window_size, height, width, 1)
                          for part in windows.chunk(chunks, dim=1)], dim=1)
    ws = window_size
    nh, nw = height // ws, width // ws
    n, c = windows.shape[:2]
    b = n // (nh * nw)
    if b == 1:
        # [nh, nw, C, ws, ws] -> [C, nh, ws, nw, ws]
        x = windows.reshape(nh, nw, c, ws, ws).permute(2, 0, 3, 1, 4)
        return x.reshape(1, c, height, width)
    # columns back: [B*nh, nw, C, ws, ws] -> [B*nh, C, ws, nw, ws]
    x = windows.reshape(b * nh, nw, c, ws, ws).permute(0, 2, 3, 1, 4)
    x = x.reshape(b * nh, c, ws, width)
    # rows back: [B, nh, C, ws, W] -> [B, C, nh, ws, W]
    x = x.reshape(b, nh, c, ws, width).permute(0, 2, 1, 3, 4)
    return x.reshape(b, c, height, width)


@dataclass
class _WindowState:
    """What the reverse needs, and the padding masks (None when unpadded or
    with ``window_padding='zeros'``). ``single``: the padded map is one
    window, so partition and reverse are identities and are skipped."""
    height: int
    width: int
    padded_height: int
    padded_width: int
    single: bool = False
    valid: Optional[torch.Tensor] = None      # [B*nW, 1, ws, ws] float
    key_valid: Optional[torch.Tensor] = None  # [B*nW, 1, ws*ws] bool


@dataclass(frozen=True)
class StageLayout:
    """Where a stage partitions into windows and where it reverses.

    Block indices refer to the stage's block list; ``partition_before`` and
    ``reverse_before`` are None for a global stage. ``reverse_before`` equal
    to the number of blocks means "at the end of the stage".
    """
    partition_before: Optional[int] = None
    reverse_before: Optional[int] = None

    @property
    def windowed(self) -> bool:
        return self.partition_before is not None


def _resolve_layout(spec, num_prefix: int, num_groups: int,
                    num_blocks: int) -> StageLayout:
    """Turn a per-stage attention spec into block indices.

    ``spec`` is ``'global'``, ``'window'``, ``'hybrid'`` or a dict
    ``dict(windowed=[bool per attention group], reverse='before_next_attn'
    | 'after_attn')``. The windowed groups must be consecutive.
    """
    if num_groups == 0:
        return StageLayout()
    if isinstance(spec, str):
        if spec == 'global':
            return StageLayout()
        if spec == 'window':
            spec = dict(windowed=[True] * num_groups, reverse='after_attn')
        elif spec == 'hybrid':
            spec = dict(windowed=[True] * (num_groups - 1) + [False],
                        reverse='before_next_attn')
        else:
            raise ValueError(f'Unknown attention mode {spec!r}; expected one '
                             f"of {ATTENTION_MODES + ('authors', )} or a "
                             f'dict.')
    if not isinstance(spec, dict) or 'windowed' not in spec:
        raise TypeError('A per-stage attention layout must be a string or a '
                        "dict(windowed=[...], reverse='before_next_attn' | "
                        f"'after_attn'), got {spec!r}.")
    windowed = [bool(v) for v in spec['windowed']]
    reverse = spec.get('reverse', 'before_next_attn')
    if len(windowed) != num_groups:
        raise ValueError(f'Layout {spec!r} lists {len(windowed)} attention '
                         f'blocks but the stage has {num_groups}.')
    if reverse not in ('before_next_attn', 'after_attn'):
        raise ValueError(f"reverse must be 'before_next_attn' or "
                         f"'after_attn', got {reverse!r}.")
    idx = [i for i, v in enumerate(windowed) if v]
    if not idx:
        return StageLayout()
    first, last = idx[0], idx[-1]
    if idx != list(range(first, last + 1)):
        raise ValueError(f'Windowed attention blocks must be consecutive, got '
                         f'{windowed}.')

    def shma_index(g):  # block index of group g's SHMA (CPE, SHMA, FFN)
        return num_prefix + 3 * g + 1

    if reverse == 'before_next_attn' and last + 1 < num_groups:
        reverse_before = shma_index(last + 1)
    else:
        reverse_before = shma_index(last) + 1
    return StageLayout(shma_index(first), min(reverse_before, num_blocks))


def resolve_attention(attention, arch_name: Optional[str],
                      attn_groups: Sequence[int]) -> List:
    """Expand ``attention`` into one spec per stage."""
    if isinstance(attention, str) and attention == 'authors':
        if arch_name not in AUTHORS_WINDOWED_STAGE3:
            raise ValueError("attention='authors' needs a named arch, one of "
                             f'{sorted(AUTHORS_WINDOWED_STAGE3)}.')
        n3 = attn_groups[2]
        kind = AUTHORS_WINDOWED_STAGE3[arch_name]
        windowed = [True] * n3 if kind == 'all' else [True] * (n3 - 1) + [False]
        stage3 = dict(windowed=windowed, reverse='after_attn')
        return ['global', 'global', stage3, 'global']
    valid = ATTENTION_MODES + ('authors', )
    if isinstance(attention, str) and attention not in valid:
        raise ValueError(f'Unknown attention {attention!r}; expected one of '
                         f'{valid}, a per-stage list or a dict.')
    if isinstance(attention, (str, dict)):
        return [attention] * len(attn_groups)
    attention = list(attention)
    if len(attention) != len(attn_groups):
        raise ValueError(f'attention lists {len(attention)} stages, the '
                         f'network has {len(attn_groups)}.')
    return attention


# --------------------------------------------------------------------------
# Stem, stage and network.
# --------------------------------------------------------------------------
class Stem(nn.Module):
    """Conv-BN 5x5 s2 to d/2, GELU, Conv-BN 5x5 s2 to 2d, GELU, Conv-BN 1x1."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = ConvNorm(in_channels, mid, 5, 2, 2)
        self.act1 = nn.GELU()
        self.conv2 = ConvNorm(mid, 2 * out_channels, 5, 2, 2)
        self.act2 = nn.GELU()
        self.conv3 = ConvNorm(2 * out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))


def _check_window_padding(window_padding) -> str:
    if window_padding not in WINDOW_PADDING_MODES:
        raise ValueError(f'window_padding must be one of '
                         f'{WINDOW_PADDING_MODES} (or None for the default '
                         f'of the attention layout), got {window_padding!r}.')
    return window_padding


class IFormerStage(nn.Module):
    """Optional Conv-BN 3x3 s2 downsample, then the stage's blocks.

    Blocks: ConvBlocks, then ``num_groups`` x (CPE, SHMA, FFN), then one
    ConvBlock (stages with attention); ConvBlocks only otherwise. Window
    partition / reverse happen at the positions given by ``layout``.

    Args:
        downsample (bool, optional): start with the Conv-BN 3x3 stride-2
            downsample. ``None`` (the default) downsamples when the width
            changes; :class:`IFormer` passes ``True`` for every stage but
            the first, so a custom arch with equal consecutive widths
            still halves the resolution at each stage.
        window_padding (str): ``'mask'`` or ``'zeros'``, see
            :class:`IFormer`. Defaults to ``'mask'``.
        fused_attn (bool): SHMA through ``scaled_dot_product_attention``.
            Defaults to False.

    The other arguments are documented by :class:`IFormer`, which builds
    the stages.
    """

    def __init__(self, in_dim: int, dim: int, depth: int, num_groups: int,
                 qk_reduction: Optional[int], conv_ratio: int,
                 ffn_ratio: int, drop_path_rates: Sequence[float],
                 layer_scale_init_value: float, attention='global',
                 window_size: int = 16, window_chunks: int = 1,
                 with_cp: bool = False, window_padding: str = 'mask',
                 fused_attn: bool = False,
                 downsample: Optional[bool] = None) -> None:
        super().__init__()
        if downsample is None:
            downsample = in_dim != dim
        if not downsample and in_dim != dim:
            raise ValueError(f'A stage without downsample keeps its width: '
                             f'in_dim {in_dim} != dim {dim}.')
        self.window_padding = _check_window_padding(window_padding)
        if depth < 3 * num_groups:
            raise ValueError(f'A stage of depth {depth} cannot hold '
                             f'{num_groups} attention groups (3 blocks each).')
        self.downsample = (ConvNorm(in_dim, dim, 3, 2, 1) if downsample
                           else nn.Identity())
        self.window_size = window_size
        self.window_chunks = window_chunks
        self.with_cp = with_cp
        dpr, ls = list(drop_path_rates), layer_scale_init_value
        blocks, roles = [], []
        if num_groups == 0:
            num_prefix, num_suffix = depth, 0
        else:
            num_conv = depth - 3 * num_groups
            num_prefix, num_suffix = (num_conv - 1, 1) if num_conv else (0, 0)
        for j in range(num_prefix):
            blocks.append(ConvBlock(dim, conv_ratio, 7, dpr[j], ls))
            roles.append('conv')
        for g in range(num_groups):
            o = num_prefix + 3 * g
            blocks += [RepCPE(dim, 3),
                       SHMABlock(dim, qk_reduction, dpr[o + 1], ls,
                                 fused_attn),
                       FFN(dim, ffn_ratio, dpr[o + 2], ls)]
            roles += ['cpe', 'attn', 'ffn']
        if num_suffix:
            blocks.append(ConvBlock(dim, conv_ratio, 7, dpr[-1], ls))
            roles.append('conv')
        self.blocks = nn.Sequential(*blocks)
        self.roles = tuple(roles)
        self.layout = _resolve_layout(attention, num_prefix, num_groups,
                                      len(blocks))

    # -- windows -----------------------------------------------------------
    def _partition(self, x: torch.Tensor):
        ws = self.window_size
        b, _, h, w = x.shape
        pad_b, pad_r = (-h) % ws, (-w) % ws
        hp, wp = h + pad_b, w + pad_r
        state = _WindowState(h, w, hp, wp, single=(hp == ws and wp == ws))
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
            if self.window_padding == 'mask':
                valid = x.new_zeros((b, 1, hp, wp))
                valid[:, :, :h, :w] = 1
                if not state.single:
                    valid = window_partition(valid, ws, 1)
                state.valid = valid
                state.key_valid = valid.flatten(2).bool()
        if not state.single:
            x = window_partition(x, ws, self.window_chunks)
        return x, state

    def _reverse(self, x: torch.Tensor, state: _WindowState) -> torch.Tensor:
        if not state.single:
            x = window_reverse(x, self.window_size, state.padded_height,
                               state.padded_width, self.window_chunks)
        if (state.padded_height, state.padded_width) != (state.height,
                                                         state.width):
            x = x[:, :, :state.height, :state.width].contiguous()
        return x

    def _run(self, block: nn.Module, x: torch.Tensor, *args) -> torch.Tensor:
        if self.with_cp and self.training and torch.is_grad_enabled():
            return cp.checkpoint(block, x, *args, use_reentrant=False)
        return block(x, *args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        layout, state = self.layout, None
        for i, (block, role) in enumerate(zip(self.blocks, self.roles)):
            if i == layout.partition_before:
                x, state = self._partition(x)
            elif i == layout.reverse_before and state is not None:
                x, state = self._reverse(x, state), None
            if role == 'attn':
                key_valid = state.key_valid if state is not None else None
                x = self._run(block, x, key_valid)
            else:
                if role == 'cpe' and state is not None and \
                        state.valid is not None:
                    # Padded positions read as zeros, as at the map's edge.
                    x = x * state.valid
                x = self._run(block, x)
        if state is not None:
            x = self._reverse(x, state)
        return x


@MODELS.register_module()
class IFormer(BaseModule):
    """iFormer backbone: ConvNet early stages, SHMA in stages 3 and 4.

    Args:
        arch (str | dict): ``'t'``, ``'s'``, ``'m'``, ``'l'``, ``'l2'``,
            ``'h'``, or a dict with the keys of :data:`ARCH_ZOO` entries
            (``dims``, ``depths``, ``attn_groups``, ``qk_reduction``,
            ``conv_ratio``, ``ffn_ratio``, optional
            ``layer_scale_init_value``). Defaults to ``'t'``.
        in_channels (int): Input channels. Defaults to 3.
        out_indices (Sequence[int]): Stages whose outputs are returned, a
            subset of ``(0, 1, 2, 3)``. Defaults to ``(0, 1, 2, 3)``.
        attention (str | dict | Sequence): Attention layout for dense
            prediction. ``'global'`` (classification), ``'window'`` (every
            SHMA in windows), ``'hybrid'`` (the paper's Table 16: every SHMA
            of a stage but the last in windows, partition once per stage
            between the first group's CPE and SHMA, reverse once between the
            last group's CPE and its global SHMA), ``'authors'`` (the layout
            of the authors' released detection/segmentation code, see
            :data:`AUTHORS_WINDOWED_STAGE3`), or per stage a list of those
            strings or ``dict(windowed=[bool per SHMA block],
            reverse='before_next_attn' | 'after_attn')``.
            Defaults to ``'global'``.
        window_size (int): Window side in tokens. Defaults to 16.
        window_chunks (int): Channel chunks for window partition / reverse
            (Appendix F); must divide the channels of every stage. 1 means
            no chunking. Defaults to 1.
        window_padding (str, optional): What the zeros added to reach a
            multiple of ``window_size`` do (they exist only where a windowed
            map is not a multiple of the window, e.g. COCO's 800x1333).
            ``'mask'``: padded keys are masked out of SHMA and the padding
            is re-zeroed before every CPE, so the valid tokens are computed
            as if the map had not been padded: the function does not depend
            on how far the input is from a multiple of the window.
            ``'zeros'``: the map is zero-padded once at the partition and
            nothing is masked; the padded tokens take part in SHMA, CPE and
            FFN until the reverse crops them: the authors' released
            detection/segmentation code (``WindowPartion`` /
            ``SHMABlock`` in their ``detection/iformer.py``). Use
            ``'zeros'`` with the authors' released dense weights (they were
            trained and evaluated that way); to train your own either works,
            ``'mask'`` being size-invariant. Both are identical when no
            padding is needed (e.g. 512x512). Defaults to None: ``'zeros'``
            for ``attention='authors'``, ``'mask'`` otherwise.
        fused_attn (bool): Compute SHMA with
            :func:`torch.nn.functional.scaled_dot_product_attention` (the
            authors' ``*_faster`` networks) instead of explicit matmul /
            softmax / matmul; same scale and key mask, equal up to rounding.
            Defaults to False.
        drop_path_rate (float): Stochastic depth, linearly increasing over
            all blocks. Defaults to 0.
        layer_scale_init_value (float, optional): Overrides the arch's layer
            scale (0 disables it). Defaults to None (use the arch's).
        frozen_stages (int): Freeze the stem and the first ``frozen_stages``
            stages (their parameters stop requiring gradients and they stay
            in eval mode); -1 freezes nothing, 0 only the stem.
            Defaults to -1.
        norm_eval (bool): Keep every BatchNorm in eval mode (frozen
            statistics) during training. Defaults to False.
        with_cp (bool): Gradient checkpointing per block. Defaults to False.
        init_cfg (dict, optional): ``dict(type='Pretrained',
            checkpoint=...)`` accepts the authors' release format, timm's
            ``iformer_*`` format and our own. Defaults to None.
    """

    arch_zoo = ARCH_ZOO
    num_stages = 4

    def __init__(self, arch: Union[str, dict] = 't', in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 attention='global', window_size: int = 16,
                 window_chunks: int = 1,
                 window_padding: Optional[str] = None,
                 fused_attn: bool = False, drop_path_rate: float = 0.,
                 layer_scale_init_value: Optional[float] = None,
                 frozen_stages: int = -1, norm_eval: bool = False,
                 with_cp: bool = False, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch_name, arch = self._parse_arch(arch)
        self.arch_settings = arch
        self.dims = tuple(arch['dims'])
        depths, groups = arch['depths'], arch['attn_groups']
        if layer_scale_init_value is None:
            layer_scale_init_value = arch.get('layer_scale_init_value', 0.)

        self.out_indices = self._check_out_indices(out_indices)
        if not isinstance(window_size, int) or isinstance(window_size, bool) \
                or window_size < 1:
            raise ValueError(f'window_size must be a positive int, got '
                             f'{window_size!r}.')
        if not isinstance(window_chunks, int) or window_chunks < 1 or any(
                d % window_chunks for d in self.dims):
            raise ValueError(
                f'window_chunks must be a positive int that divides the '
                f'channels of every stage {self.dims}, got {window_chunks!r}.')
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be in [-1, 4], got '
                             f'{frozen_stages}.')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        if window_padding is None:
            window_padding = ('zeros' if isinstance(attention, str)
                              and attention == 'authors' else 'mask')
        self.window_padding = _check_window_padding(window_padding)
        self.fused_attn = bool(fused_attn)
        self.window_size = window_size
        self.window_chunks = window_chunks
        stage_attention = resolve_attention(attention, self.arch_name, groups)

        self.stem = Stem(in_channels, self.dims[0])
        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, prev, start = [], self.dims[0], 0
        for i in range(self.num_stages):
            stages.append(IFormerStage(
                prev, self.dims[i], depths[i], groups[i],
                arch['qk_reduction'][i], arch['conv_ratio'],
                arch['ffn_ratio'], dpr[start:start + depths[i]],
                layer_scale_init_value, stage_attention[i], window_size,
                window_chunks, with_cp, self.window_padding,
                self.fused_attn, downsample=i > 0))
            prev, start = self.dims[i], start + depths[i]
        self.stages = nn.Sequential(*stages)
        self._freeze_stages()

    # -- argument checks -----------------------------------------------------
    @classmethod
    def _parse_arch(cls, arch) -> Tuple[Optional[str], dict]:
        if isinstance(arch, str):
            key = arch.lower()
            if key not in cls.arch_zoo:
                raise ValueError(f'Unknown iFormer arch {arch!r}; valid '
                                 f'archs are {sorted(cls.arch_zoo)} or a '
                                 f'dict with keys {sorted(ARCH_ZOO["t"])}.')
            return key, copy.deepcopy(cls.arch_zoo[key])
        if isinstance(arch, dict):
            required = {'dims', 'depths', 'attn_groups', 'qk_reduction',
                        'conv_ratio', 'ffn_ratio'}
            missing = required - set(arch)
            if missing:
                raise ValueError(f'Custom arch is missing {sorted(missing)}.')
            for key in ('dims', 'depths', 'attn_groups', 'qk_reduction'):
                if len(arch[key]) != cls.num_stages:
                    raise ValueError(f'Custom arch {key} must have 4 entries.')
            for i, (groups, r, dim) in enumerate(zip(
                    arch['attn_groups'], arch['qk_reduction'], arch['dims'])):
                if groups and not (isinstance(r, int) and 0 < r <= dim):
                    raise ValueError(
                        f'Custom arch: stage {i} has {groups} SHMA groups, '
                        f'so qk_reduction[{i}] must be an integer from 1 to '
                        f'dims[{i}] = {dim}, got {r!r}.')
            return None, copy.deepcopy(dict(arch))
        raise TypeError(f'arch must be a str or dict, got {type(arch)}.')

    @classmethod
    def _check_out_indices(cls, out_indices) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        out_indices = tuple(out_indices)
        bad = [i for i in out_indices
               if not isinstance(i, int) or not -cls.num_stages <= i < cls.num_stages]
        if not out_indices or bad:
            raise ValueError(f'out_indices must be a non-empty subset of '
                             f'(0, 1, 2, 3), got {out_indices}.')
        norm = tuple(i % cls.num_stages for i in out_indices)
        if list(norm) != sorted(set(norm)):
            # Outputs come in stage order: a silently reordered or
            # deduplicated list would feed the neck the wrong maps.
            raise ValueError(
                f'out_indices must be increasing without duplicates, got '
                f'{out_indices}; write {tuple(sorted(set(norm)))}.')
        return norm

    # -- freezing ------------------------------------------------------------
    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.stem] + list(self.stages[:self.frozen_stages])

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # -- weights -------------------------------------------------------------
    def init_weights(self) -> None:
        if self.init_cfg is not None and \
                self.init_cfg.get('type') == 'Pretrained':
            from ..checkpoint import load_iformer_checkpoint
            load_iformer_checkpoint(
                self, self.init_cfg['checkpoint'],
                prefix=self.init_cfg.get('prefix'),
                map_location=self.init_cfg.get('map_location', 'cpu'))
            self._is_init = True
            return
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        super().init_weights()

    # -- forward -------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)
            raise ValueError(f'IFormer expects a 4D NCHW tensor, got {shape}.')
        if x.shape[-1] < 32 or x.shape[-2] < 32:
            raise ValueError(f'IFormer needs inputs of at least 32x32, got '
                             f'{tuple(x.shape[-2:])}.')
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
            if i == self.out_indices[-1]:
                break
        return tuple(outs)

    # -- deployment ----------------------------------------------------------
    @torch.no_grad()
    def switch_to_deploy(self) -> 'IFormer':
        """Fold every Conv-BN pair and the CPE identity (eval mode only)."""
        fuse_modules(self)
        self.eval()
        return self


def fuse_modules(module: nn.Module) -> nn.Module:
    """Replace, depth first, every child that has ``fuse()`` by its result."""
    for name, child in list(module.named_children()):
        if hasattr(child, 'fuse'):
            setattr(module, name, child.fuse())
        else:
            fuse_modules(child)
    return module


def switch_to_deploy_all(model: nn.Module) -> nn.Module:
    """Fold BN in every iFormer part of ``model`` (backbone and heads)."""
    model.eval()
    return fuse_modules(model)


# --------------------------------------------------------------------------
# The authors' named networks as IFormer settings.
# --------------------------------------------------------------------------
# Their dense networks (detection/iformer.py; segmentation/iformer.py is the
# same file) window stage 3 ('ws16_wsp1' ... 'ws16_wre1' block strings) on a
# zero-padded map and chunk the partition into 16 channel groups;
# ``*_faster`` adds 'fa1' (SDPA) to every SHMA block.
_DENSE = dict(attention='authors', window_padding='zeros', window_chunks=16)

#: The networks of the authors' released code, by their function name, as
#: :class:`IFormer` keyword arguments (build one with
#: :func:`build_authors_preset`). ``'dense'``: ``detection/iformer.py`` and
#: ``segmentation/iformer.py`` (there is no dense ``iFormer_l2_faster``).
#: ``'cls'``: ``models/iformer.py``, global attention, except its
#: ``*_faster`` networks, which that file says are "only used for latency
#: measurement of detection and segmentation" and which have the dense
#: layout. Its ``iFormer_l2_faster`` has the dims (48, 128, 256, 448), not
#: L2's (64, 128, 256, 512); it is kept as written there.
AUTHORS_PRESETS: Dict[str, Dict[str, dict]] = {
    'dense': {
        'iFormer_m': dict(arch='m', fused_attn=False, **_DENSE),
        'iFormer_m_faster': dict(arch='m', fused_attn=True, **_DENSE),
        'iFormer_l': dict(arch='l', fused_attn=False, **_DENSE),
        'iFormer_l_faster': dict(arch='l', fused_attn=True, **_DENSE),
        'iFormer_l2': dict(arch='l2', fused_attn=False, **_DENSE),
    },
    'cls': {
        'iFormer_t': dict(arch='t', attention='global'),
        'iFormer_s': dict(arch='s', attention='global'),
        'iFormer_m': dict(arch='m', attention='global'),
        'iFormer_m_faster': dict(arch='m', fused_attn=True, **_DENSE),
        'iFormer_l': dict(arch='l', attention='global'),
        'iFormer_l_faster': dict(arch='l', fused_attn=True, **_DENSE),
        'iFormer_l2': dict(arch='l2', attention='global'),
        'iFormer_l2_faster': dict(
            arch=dict(ARCH_ZOO['l2'], dims=(48, 128, 256, 448)),
            # 'authors' needs a named arch: L2's stage-3 layout spelled out
            attention=['global', 'global',
                       dict(windowed=[True] * 10 + [False],
                            reverse='after_attn'), 'global'],
            window_padding='zeros', window_chunks=16, fused_attn=True),
        'iFormer_h': dict(arch='h', attention='global'),
    },
}

#: Where each preset family comes from in the authors' repository.
AUTHORS_PRESET_SOURCES = {
    'dense': 'detection/iformer.py, segmentation/iformer.py',
    'cls': 'models/iformer.py',
}


def authors_preset(name: str, source: str = 'dense') -> dict:
    """IFormer keyword arguments of the authors' network ``name``.

    Args:
        name (str): Their function name, e.g. ``'iFormer_m_faster'``.
        source (str): ``'dense'`` (their detection/segmentation file) or
            ``'cls'`` (their classification file). Defaults to ``'dense'``.
    """
    if source not in AUTHORS_PRESETS:
        raise ValueError(f'source must be one of {sorted(AUTHORS_PRESETS)}, '
                         f'got {source!r}.')
    table = AUTHORS_PRESETS[source]
    if name not in table:
        raise ValueError(f'No network {name!r} in the authors\' '
                         f'{AUTHORS_PRESET_SOURCES[source]}; valid names: '
                         f'{sorted(table)}.')
    return copy.deepcopy(table[name])


def build_authors_preset(name: str, source: str = 'dense',
                         **overrides) -> 'IFormer':
    """Build :class:`IFormer` as the authors' network ``name``.

    ``overrides`` replace preset keys or add others (``out_indices``,
    ``init_cfg``, ...), e.g.
    ``build_authors_preset('iFormer_m_faster', window_chunks=1)``.
    """
    kwargs = authors_preset(name, source)
    kwargs.update(overrides)
    return IFormer(**kwargs)
