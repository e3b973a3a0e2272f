"""Prepare a backbone for deployment and export it (torch.export, ONNX)."""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn


class TupleOutputs(nn.Module):
    """Return a backbone's feature maps as a flat tuple of tensors.

    Backbones return a tensor, a tuple or a list (sometimes nested); the
    exporters and the comparisons want one flat, ordered tuple.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(flatten_outputs(self.backbone(x)))


def flatten_outputs(outputs) -> List[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, (list, tuple)):
        flat: List[torch.Tensor] = []
        for item in outputs:
            flat += flatten_outputs(item)
        return flat
    raise TypeError(f'A backbone output must be tensors, got {type(outputs)}.')


@torch.no_grad()
def prepare_for_deploy(model: nn.Module) -> Tuple[nn.Module, str]:
    """Eval mode, and BN folded where the model knows how.

    iFormer (and any model with ``switch_to_deploy()``) folds every Conv-BN
    pair and the CPE identity. Peers are used in eval mode only: their BN
    layers are left for the converters, which fold Conv+BN themselves
    (coremltools' and ONNX Runtime's graph passes).
    """
    model.eval()
    if callable(getattr(model, 'switch_to_deploy', None)):
        model.switch_to_deploy()
        model.eval()
        return model, 'switch_to_deploy(): BN folded'
    return model, 'eval mode (BN left to the converters)'


def export_program(model: nn.Module, example: torch.Tensor):
    """``torch.export`` the model and decompose to the ATen core set that
    coremltools' torch.export frontend reads."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        exported = torch.export.export(model, (example, ))
        return exported.run_decompositions({})


def export_onnx(model: nn.Module, example: torch.Tensor, path: str,
                output_names: Sequence[str], opset: int = 17) -> str:
    """Export to ONNX with the TorchScript-based exporter (it needs no extra
    packages; the dynamo exporter needs onnxscript)."""
    kwargs = dict(input_names=['image'], output_names=list(output_names),
                  opset_version=opset, do_constant_folding=True)
    with torch.no_grad(), warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        try:
            torch.onnx.export(model, (example, ), path, dynamo=False,
                              **kwargs)
        except TypeError:  # an older torch without the ``dynamo`` switch
            torch.onnx.export(model, (example, ), path, **kwargs)
    return path


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
