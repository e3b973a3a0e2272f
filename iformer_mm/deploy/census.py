"""What a converted Core ML ML program contains: its op census, and the
check of a saved package against the PyTorch model.

The census is the device-independent side of the latency story: it counts
the operations of the MIL program that Core ML would run, and in particular
the memory-bound rearrangements (``reshape``, ``transpose``, ``concat``,
``split``) that the paper's channel chunking targets (Appendix F). It reads
the program's protobuf only, so it works on any OS; so do the helpers that
read a program's tensors and operations (:func:`tensor_shape_bits`,
:func:`walk_operations`, :func:`main_block`), which the latency predictor's
features use too.

``total_ops`` counts every operation except ``const`` (constants are data,
not work); ``const_ops`` is reported beside it. ``rearrange_bytes`` adds up
the output sizes of the rearrangement ops and ``largest_bytes_by_op`` the
largest single output of each type: channel chunking trades one big window
partition (a ``transpose``, the op that really copies) for many small ones,
which the op counts alone do not show. ``weight_bytes`` is the size of the
constants stored in the package's weight file (computed from their declared
shape and data type), ``const_bytes`` the size of all constants.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .coreml import (INPUT_NAME, load_package_spec, package_size_bytes,
                     package_weights_dir)

#: The rearrangement ops the census reports one by one.
REARRANGE_OPS = ('reshape', 'transpose', 'concat', 'split')

#: MIL DataType enum value -> bits per element (coremltools' MIL.proto).
DTYPE_BITS = {
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
#: The names weights are reported by (other data types: by number).
DTYPE_NAMES = {1: 'bool', 10: 'fp16', 11: 'fp32', 12: 'fp64', 13: 'bf16',
               21: 'int8', 22: 'int16', 23: 'int32', 24: 'int64',
               25: 'int4', 31: 'uint8', 32: 'uint16', 33: 'uint32',
               34: 'uint64', 35: 'uint4'}


# --------------------------------------------------------------------------
# Reading a program's protobuf.
# --------------------------------------------------------------------------
def tensor_shape_bits(value_type) -> Tuple[Optional[Tuple[int, ...]], int]:
    """``(shape, bits per element)`` of a tensor ``ValueType``; the shape is
    None when it is not a tensor or has a symbolic dimension (bits 0 for a
    data type without a width)."""
    if not value_type.HasField('tensorType'):
        return None, 0
    tensor = value_type.tensorType
    dims = []
    for dim in tensor.dimensions:
        if not dim.HasField('constant'):
            return None, 0
        dims.append(int(dim.constant.size))
    return tuple(dims), DTYPE_BITS.get(tensor.dataType, 0)


def nbytes(shape: Optional[Sequence[int]], bits: int) -> int:
    """Bytes of a tensor of ``shape`` (0 when unknown), whole bytes up."""
    return (math.prod(shape) * bits + 7) // 8 if shape is not None else 0


def walk_operations(block) -> Iterable[Any]:
    """The operations of ``block`` and, depth first, of the blocks nested in
    them (a MIL protobuf block or coremltools' ``MLModelStructure`` one)."""
    for op in block.operations:
        yield op
        for inner in getattr(op, 'blocks', None) or ():
            yield from walk_operations(inner)


def main_block(spec):
    """``(function, block)`` of the ``main`` function of an ML program
    spec; ``ValueError`` for another model type or no ``main``."""
    kind = spec.WhichOneof('Type')
    if kind != 'mlProgram':
        raise ValueError("Expected an ML program (convert_to='mlprogram'), "
                         f'got a {kind!r} model.')
    functions = spec.mlProgram.functions
    if 'main' not in functions:
        raise ValueError('The ML program has no "main" function; functions: '
                         f'{sorted(functions)}.')
    function = functions['main']
    return function, function.block_specializations[function.opset]


def program_spec(model_or_spec):
    """The protobuf spec of an ``MLModel`` (a spec is returned as it is)."""
    get_spec = getattr(model_or_spec, 'get_spec', None)
    return get_spec() if callable(get_spec) else model_or_spec


# --------------------------------------------------------------------------
# The census.
# --------------------------------------------------------------------------
def census_from_spec(spec, weights_dir: Optional[str] = None
                     ) -> Dict[str, Any]:
    """Count the operations of the ``main`` function of an ML program spec.

    Args:
        spec: a ``coremltools.proto.Model_pb2.Model`` whose type is
            ``mlProgram``.
        weights_dir: the package's weights folder, to report the size of the
            weight file on disk as well.
    """
    function, block = main_block(spec)
    counts: Counter = Counter()
    weight_bytes = const_bytes = 0
    weight_dtypes: Counter = Counter()
    moved: Counter = Counter()      # output bytes of each rearrangement type
    largest: Counter = Counter()    # the largest single output, per type
    for op in walk_operations(block):
        counts[op.type] += 1
        if op.type in REARRANGE_OPS:
            size = sum(nbytes(*tensor_shape_bits(out.type))
                       for out in op.outputs)
            moved[op.type] += size
            largest[op.type] = max(largest[op.type], size)
        if op.type != 'const' or not op.outputs:
            continue
        size = nbytes(*tensor_shape_bits(op.outputs[0].type))
        const_bytes += size
        val = op.attributes.get('val') if 'val' in op.attributes else None
        if val is not None and val.HasField('blobFileValue'):
            weight_bytes += size
            dtype = op.outputs[0].type.tensorType.dataType
            weight_dtypes[DTYPE_NAMES.get(dtype, str(dtype))] += size

    const_ops = counts.get('const', 0)
    total_ops = sum(counts.values()) - const_ops
    result: Dict[str, Any] = dict(
        opset=function.opset,
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
    if isinstance(model_or_spec_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_spec_or_path)
        return census_from_spec(load_package_spec(path),
                                package_weights_dir(path))
    return census_from_spec(
        program_spec(model_or_spec_or_path),
        getattr(model_or_spec_or_path, 'weights_dir', None))


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

    from .coreml import convert_module
    height, width = (size, size) if isinstance(size, int) else size
    mlmodel, exported = convert_module(
        model, torch.zeros(1, 3, height, width), ios_target, fp16=fp16)
    ranks = [len(node.meta['val'].shape)
             for node in exported.graph.nodes
             if isinstance(node.meta.get('val'), torch.Tensor)]
    result = census_from_spec(mlmodel.get_spec())
    result['max_rank'] = max(ranks, default=0)
    return result


# --------------------------------------------------------------------------
# The check of a saved package.
# --------------------------------------------------------------------------
def _shape_of(feature) -> Tuple[int, ...]:
    if feature.type.WhichOneof('Type') == 'imageType':
        image = feature.type.imageType
        channels = 1 if image.colorSpace == image.GRAYSCALE else 3
        return (1, channels, int(image.height), int(image.width))
    return tuple(int(d) for d in feature.type.multiArrayType.shape)


def validate_package(path: str, input_shape: Sequence[int],
                     output_shapes: Sequence[Sequence[int]],
                     fp16: bool = True) -> Dict[str, Any]:
    """Check a saved package without running it (works on any OS).

    Re-reads the package from disk and checks: it is an ML program; its
    input and outputs have the names and shapes of the PyTorch model; the
    weights are stored at the requested precision. Raises ``ValueError`` on
    a mismatch and returns what it checked, with the package's census.
    """
    spec = load_package_spec(path)
    problems: List[str] = []
    kind = spec.WhichOneof('Type')
    if kind != 'mlProgram':
        problems.append(f'model type is {kind!r}, not an ML program')
    inputs = {f.name: _shape_of(f) for f in spec.description.input}
    outputs = [(f.name, _shape_of(f)) for f in spec.description.output]
    if inputs != {INPUT_NAME: tuple(input_shape)}:
        problems.append(f'inputs are {inputs}, expected '
                        f'{{{INPUT_NAME!r}: {tuple(input_shape)}}}')
    expected = [(f'out{i}', tuple(s)) for i, s in enumerate(output_shapes)]
    if outputs != expected:
        problems.append(f'outputs are {outputs}, expected {expected}')
    census = census_from_spec(spec, package_weights_dir(path))
    by_dtype = census['weight_bytes_by_dtype']
    if fp16 and by_dtype.get('fp32', 0) > 0.01 * max(census['weight_bytes'],
                                                     1):
        problems.append(f'weights are not FP16: {by_dtype}')
    if problems:
        raise ValueError(f'Core ML package {path} failed validation: ' +
                         '; '.join(problems) + '.')
    return dict(ok=True, spec_version=int(spec.specificationVersion),
                opset=census['opset'], inputs={k: list(v) for k, v in
                                               inputs.items()},
                outputs={k: list(v) for k, v in outputs},
                weight_bytes_by_dtype=by_dtype,
                package_bytes=package_size_bytes(path),
                census=census)


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
