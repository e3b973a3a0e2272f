"""ExecuTorch: export a backbone to a ``.pte`` and time it with the runtime.

ExecuTorch is the on-device runtime that replaces PyTorch Mobile (the
authors' ``export_adb.py`` wrote a lite-interpreter file). The path is
``torch.export`` -> ``to_edge_transform_and_lower`` with one delegate ->
``to_executorch`` -> a ``.pte`` file, run by ``executorch.runtime``:

* ``xnnpack`` (default): XNNPACK, the CPU kernels ExecuTorch runs on
  Android phones. On this machine the same kernels run on its x86 CPU, so
  the timing is a proxy, labelled as one.
* ``coreml``: the Core ML delegate, ExecuTorch's iOS path. It lowers
  wherever coremltools converts (Linux too), but only a runtime with
  ``CoreMLBackend`` (macOS, iOS) runs it; elsewhere the ``.pte`` is written
  and neither checked nor timed, and :func:`runtime_status` says so.

Nothing heavy is imported at module load; :func:`import_executorch` raises
:class:`ExecuTorchMissing` with the install line.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .latency import max_abs_diff, summarize, time_callable

DELEGATES = ('xnnpack', 'coreml')
BACKEND_IDS = {'xnnpack': 'XnnpackBackend', 'coreml': 'CoreMLBackend'}
INSTALL = 'pip install -e ".[executorch]"'
#: FP32 kernels (XNNPACK, Core ML at FP32): absolute, as for ONNX Runtime.
FP32_TOLERANCE = 1e-3
#: FP16 compute (Core ML delegate): a share of the largest reference value.
FP16_RELATIVE_TOLERANCE = 5e-2


class ExecuTorchMissing(ImportError):
    """ExecuTorch is not installed; the message says what to install."""


class LoweringError(RuntimeError):
    """A network did not export, lower or load; the message names the
    network and, where one is to blame, the op."""


def import_executorch():
    """``executorch`` with its exporter and runtime, or a one-line error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            import executorch.exir  # noqa: F401
            import executorch.runtime  # noqa: F401
    except ImportError as exc:
        raise ExecuTorchMissing(
            f'ExecuTorch is not installed ({exc}): {INSTALL} (the pinned '
            'version is in constraints.txt).') from exc
    import executorch
    return executorch


def backend_label(delegate: str) -> str:
    """What a timing of this delegate is, for a table header."""
    if delegate == 'xnnpack':
        return "ExecuTorch XNNPACK CPU (x86, Android's kernels), proxy"
    return 'ExecuTorch Core ML delegate'


def runtime_status(delegate: str) -> Tuple[bool, str]:
    """``(runs, line)``: can this machine's ExecuTorch runtime run a
    ``.pte`` lowered to ``delegate``?"""
    check_delegate(delegate)
    backend = BACKEND_IDS[delegate]
    if _runtime().backend_registry.is_available(backend):
        return True, (f'ExecuTorch runtime with {backend}: the .pte is '
                      'checked against PyTorch and timed here.')
    where = (' (the Core ML delegate runs on macOS and iOS)'
             if delegate == 'coreml' else '')
    return False, (f'this ExecuTorch runtime has no {backend}{where}: the '
                   '.pte is written, but not checked or timed here.')


def check_delegate(delegate: str) -> None:
    if delegate not in DELEGATES:
        raise ValueError(f'Unknown ExecuTorch delegate {delegate!r}; choose '
                         f'one of {DELEGATES}.')


def _partitioner(delegate: str, ios_target: str, fp16: bool,
                 compute_unit: str):
    if delegate == 'xnnpack':
        from executorch.backends.xnnpack.partition.xnnpack_partitioner \
            import XnnpackPartitioner
        return XnnpackPartitioner()
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    from .coreml import _target, import_coremltools
    ct = import_coremltools()
    specs = CoreMLBackend.generate_compile_specs(
        compute_unit=getattr(ct.ComputeUnit, compute_unit),
        minimum_deployment_target=_target(ct, ios_target),
        compute_precision=(ct.precision.FLOAT16 if fp16 else
                           ct.precision.FLOAT32))
    return CoreMLPartitioner(compile_specs=specs)


