"""Features of a converted Core ML ML program, read from its protobuf.

Everything here comes from the program Core ML would run (after
coremltools' graph passes: Conv+BN folding, fusions), not from PyTorch.
For each non-``const`` operation we take the output shapes from the
program's type annotations and the weight shapes from the ``const`` ops:

* ``macs``: multiply-accumulates of ``conv`` (out elements x Cin/groups x
  kernel area), ``conv_transpose``, ``linear`` (out elements x in features)
  and ``matmul`` (out elements x the contracted size, honouring
  ``transpose_x``); 0 for other ops;
* ``bytes_in`` (activations read, inputs that are not constants),
  ``bytes_out`` (written) and ``bytes_const`` (weights read);
* transposes by size: bytes moved by transposes whose output exceeds
  64 KB / 256 KB / 1 MB (``transpose_bytes_over``);
* tensor ranks and sizes: the largest output of any op, the largest output
  of an activation x activation ``matmul`` (an attention matrix), the
  largest output of rank >= 5.

Per-op records are summed by op type (:func:`program_features`) and by the
coarse classes of :data:`OP_CLASSES` that the cost model uses.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

from ..census import (REARRANGE_OPS, main_block, nbytes, tensor_shape_bits,
                      walk_operations)

#: Bump when the features change meaning (cached features are then stale).
FEATURE_VERSION = 2

#: Transposes are also summed by output size: bytes of the transposes whose
#: output exceeds each of these sizes (the paper's channel chunking turns a
#: few large window-partition transposes into many small ones).
TRANSPOSE_SIZES = (64 * 1024, 256 * 1024, 1024 * 1024)

#: Coarse op classes of the cost model. Ops of no class fall in 'other'.
OP_CLASSES: Dict[str, Tuple[str, ...]] = {
    'conv': ('conv', 'conv_transpose'),         # split into dense / dw below
    'linear': ('linear',),
    'matmul': ('matmul', 'einsum'),
    'elementwise': ('add', 'sub', 'mul', 'real_div', 'maximum', 'minimum',
                    'pow', 'relu', 'relu6', 'clip', 'gelu', 'silu',
                    'sigmoid', 'sigmoid_hard', 'tanh', 'erf', 'exp', 'sqrt',
                    'rsqrt', 'inverse', 'square', 'abs', 'leaky_relu',
                    'elu', 'softplus', 'mish', 'scaled_tanh', 'thresholded_relu',
                    'linear_activation', 'cast', 'floor', 'round', 'sign',
                    'select', 'equal', 'greater', 'less', 'logical_and',
                    'prelu', 'log', 'reciprocal', 'hard_sigmoid',
                    'hard_swish'),
    'norm': ('batch_norm', 'layer_norm', 'instance_norm', 'l2_norm',
             'softmax', 'reduce_mean', 'reduce_sum', 'reduce_max',
             'reduce_min', 'reduce_l2_norm', 'reduce_prod',
             'reduce_sum_square', 'local_response_norm'),
    'pool': ('avg_pool', 'max_pool', 'l2_pool', 'upsample_nearest_neighbor',
             'upsample_bilinear', 'resize_bilinear', 'resize',
             'pixel_shuffle', 'pixel_unshuffle'),
    'transpose': ('transpose',),
    'rearrange': ('reshape', 'concat', 'split', 'slice_by_index',
                  'slice_by_size', 'pad', 'gather', 'gather_along_axis',
                  'tile', 'expand_dims', 'squeeze', 'stack',
                  'space_to_depth', 'depth_to_space', 'sliding_windows',
                  'identity', 'reverse', 'band_part'),
}
_CLASS_OF = {op: cls for cls, ops in OP_CLASSES.items() for op in ops}
#: Classes the features report (conv is split into dense and depthwise).
CLASSES = ('conv', 'conv_dw', 'linear', 'matmul', 'elementwise', 'norm',
           'pool', 'transpose', 'rearrange', 'other')


def _immediate(value) -> Any:
    """A small immediate value (bool / int / float scalar) or None."""
    if value is None or not value.HasField('immediateValue'):
        return None
    imm = value.immediateValue
    if imm.HasField('tensor'):
        t = imm.tensor
        for field in ('bools', 'ints', 'longInts', 'floats', 'doubles'):
            if t.HasField(field):
                vals = list(getattr(t, field).values)
                return vals[0] if len(vals) == 1 else vals
    return None


def op_records(spec) -> List[Dict[str, Any]]:
    """One record per non-const operation of the ``main`` function."""
    function, block = main_block(spec)
    types: Dict[str, Tuple[Optional[Tuple[int, ...]], int]] = {}
    for inp in function.inputs:
        types[inp.name] = tensor_shape_bits(inp.type)
    consts: Dict[str, Any] = {}
    records = []
    for op in walk_operations(block):
        outs = [(o.name, tensor_shape_bits(o.type)) for o in op.outputs]
        for name, sb in outs:
            types[name] = sb
        if op.type == 'const':
            val = op.attributes['val'] if 'val' in op.attributes else None
            consts[outs[0][0]] = _immediate(val)
            continue
        args: Dict[str, List[Tuple[Optional[str], Any]]] = {}
        for arg_name, arg in op.inputs.items():
            args[arg_name] = [(b.name, None) if b.WhichOneof('binding') ==
                              'name' else (None, _immediate(b.value))
                              for b in arg.arguments]

        def shape_of(arg_name: str):
            for name, _ in args.get(arg_name, []):
                if name is not None:
                    return types.get(name, (None, 0))[0]
            return None

        def value_of(arg_name: str):
            for name, imm in args.get(arg_name, []):
                return consts.get(name) if name is not None else imm
            return None

        bytes_in = bytes_const = 0
        for arg_name, binds in args.items():
            for name, _ in binds:
                if name is None:
                    continue
                shape, bits = types.get(name, (None, 0))
                if name in consts:
                    bytes_const += nbytes(shape, bits)
                else:
                    bytes_in += nbytes(shape, bits)
        out_shape, out_bits = outs[0][1] if outs else (None, 0)
        bytes_out = sum(nbytes(*sb) for _, sb in outs)
        out_numel = math.prod(out_shape) if out_shape is not None else 0
        macs = 0
        cls = _CLASS_OF.get(op.type, 'other')
        weight_shape = shape_of('weight')
        if op.type == 'conv' and weight_shape:
            macs = out_numel * math.prod(weight_shape[1:])
            if weight_shape[1] == 1:
                cls = 'conv_dw'
        elif op.type == 'conv_transpose' and weight_shape:
            x_shape = shape_of('x')
            macs = (math.prod(x_shape) if x_shape else 0) * math.prod(
                weight_shape[1:])
        elif op.type == 'linear' and weight_shape:
            macs = out_numel * weight_shape[-1]
        elif op.type == 'matmul':
            x_shape, y_shape = shape_of('x'), shape_of('y')
            if x_shape:
                k = x_shape[-2] if (value_of('transpose_x') and
                                    len(x_shape) > 1) else x_shape[-1]
                macs = out_numel * k
            x_const = any(n in consts for n, _ in args.get('x', []))
            y_const = any(n in consts for n, _ in args.get('y', []))
            if x_const or y_const:
                cls = 'linear'
        records.append(dict(
            type=op.type, cls=cls, macs=macs, bytes_in=bytes_in,
            bytes_out=bytes_out, bytes_const=bytes_const,
            out_shape=list(out_shape) if out_shape is not None else None,
            out_bytes=nbytes(out_shape, out_bits)))
    return records


def summarize(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Sum per-op records by op type and by class; tensor size extremes."""
    by_type: Dict[str, Dict[str, int]] = defaultdict(
        lambda: dict(count=0, macs=0, bytes_in=0, bytes_out=0,
                     bytes_const=0))
    by_class: Dict[str, Dict[str, int]] = {
        c: dict(count=0, macs=0, bytes_in=0, bytes_out=0, bytes_const=0)
        for c in CLASSES}
    largest = largest_attn = largest_rank5 = max_rank = 0
    rank5_bytes = rearrange_bytes = 0
    large_transpose = {str(size): 0 for size in TRANSPOSE_SIZES}
    for r in records:
        if r['type'] == 'transpose':
            for size in TRANSPOSE_SIZES:
                if r['out_bytes'] > size:
                    large_transpose[str(size)] += r['bytes_in'] + \
                        r['bytes_out']
        for target in (by_type[r['type']], by_class[r['cls']]):
            target['count'] += 1
            for k in ('macs', 'bytes_in', 'bytes_out', 'bytes_const'):
                target[k] += r[k]
        largest = max(largest, r['out_bytes'])
        rank = len(r['out_shape']) if r['out_shape'] is not None else 0
        max_rank = max(max_rank, rank)
        if rank >= 5:
            largest_rank5 = max(largest_rank5, r['out_bytes'])
            rank5_bytes += r['bytes_out']
        if r['cls'] == 'matmul':
            largest_attn = max(largest_attn, r['out_bytes'])
        if r['type'] in REARRANGE_OPS:
            rearrange_bytes += r['bytes_out']
    return dict(
        total_ops=len(records),
        macs=sum(r['macs'] for r in records),
        bytes_in=sum(r['bytes_in'] for r in records),
        bytes_out=sum(r['bytes_out'] for r in records),
        bytes_const=sum(r['bytes_const'] for r in records),
        largest_tensor_bytes=largest, largest_matmul_out_bytes=largest_attn,
        largest_rank5_bytes=largest_rank5, rank5_bytes=rank5_bytes,
        max_rank=max_rank, rearrange_bytes=rearrange_bytes,
        transpose_bytes_over=large_transpose,
        by_class=by_class,
        by_type={k: dict(v) for k, v in sorted(by_type.items())})


def program_features(spec) -> Dict[str, Any]:
    """Features of an ML program spec (``MLModel.get_spec()``)."""
    return summarize(op_records(spec))
