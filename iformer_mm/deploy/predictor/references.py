"""Reference networks for the rows of the published iPhone 13 table.

Each row of ``iphone13_coreml.csv`` names a network as the paper does. This
module maps a row's ``key`` to a network that can be built offline with
random weights (latency and the converted op graph do not depend on the
weights), from a library with a well-kept model zoo: timm, torchvision, or
this project's :class:`~iformer_mm.models.backbones.IFormer`.

A built network counts only if its parameter count matches the published one
within :data:`PARAM_TOLERANCE`; otherwise the row is excluded with the reason
(:func:`check_params`). Rows without any offline implementation are listed
in :data:`UNAVAILABLE` with the reason.

Every network is the full classifier at the row's resolution, as the paper's
latency protocol measures (a 1000-class head adds < 1% of the work at 512).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ...utils.complexity import count_params

#: A reference network counts only within this relative parameter error.
PARAM_TOLERANCE = 0.03


@dataclass(frozen=True)
class Reference:
    """How to build the network of one CSV ``key``."""
    library: str            # 'timm', 'torchvision' or 'iformer_mm'
    name: str               # the library's model name
    kwargs: Dict[str, Any] = field(default_factory=dict)
    sized: bool = False     # pass img_size=<resolution> (fixed-size models)


_T = 'timm'
REFERENCES: Dict[str, Reference] = {
    'mobilenetv2-1-0x': Reference(_T, 'mobilenetv2_100'),
    'mobilenetv2-1-4x': Reference(_T, 'mobilenetv2_140'),
    'mobilenetv3-large-0-75x': Reference(_T, 'mobilenetv3_large_075'),
    'mobilenetv3-large-1-0x': Reference(_T, 'mobilenetv3_large_100'),
    'mnv4-conv-s': Reference(_T, 'mobilenetv4_conv_small'),
    'mnv4-conv-m': Reference(_T, 'mobilenetv4_conv_medium'),
    'mnv4-hybrid-m': Reference(_T, 'mobilenetv4_hybrid_medium'),
    'shvit-s1': Reference(_T, 'shvit_s1'),
    'shvit-s2': Reference(_T, 'shvit_s2'),
    'shvit-s4': Reference(_T, 'shvit_s4'),
    'swiftformer-xs': Reference(_T, 'swiftformer_xs'),
    'swiftformer-s': Reference(_T, 'swiftformer_s'),
    'swiftformer-l1': Reference(_T, 'swiftformer_l1'),
    'ghostnetv3-1-0x': Reference(_T, 'ghostnetv3_100'),
    'ghostnetv3-1-3x': Reference(_T, 'ghostnetv3_130'),
    'ghostnetv3-1-6x': Reference(_T, 'ghostnetv3_160'),
    'efficientnet-b0': Reference(_T, 'efficientnet_b0'),
    'efficientnet-b1': Reference(_T, 'efficientnet_b1'),
    'efficientnet-b2': Reference(_T, 'efficientnet_b2'),
    'mobileone-s2': Reference(_T, 'mobileone_s2'),
    'mobileone-s3': Reference(_T, 'mobileone_s3'),
    'mobileone-s4': Reference(_T, 'mobileone_s4'),
    'lowformer-b0': Reference(_T, 'lowformer_b0'),
    'lowformer-b1': Reference(_T, 'lowformer_b1'),
    'lowformer-b1-5': Reference(_T, 'lowformer_b15'),
    'repvit-m1-0': Reference(_T, 'repvit_m1_0'),
    'repvit-m1-1': Reference(_T, 'repvit_m1_1'),
    'repvit-m1-5': Reference(_T, 'repvit_m1_5'),
    'fastvit-t12': Reference(_T, 'fastvit_t12'),
    'fastvit-s12': Reference(_T, 'fastvit_s12'),
    'fastvit-sa12': Reference(_T, 'fastvit_sa12'),
    'fastvit-sa24': Reference(_T, 'fastvit_sa24'),
    'mobilevit-xxs': Reference(_T, 'mobilevit_xxs'),
    'mobilevit-s': Reference(_T, 'mobilevit_s'),
    'mobilevitv2-0-5': Reference(_T, 'mobilevitv2_050'),
    'mobilevitv2-1-0': Reference(_T, 'mobilevitv2_100'),
    'efficientvit-b1-r224': Reference(_T, 'efficientvit_b1'),
    'efficientvit-b1-r288': Reference(_T, 'efficientvit_b1'),
    'resnet18': Reference('torchvision', 'resnet18'),
    'resnet50': Reference('torchvision', 'resnet50'),
    'shufflenetv2-1-0x': Reference('torchvision', 'shufflenet_v2_x1_0'),
    'shufflenetv2-1-5x': Reference('torchvision', 'shufflenet_v2_x1_5'),
    'shufflenet-v2-2-0x': Reference('torchvision', 'shufflenet_v2_x2_0'),
    'poolformer-s12': Reference(_T, 'poolformer_s12'),
    'poolformer-s24': Reference(_T, 'poolformer_s24'),
    'efficientformer-l1': Reference(_T, 'efficientformer_l1', sized=True),
    'efficientformer-l3': Reference(_T, 'efficientformer_l3', sized=True),
    'efficientformerv2-l': Reference(_T, 'efficientformerv2_l', sized=True),
    'convnext-t': Reference(_T, 'convnext_tiny'),
    'pvtv2-b1': Reference(_T, 'pvt_v2_b1'),
    'swin-t': Reference(_T, 'swin_tiny_patch4_window7_224', sized=True),
    # This project's iFormer; the 512 rows use the detection layouts.
    'iformer-t': Reference('iformer_mm', 't'),
    'iformer-s': Reference('iformer_mm', 's'),
    'iformer-m': Reference('iformer_mm', 'm', dict(attention='global')),
    'iformer-l': Reference('iformer_mm', 'l'),
    'iformer-l2': Reference('iformer_mm', 'l2'),
    'iformer-h': Reference('iformer_mm', 'h'),
    'iformer-m-global-shma': Reference('iformer_mm', 'm',
                                       dict(attention='global')),
    'iformer-m-hybrid-shma': Reference('iformer_mm', 'm',
                                       dict(attention='hybrid',
                                            window_chunks=1)),
    'iformer-m-cc-hybrid-shma': Reference('iformer_mm', 'm',
                                          dict(attention='hybrid',
                                               window_chunks=16)),
}

#: iFormer rows at 512 without an explicit layout use the paper's detection
#: layout: channel-chunked hybrid SHMA (Appendix F, n = 16 chunks).
IFORMER_DENSE_DEFAULT = dict(attention='hybrid', window_chunks=16)

#: Rows that no offline library implements (excluded, with this reason).
UNAVAILABLE: Dict[str, str] = {
    key: 'no implementation in timm, torchvision, mmpretrain or mmdet'
    for key in ('sbcformer-xs', 'sbcformer-s', 'sbcformer-b', 'sbcformer-l',
                'cas-vit-xs', 'cas-vit-s', 'cas-vit-m', 'emo-5m',
                'edgevit-xxs', 'edgevit-xs', 'efficientmod-xxs',
                'efficientmod-xs', 'efficientmod-s', 'repnext-m3',
                'repnext-m4', 'mobileformer-294m', 'mobileformer-508m',
                'cmt-ti')}


class _IFormerClassifier(nn.Module):
    """Project iFormer backbone + the classifier head of the paper (global
    average pool, BatchNorm1d, Linear), so that the parameter count is the
    published classifier's."""

    def __init__(self, arch: str, num_classes: int = 1000, **kwargs) -> None:
        super().__init__()
        from iformer_mm.models.backbones import IFormer
        self.backbone = IFormer(arch=arch, out_indices=(3, ), **kwargs)
        dim = self.backbone.dims[-1]
        self.norm = nn.BatchNorm1d(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        x = feats[-1] if isinstance(feats, (tuple, list)) else feats
        return self.fc(self.norm(x.mean((2, 3))))


def reference_for(key: str) -> Reference:
    """The :class:`Reference` of a CSV key: a name of :data:`REFERENCES`,
    or ``timm:<model>`` / ``torchvision:<model>`` for rows users add."""
    if key in REFERENCES:
        return REFERENCES[key]
    library, _, name = key.partition(':')
    if library in ('timm', 'torchvision') and name:
        return Reference(library, name)
    reason = UNAVAILABLE.get(key, 'no reference network is mapped (use a '
                             'key of REFERENCES, timm:<model> or '
                             'torchvision:<model>)')
    raise KeyError(f'{key}: {reason}')


@torch.no_grad()
def resize_timm_attention_biases(model: nn.Module, grid: int) -> int:
    """Give timm EfficientFormer's last-stage attention a ``grid x grid``
    token bias table (timm fixes it at 7x7, i.e. 224 px; ``img_size`` does
    not reach it). The biases are zeros: random weights anyway, and only the
    shapes matter for the converted program."""
    for module in model.modules():
        if not (hasattr(module, 'attention_biases') and
                hasattr(module, 'attention_bias_idxs')):
            continue
        heads = module.attention_biases.shape[0]
        ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid),
                                indexing='ij')
        pos = torch.stack((ys.flatten(), xs.flatten()))
        rel = (pos[..., :, None] - pos[..., None, :]).abs()
        module.attention_biases = nn.Parameter(torch.zeros(heads,
                                                           grid * grid))
        module.attention_bias_idxs = rel[0] * grid + rel[1]
        if hasattr(module, 'attention_bias_cache'):
            module.attention_bias_cache = {}
    return grid