def _foreign_ops(exported) -> List[str]:
    """Ops of the exported graph outside ATen: what ExecuTorch's kernel
    library and the delegates are least likely to know."""
    return sorted({str(node.target) for node in exported.graph.nodes
                   if node.op == 'call_function' and
                   isinstance(node.target, torch._ops.OpOverload) and
                   node.target.namespace not in ('aten', 'prims')})


def _lower(model: torch.nn.Module, example: torch.Tensor, delegate: str,
           name: str, **options) -> Tuple[Any, Dict[str, float]]:
    """The ExecuTorch program of ``model``, and the time of each stage."""
    from executorch.exir import to_edge_transform_and_lower

    from .coreml import _quiet_coremltools
    stage, times, exported = 'torch.export', {}, None
    try:
        with torch.no_grad(), _quiet_coremltools():
            t0 = time.perf_counter()
            exported = torch.export.export(model, (example, ))
            times['torch_export_s'] = time.perf_counter() - t0
            stage = f'lowering to {delegate}'
            t0 = time.perf_counter()
            edge = to_edge_transform_and_lower(
                exported, partitioner=[_partitioner(delegate, **options)])
            program = edge.to_executorch()
            times['lower_s'] = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001  (re-raised with the names)
        ops = _foreign_ops(exported) if exported is not None else []
        blame = f" (ops outside ATen: {', '.join(ops)})" if ops else ''
        first = (str(exc).strip().splitlines() or [''])[0][:300]
        raise LoweringError(f'{name}: ExecuTorch {stage} failed{blame}: '
                            f'{type(exc).__name__}: {first}') from exc
    return program, times


def _write(program, path: str) -> None:
    """Write through a temporary name: a failed write leaves no torn
    ``.pte`` behind."""
    partial = path + '.partial'
    with open(partial, 'wb') as f:
        program.write_to_file(f)
    os.replace(partial, path)


def export_pte(model: torch.nn.Module, example: torch.Tensor, path: str,
               delegate: str = 'xnnpack', *, name: str = 'network',
               ios_target: str = 'iOS17', fp16: bool = True,
               compute_unit: str = 'ALL') -> Dict[str, Any]:
    """Export ``model`` (outputs: a tensor or a tuple of tensors) at the
    shape of ``example`` to an ExecuTorch program at ``path``.

    ``delegate`` is ``'xnnpack'`` or ``'coreml'`` (``ios_target``, ``fp16``
    and ``compute_unit`` are the Core ML delegate's settings). Returns the
    path, its size, the export and lowering times, and the ops left to
    ExecuTorch's own kernels (``portable_ops``). Raises
    :class:`LoweringError` naming ``name`` and the op to blame, also when
    the runtime here has no kernel for an op left outside the delegate
    (the file is written then).
    """
    check_delegate(delegate)
    if not path.endswith('.pte'):
        raise ValueError(f'An ExecuTorch program is saved as .pte, got '
                         f'{path!r}.')
    program, times = _lower(model, example, delegate, name,
                            ios_target=ios_target, fp16=fp16,
                            compute_unit=compute_unit)
    _write(program, path)
    plan = program.executorch_program.execution_plan[0]
    ops = sorted({f'{op.name}.{op.overload}' for op in plan.operators})
    info = dict(path=path, delegate=delegate, size_bytes=os.path.getsize(path),
                delegate_blobs=len(plan.delegates), portable_ops=ops, **times)
    known = _runtime().operator_registry.operator_names
    missing = [op for op in ops if op not in known]
    if missing:
        raise LoweringError(
            f'{name}: the ExecuTorch runtime here has no kernel for '
            f"{', '.join(missing)} (left outside the {delegate} delegate); "
            f'{path} is written but cannot run here.')
    return info


