"""Prepare a backbone for deployment and export it (torch.export, ONNX)."""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import Any, Dict, List, Sequence, Tuple

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


class ImageInput(nn.Module):
    """The network behind a Core ML image input: multiplies the input by
    per-channel ``factors`` first (what :class:`~.coreml.ImageNormalisation`
    leaves to the network), or passes it through when there are none."""

    def __init__(self, model: nn.Module, factors=None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer(
            'factors', None if factors is None else
            torch.tensor(factors, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor):
        if self.factors is not None:
            x = x * self.factors
        return self.model(x)


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


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm layers left in ``model`` (what a fold did not remove)."""
    return sum(isinstance(m, _BN_TYPES) for m in model.modules())


def _fold_into_conv(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A new conv computing ``bn(conv(x))`` in eval mode."""
    fused = copy.deepcopy(conv)
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    scale = gamma / std
    shape = (-1, ) + (1, ) * (conv.weight.dim() - 1)
    fused.weight = nn.Parameter(conv.weight * scale.reshape(shape))
    bias = conv.bias if conv.bias is not None else \
        torch.zeros_like(bn.running_mean)
    fused.bias = nn.Parameter((bias - bn.running_mean) * scale + beta)
    return fused


@torch.no_grad()
def _fold_structural(model: nn.Module) -> int:
    """Fold Conv-BN pairs whose order the module structure guarantees:
    consecutive children of an ``nn.Sequential`` and mmcv ``ConvModule``s
    whose order starts with ``conv, norm``. Works in place; returns the
    number of BN layers folded."""
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, bn = module._modules[first], module._modules[second]
                if isinstance(conv, _CONV_TYPES) and \
                        isinstance(bn, _BN_TYPES) and bn.track_running_stats:
                    module._modules[first] = _fold_into_conv(conv, bn)
                    module._modules[second] = nn.Identity()
                    folded += 1
        norm_name = getattr(module, 'norm_name', None)
        order = tuple(getattr(module, 'order', ()))
        conv = getattr(module, 'conv', None)
        if norm_name and order[:2] == ('conv', 'norm') and \
                isinstance(conv, _CONV_TYPES):
            bn = getattr(module, norm_name, None)
            if isinstance(bn, _BN_TYPES) and bn.track_running_stats:
                module.conv = _fold_into_conv(conv, bn)
                setattr(module, norm_name, nn.Identity())
                folded += 1
    return folded


@torch.no_grad()
def fold_conv_bn_fx(model: nn.Module) -> Tuple[nn.Module, Dict[str, Any]]:
    """Fold every ``Conv -> BatchNorm`` pair of ``model`` (eval mode).

    First a ``torch.fx`` graph pass: a BN whose only input is a convolution
    that nothing else reads is merged into that convolution. Where
    ``torch.fx.symbolic_trace`` cannot trace the network (data-dependent
    control flow), a structural pass on a copy folds the pairs whose order
    the modules guarantee (``nn.Sequential`` neighbours, mmcv
    ``ConvModule``). Returns ``(module, info)``; ``info`` says how many BN
    layers there were, how many were folded, by which method, and why the
    graph pass could not run (``error``). The input module is not changed.
    """
    import torch.fx as fx
    if isinstance(model, TupleOutputs):
        inner, info = fold_conv_bn_fx(model.backbone)
        if inner is model.backbone:
            return model, info
        wrapped = TupleOutputs(inner)
        wrapped.eval()
        return wrapped, info
    model.eval()
    before = count_batchnorms(model)
    info: Dict[str, Any] = dict(method='torch.fx Conv-BN fold',
                                batchnorms=before, folded=0)
    if before == 0:
        info['left'] = 0
        return model, info
    try:
        graph_module = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001  (untraceable: fall back)
        info['error'] = (f'torch.fx cannot trace it: {type(exc).__name__}: '
                         f'{str(exc).splitlines()[0][:120]}')
        copy_ = copy.deepcopy(model)
        folded = _fold_structural(copy_)
        info.update(method='structural Conv-BN fold (Sequential, '
                    'ConvModule)', folded=folded,
                    left=count_batchnorms(copy_))
        copy_.eval()  # some backbones' train() returns None, not self
        return (copy_ if folded else model), info
    modules = dict(graph_module.named_modules())
    folded = 0
    for node in list(graph_module.graph.nodes):
        if node.op != 'call_module' or not isinstance(
                modules.get(node.target), _BN_TYPES):
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == 'call_module' and
                isinstance(modules.get(src.target), _CONV_TYPES) and
                len(src.users) == 1):
            continue
        conv, bn = modules[src.target], modules[node.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        fused = _fold_into_conv(conv, bn)
        parent, _, name = src.target.rpartition('.')
        setattr(graph_module.get_submodule(parent) if parent else
                graph_module, name, fused)
        modules[src.target] = fused
        node.replace_all_uses_with(src)
        graph_module.graph.erase_node(node)
        folded += 1
    graph_module.graph.eliminate_dead_code()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    graph_module.eval()
    info.update(folded=folded, left=count_batchnorms(graph_module))
    return graph_module, info


def fold_label(info: Dict[str, Any]) -> str:
    """``fused`` only when no BatchNorm is left; otherwise ``unfused`` or
    ``partly fused``, with the counts."""
    total, left = info.get('batchnorms', 0), info.get('left', 0)
    if left == 0:
        return 'fused'
    if left == total:
        return 'unfused'
    return f'partly fused ({total - left}/{total} BN folded)'


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
