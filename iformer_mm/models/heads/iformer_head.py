"""The authors' classification head for mmpretrain: BatchNorm1d + Linear."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.registry import MODELS
from mmpretrain.models.heads import ClsHead

from ..backbones.iformer import NormLinear


@MODELS.register_module()
class IFormerClsHead(ClsHead):
    """iFormer classifier head (``head`` and, if distilled, ``head_dist``).

    With ``distillation=True`` the score is the mean of the two heads, as at
    inference in the authors' code; without a teacher both heads are trained
    on the labels through that mean. Parameter names (``head.bn``,
    ``head.l``, ``head_dist.*``) match the released checkpoints after
    conversion, so a full classifier loads with no missing or unexpected
    keys.

    Args:
        num_classes (int): Number of classes.
        in_channels (int): Channels of the last backbone stage.
        distillation (bool): Add the distillation head. Defaults to False.
        drop_rate (float): Dropout before the head. Defaults to 0.
        **kwargs: ``loss``, ``topk``, ``cal_acc``, ``init_cfg`` of
            :class:`mmpretrain.models.heads.ClsHead`.
    """

    def __init__(self, num_classes: int, in_channels: int,
                 distillation: bool = False, drop_rate: float = 0.,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes <= 0:
            raise ValueError(f'num_classes must be positive, got {num_classes}.')
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.distillation = distillation
        self.drop = nn.Dropout(drop_rate)
        self.head = NormLinear(in_channels, num_classes)
        self.head_dist = (NormLinear(in_channels, num_classes)
                          if distillation else None)

    def pre_logits(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        if x.dim() == 4:  # no neck: pool here
            x = x.mean((2, 3))
        return self.drop(x)

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        x = self.pre_logits(feats)
        if self.head_dist is None:
            return self.head(x)
        return (self.head(x) + self.head_dist(x)) / 2

    @torch.no_grad()
    def fuse(self) -> 'IFormerClsHead':
        """Fold BN into the linear; a distilled pair becomes one linear."""
        if isinstance(self.head, nn.Linear):
            return self
        head = self.head.fuse()
        if self.head_dist is not None:
            dist = self.head_dist.fuse()
            head.weight.copy_((head.weight + dist.weight) / 2)
            head.bias.copy_((head.bias + dist.bias) / 2)
            self.head_dist = None
        self.head = head
        return self