def tolerance(reference: Sequence[np.ndarray], fp16: bool) -> float:
    """The largest absolute difference from PyTorch a ``.pte`` may show:
    :data:`FP32_TOLERANCE` for FP32 kernels, and for FP16 compute
    :data:`FP16_RELATIVE_TOLERANCE` of the largest reference magnitude."""
    if not fp16:
        return FP32_TOLERANCE
    peak = max(float(np.abs(r).max()) for r in reference)
    return max(FP32_TOLERANCE, FP16_RELATIVE_TOLERANCE * peak)


@contextlib.contextmanager
def _quiet_native_stderr():
    """Hide the CPU probe's lines the native runtime prints on fd 2."""
    sys.stderr.flush()
    saved, sink = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(sink, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(sink)


def _pool_api():
    """ExecuTorch 1.5's threadpool calls (experimental pybindings):
    ``(get_count, reset)``, each ``None`` where this build lacks it."""
    try:
        from executorch.extension.pybindings import portable_lib as lib
    except ImportError:
        return None, None
    return (getattr(lib, '_threadpool_get_thread_count', None),
            getattr(lib, '_unsafe_reset_threadpool', None))


@functools.lru_cache(maxsize=1)
def _runtime():
    """The runtime, its threadpool started quietly (the native CPU probe
    prints its findings on stderr)."""
    from executorch.runtime import Runtime
    count, _ = _pool_api()
    with _quiet_native_stderr():
        if count is not None:
            count()
        return Runtime.get()


def set_threads(threads: Optional[int]) -> Dict[str, Any]:
    """Size the runtime's threadpool (XNNPACK's) to ``threads`` (``None``:
    leave the runtime's default, one per performance core) and return the
    count it then uses; where this build cannot report it, ``threads`` is
    ``None`` and ``threads_note`` says so."""
    _runtime()
    count, reset = _pool_api()
    if count is None:
        return dict(threads=None, threads_note='this ExecuTorch build '
                    'cannot report or set its threadpool size')
    with _quiet_native_stderr():
        if threads and reset is not None:
            reset(int(threads))
        used = int(count())
    note = ('set' if threads and reset is not None else
            "the runtime's default (not set)")
    return dict(threads=used, threads_note=note)


def _load(pte_path: str):
    program = _runtime().load_program(pte_path)
    return program, program.load_method('forward')


def _feed(inputs) -> Tuple[torch.Tensor]:
    return (torch.as_tensor(np.asarray(inputs, dtype=np.float32)), )


def run_pte(pte_path: str, inputs) -> List[np.ndarray]:
    """The outputs of one run of the ``.pte`` (its ``forward``)."""
    _, method = _load(pte_path)
    return [out.numpy().copy() for out in method.execute(_feed(inputs))]


def check_pte(pte_path: str, inputs, reference: Sequence[np.ndarray],
              fp16: bool = False) -> Dict[str, Any]:
    """Run the ``.pte`` once and compare with PyTorch's ``reference``
    outputs within :func:`tolerance`."""
    diff = max_abs_diff(run_pte(pte_path, inputs), reference)
    limit = tolerance(reference, fp16)
    return dict(max_abs_diff=diff, tolerance=limit, passed=diff <= limit)


def time_executorch(pte_path: str, inputs, threads: Optional[int],
                    warmup: int, runs: int,
                    reference: Sequence[np.ndarray]) -> Dict[str, Any]:
    """Load the ``.pte`` with the ExecuTorch runtime on ``threads`` threads,
    check one run against ``reference`` and time ``forward``: the same
    record as :func:`~.latency.time_onnxruntime` plus the thread count the
    runtime reports (``threads``, ``threads_note``)."""
    pool = set_threads(threads)
    feed = _feed(inputs)
    start = time.perf_counter()
    _program, method = _load(pte_path)  # the program outlives the runs
    first = [out.numpy().copy() for out in method.execute(feed)]
    load_s = time.perf_counter() - start
    times = time_callable(lambda: method.execute(feed), warmup, runs)
    return dict(summarize(times), load_s=load_s,
                max_abs_diff=max_abs_diff(first, reference), **pool)
