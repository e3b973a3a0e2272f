"""Op census of a converted Core ML ML program.

The census is the device-independent side of the latency story: it counts
the operations of the MIL program that Core ML would run, and in particular
the memory-bound rearrangements (``reshape``, ``transpose``, ``concat``,
``split``) that the paper's channel chunking targets (Appendix F). It reads
the program's protobuf only, so it works on any OS.

``total_ops`` counts every operation except ``const`` (constants are data,
not work); ``const_ops`` is reported beside it. ``rearrange_bytes`` adds up
the output sizes of the rearrangement ops and ``largest_bytes_by_op`` the largest
single output of each type: channel chunking trades one big window
partition (a ``transpose``, the op that really copies) for many small ones,
which the op counts alone do not show. ``weight_bytes`` is the size
of the constants stored in the package's weight file (computed from their
declared shape and data type), ``const_bytes`` the size of all constants.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Any, Dict, Iterable, Optional, Tuple

#: The rearrangement ops the census reports one by one.
REARRANGE_OPS = ('reshape', 'transpose', 'concat', 'split')

# MIL DataType enum value -> bits per element (coremltools' MIL.proto).
_DTYPE_BITS = {
    1: 8,     # BOOL
    10: 16,   # FLOAT16
    11: 32,   # FLOAT32
    12: 64,   # FLOAT64
    13: 16,   # BFLOAT16
    21: 8, 22: 16, 23: 32, 24: 64, 25: 4,          # INT8..INT64, INT4
    31: 8, 32: 16, 33: 32, 34: 64, 35: 4,          # UINT8..UINT64, UINT4
    36: 2, 37: 1, 38: 6, 39: 3,                    # UINT2, UINT1, UINT6, UINT3
    40: 8, 41: 8,                                  # FLOAT8 variants
}
_DTYPE_NAMES = {1: 'bool', 10: 'fp16', 11: 'fp32', 12: 'fp64', 13: 'bf16',
                21: 'int8', 22: 'int16', 23: 'int32', 24: 'int64',
                25: 'int4', 31: 'uint8', 32: 'uint16', 33: 'uint32',
                34: 'uint64', 35: 'uint4'}


def _tensor_bytes(value_type) -> int:
    """Bytes of a ``ValueType`` holding a tensor with known dimensions."""
    if not value_type.HasField('tensorType'):
        return 0
    tensor = value_type.tensorType
    numel = 1
    for dim in tensor.dimensions:
        if not dim.HasField('constant'):
            return 0
        numel *= dim.constant.size
    bits = _DTYPE_BITS.get(tensor.dataType, 0)
    return (numel * bits + 7) // 8


def _iter_ops(block) -> Iterable[Any]:
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _iter_ops(inner)


def _load_spec(model_or_spec_or_path):
    """Accept an ``MLModel``, a ``Model_pb2.Model`` spec or a package path."""
    if isinstance(model_or_spec_or_path, (str, os.PathLike)):
        from .coreml import load_package_spec
        return load_package_spec(os.fspath(model_or_spec_or_path))
    get_spec = getattr(model_or_spec_or_path, 'get_spec', None)
    if callable(get_spec):
        return get_spec()
    return model_or_spec_or_path


def census_from_spec(spec, weights_dir: Optional[str] = None) -> Dict[str, Any]:
    """Count the operations of the ``main`` function of an ML program spec.

    Args:
        spec: a ``coremltools.proto.Model_pb2.Model`` whose type is
            ``mlProgram``.
        weights_dir: the package's weights folder, to report the size of the
            weight file on disk as well.
    """
    if spec.WhichOneof('Type') != 'mlProgram':
        raise ValueError('The op census needs an ML program (convert_to='
                         f"'mlprogram'), got a {spec.WhichOneof('Type')!r} "
                         'model.')
    program = spec.mlProgram
    if 'main' not in program.functions:
        raise ValueError('The ML program has no "main" function; functions: '
                         f'{sorted(program.functions)}.')
    function = program.functions['main']
    opset = function.opset
    block = function.block_specializations[opset]

    counts: Counter = Counter()
    weight_bytes = const_bytes = 0
    weight_dtypes: Counter = Counter()
    moved: Counter = Counter()      # output bytes of each rearrangement type
    largest: Counter = Counter()    # the largest single output, per type
    for op in _iter_ops(block):
        counts[op.type] += 1
        if op.type in REARRANGE_OPS:
            nbytes = sum(_tensor_bytes(out.type) for out in op.outputs)
            moved[op.type] += nbytes
            largest[op.type] = max(largest[op.type], nbytes)
        if op.type != 'const' or not op.outputs:
            continue
        nbytes = _tensor_bytes(op.outputs[0].type)
        const_bytes += nbytes
        val = op.attributes.get('val') if 'val' in op.attributes else None
        if val is not None and val.HasField('blobFileValue'):
            weight_bytes += nbytes
            dtype = op.outputs[0].type.tensorType.dataType
            weight_dtypes[_DTYPE_NAMES.get(dtype, str(dtype))] += nbytes

    const_ops = counts.get('const', 0)
    total_ops = sum(counts.values()) - const_ops
    result: Dict[str, Any] = dict(
        opset=opset,
        total_ops=total_ops,
        const_ops=const_ops,
        **{op: counts.get(op, 0) for op in REARRANGE_OPS},
        rearrange_ops=sum(counts.get(op, 0) for op in REARRANGE_OPS),
        rearrange_bytes=sum(moved.values()),
        rearrange_bytes_by_op={op: moved.get(op, 0) for op in REARRANGE_OPS},
        largest_rearrange_bytes=max(largest.values(), default=0),
        largest_bytes_by_op={op: largest.get(op, 0) for op in REARRANGE_OPS},
        weight_bytes=weight_bytes,
        weight_mib=round(weight_bytes / 2**20, 3),
        weight_bytes_by_dtype=dict(weight_dtypes),
        const_bytes=const_bytes,
        op_counts=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    )
    if weights_dir and os.path.isdir(weights_dir):
        result['weights_file_bytes'] = sum(
            os.path.getsize(os.path.join(weights_dir, name))
            for name in os.listdir(weights_dir))
    return result


def op_census(model_or_spec_or_path) -> Dict[str, Any]:
    """Census of an ``MLModel``, a spec, or a saved ``.mlpackage`` path."""
    weights_dir = None
    if isinstance(model_or_spec_or_path, (str, os.PathLike)):
        from .coreml import package_weights_dir
        weights_dir = package_weights_dir(os.fspath(model_or_spec_or_path))
    else:
        weights_dir = getattr(model_or_spec_or_path, 'weights_dir', None)
    return census_from_spec(_load_spec(model_or_spec_or_path), weights_dir)


def census_of_module(model, size, ios_target: str = 'iOS17',
                     fp16: bool = True) -> Dict[str, Any]:
    """Census of a PyTorch backbone converted by this project's pipeline:
    ``torch.export`` -> coremltools ML program (FP32 tensor input, FP16
    compute) at ``size`` (an int or ``(height, width)``), in memory.

    The result also says ``max_rank``: the highest rank of any tensor in the
    ``torch.export`` graph (Core ML supports rank <= 5; coremltools expands
    anything higher into chains of rank-5 reshapes and transposes).
    """
    import torch

    from .coreml import convert_exported_program
    from .export import TupleOutputs, export_program
    height, width = (size, size) if isinstance(size, int) else size
    model = TupleOutputs(model).eval()
    example = torch.zeros(1, 3, height, width)
    with torch.no_grad():
        num_outputs = len(model(example))
    exported = export_program(model, example)
    ranks = [len(node.meta['val'].shape)
             for node in exported.graph.nodes
             if isinstance(node.meta.get('val'), torch.Tensor)]
    mlmodel = convert_exported_program(exported, example.shape, num_outputs,
                                       ios_target, fp16=fp16)
    result = census_from_spec(mlmodel.get_spec())
    result['max_rank'] = max(ranks, default=0)
    return result


#: Core ML ops (``total_ops``) of this project's iFormer at 512x512, FP16,
#: iOS17, coremltools 9.0, torch 2.13, per ``arch:layout``, as measured by
#: ``benchmarks/coreml_vs_authors.py --sweep`` (2-core Linux, README).
MEASURED_OPS_512: Dict[str, int] = {
    'iformer-t:global': 178, 'iformer-t:hybrid': 184,
    'iformer-t:cc-hybrid': 278, 'iformer-t:window': 184,
    'iformer-t:authors': 278, 'iformer-t:authors-fa': 278,
    'iformer-s:global': 193, 'iformer-s:hybrid': 199,
    'iformer-s:cc-hybrid': 293, 'iformer-s:window': 199,
    'iformer-s:authors': 293, 'iformer-s:authors-fa': 293,
    'iformer-m:global': 215, 'iformer-m:hybrid': 221,
    'iformer-m:cc-hybrid': 315, 'iformer-m:window': 221,
    'iformer-m:authors': 315, 'iformer-m:authors-fa': 315,
    'iformer-l:global': 298, 'iformer-l:hybrid': 304,
    'iformer-l:cc-hybrid': 398, 'iformer-l:window': 304,
    'iformer-l:authors': 398, 'iformer-l:authors-fa': 398,
    'iformer-l2:global': 416, 'iformer-l2:hybrid': 422,
    'iformer-l2:cc-hybrid': 516, 'iformer-l2:window': 422,
    'iformer-l2:authors': 516, 'iformer-l2:authors-fa': 516,
    'iformer-h:global': 600, 'iformer-h:hybrid': 606,
    'iformer-h:cc-hybrid': 700, 'iformer-h:window': 606,
    'iformer-h:authors': 700, 'iformer-h:authors-fa': 700,
}
#: Upper bounds on those op counts: the measurement plus 5 ops of headroom
#: (a coremltools pass that changes shape by an op or two is not a
#: regression; the rank-6 window rearrangement was +740 ops on iFormer-M).
#: ``tests/test_census.py`` checks a subset, the sweep checks all.
OP_BUDGETS: Dict[str, int] = {key: ops + 5
                              for key, ops in MEASURED_OPS_512.items()}

#: The authors' own backbones (``detection/iformer.py`` at commit 2a87540 of
#: github.com/nirvanesque/iFormer, BN folded with their
#: ``replace_batchnorm``) through the same pipeline at 512x512:
#: ``(total_ops, rearrange_bytes)``, measured by
#: ``benchmarks/coreml_vs_authors.py --authors-repo ...``.
AUTHORS_CENSUS_512: Dict[str, Tuple[int, int]] = {
    'm': (629, 21430272),
}
