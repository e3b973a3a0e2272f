"""Parameters and multiply-accumulates of a model, as deployed.

MACs are counted with mmengine's ``FlopAnalyzer`` (which reports MACs) on the
BN-folded network: BatchNorm disappears into the convolutions at deployment,
so it is not counted, which is also how the paper's Table 15 counts (the
comparison with the paper: docs/benchmarks.md).
"""
from __future__ import annotations

import copy
from typing import Sequence, Tuple

import torch
import torch.nn as nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, inputs: Tuple, deploy: bool = True) -> int:
    """MACs of one forward pass on ``inputs``.

    ``deploy`` folds BN first (on a copy), as the network runs on a device.
    """
    from mmengine.analysis import FlopAnalyzer

    from ..models.backbones.iformer import switch_to_deploy_all
    model = copy.deepcopy(model).eval()
    if deploy:
        switch_to_deploy_all(model)
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return int(analyzer.total())


def backbone_complexity(arch: str, shape: Sequence[int] = (224, 224),
                        with_head: bool = True, num_classes: int = 1000,
                        **backbone_kwargs) -> dict:
    """Params and MACs of an iFormer variant (optionally with its head)."""
    from ..models.backbones.iformer import IFormer, NormLinear

    class _Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = IFormer(arch, out_indices=(3, ), **backbone_kwargs)
            self.head = NormLinear(self.backbone.dims[-1], num_classes)

        def forward(self, x):
            return self.head(self.backbone(x)[-1].mean((2, 3)))

    model = _Classifier() if with_head else IFormer(
        arch, out_indices=(3, ), **backbone_kwargs)
    x = torch.zeros(1, 3, *shape)
    return dict(params=count_params(model), macs=count_macs(model, (x, )))


class _TensorForward(nn.Module):
    """An OpenMMLab model of ``scope`` as a function of one image tensor."""

    def __init__(self, model: nn.Module, shape: Sequence[int], scope: str):
        super().__init__()
        self.model = model
        self.shape = tuple(shape)
        self.scope = scope

    def forward(self, x):
        if self.scope == 'mmdet':
            from mmdet.structures import DetDataSample as Sample
        elif self.scope == 'mmseg':
            from mmseg.structures import SegDataSample as Sample
        else:  # mmpretrain: no data samples needed
            return self.model(x, mode='tensor')
        h, w = self.shape
        meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                    batch_input_shape=(h, w), scale_factor=(1., 1.))
        samples = [Sample(metainfo=meta) for _ in range(x.shape[0])]
        return self.model._forward(x, samples)


def config_complexity(cfg, shape: Sequence[int], backbone_only: bool = False,
                      deploy: bool = True) -> dict:
    """Params and MACs of a config's backbone or whole model."""
    from mmengine.registry import MODELS

    from ..config import init_scope, strip_pretrained
    scope = init_scope(cfg)
    model_cfg = copy.deepcopy(cfg.model)
    strip_pretrained(model_cfg)  # weights do not change the count
    model = MODELS.build(model_cfg.get('backbone', model_cfg)
                         if backbone_only else model_cfg).eval()
    x = torch.zeros(1, 3, *shape)
    counted = model if backbone_only else _TensorForward(model, shape, scope)
    return dict(params=count_params(model),
                macs=count_macs(counted, (x, ), deploy=deploy))