def library_version(library: str) -> str:
    if library == 'iformer_mm':
        from iformer_mm.version import __version__
        return __version__
    module = __import__(library)
    return str(module.__version__)


def build_reference(key: str, resolution: int, **overrides
                    ) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build the eval-mode, deploy-ready network of ``key`` (random weights).

    ``overrides`` update the reference's keyword arguments (the latency
    tool passes an iFormer attention layout). Returns ``(model, info)``;
    ``info`` records the library, model name, version, keyword arguments
    and the parameter count *before* any reparameterisation (the count the
    papers publish).
    """
    ref = reference_for(key)
    kwargs = dict(ref.kwargs, **overrides)
    torch.manual_seed(0)
    if ref.library == 'timm':
        import timm
        if ref.sized:
            kwargs['img_size'] = resolution
        model = timm.create_model(ref.name, pretrained=False, **kwargs)
        if ref.name.startswith('efficientformer_l'):
            kwargs['attention_grid'] = resize_timm_attention_biases(
                model, resolution // 32)
    elif ref.library == 'torchvision':
        import torchvision
        model = getattr(torchvision.models, ref.name)(weights=None, **kwargs)
    elif ref.library == 'iformer_mm':
        if resolution > 256 and 'attention' not in kwargs:
            kwargs.update(IFORMER_DENSE_DEFAULT)
        model = _IFormerClassifier(ref.name, **kwargs)
    else:  # pragma: no cover - the table above is the only source
        raise ValueError(f'Unknown library {ref.library!r}.')
    params = count_params(model)
    model.eval()
    note = deploy(model)
    info = dict(library=ref.library, model=ref.name,
                version=library_version(ref.library), kwargs=kwargs,
                params=params,
                params_deployed=count_params(model),
                deploy=note)
    return model, info


@torch.no_grad()
def deploy(model: nn.Module) -> str:
    """Fold what the model can fold, as an app would ship it: timm's
    reparameterisation (MobileOne, FastViT, RepViT, ...) and iFormer's
    ``switch_to_deploy``; BN elsewhere is folded by coremltools."""
    notes = []
    for module in model.modules():
        if module is not model and callable(
                getattr(module, 'switch_to_deploy', None)):
            module.switch_to_deploy()
            notes.append('switch_to_deploy')
            break
    try:
        from timm.utils.model import reparameterize_model
    except ImportError:
        reparameterize_model = None
    if reparameterize_model is not None:
        before = sum(1 for _ in model.modules())
        reparameterize_model(model, inplace=True)
        if sum(1 for _ in model.modules()) != before:
            notes.append('timm reparameterize_model')
    model.eval()
    return ', '.join(notes) or 'eval mode'


def check_params(built: int, published_m: float,
                 tolerance: float = PARAM_TOLERANCE,
                 deployed: Optional[int] = None) -> Optional[str]:
    """``None`` if ``built`` parameters (or, for a reparameterised network,
    the ``deployed`` count: papers of MobileOne, FastViT, RepViT publish the
    inference-time count) match ``published_m`` millions within
    ``tolerance``; else the reason for excluding the row."""
    counts = [built] + ([deployed] if deployed not in (None, built) else [])
    errs = [n / (published_m * 1e6) - 1 for n in counts]
    if any(abs(e) <= tolerance for e in errs):
        return None
    got = ' / '.join(f'{n / 1e6:.2f}' for n in counts)
    what = ('built / reparameterised network has' if len(counts) > 1
            else 'built network has')
    return (f'{what} {got} M parameters, published {published_m} M '
            f'({", ".join(f"{e:+.1%}" for e in errs)}; tolerance '
            f'{tolerance:.0%})')
