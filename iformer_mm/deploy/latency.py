"""Timing helpers and the CPU proxies (PyTorch eager, ONNX Runtime).

The proxies are what runs where Core ML cannot; every result carries a
``backend`` label that says exactly what was timed, so a proxy number is
never mistaken for a Core ML one.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch

def time_callable(fn: Callable[[], Any], warmup: int, runs: int
                  ) -> List[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times; return ms."""
    if warmup < 0 or runs < 1:
        raise ValueError(f'Need warmup >= 0 and runs >= 1, got warmup='
                         f'{warmup}, runs={runs}.')
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def summarize(times_ms: Sequence[float]) -> Dict[str, Any]:
    """Median, p90 (linear interpolation), min and mean of run times (ms)."""
    arr = np.asarray(times_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError('No timings to summarize.')
    return dict(median_ms=float(np.median(arr)),
                p90_ms=float(np.percentile(arr, 90)),
                min_ms=float(arr.min()), mean_ms=float(arr.mean()),
                runs=int(arr.size), times_ms=[float(t) for t in arr])


def max_abs_diff(outputs: Sequence[np.ndarray],
                 reference: Sequence[np.ndarray]) -> float:
    """Largest absolute difference over all outputs (shapes must match)."""
    if len(outputs) != len(reference):
        raise ValueError(f'{len(outputs)} outputs vs {len(reference)} '
                         'reference outputs.')
    worst = 0.
    for out, ref in zip(outputs, reference):
        out, ref = np.asarray(out), np.asarray(ref)
        if out.shape != ref.shape:
            raise ValueError(f'Output shape {out.shape} differs from the '
                             f'reference {ref.shape}.')
        worst = max(worst, float(np.abs(out.astype(np.float64) -
                                        ref.astype(np.float64)).max()))
    return worst


def time_torch(model: torch.nn.Module, inputs: torch.Tensor, warmup: int,
               runs: int, channels_last: bool = False) -> Dict[str, Any]:
    """Eager PyTorch on CPU under ``inference_mode``. With
    ``channels_last`` the model's weights (in place) and the input are
    converted to NHWC memory format first."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        times = time_callable(lambda: model(inputs), warmup, runs)
    return dict(summarize(times),
                memory_format='channels_last' if channels_last else 'NCHW')


# --------------------------------------------------------------------------
# How much of the machine's matmul rate a network reaches.
# --------------------------------------------------------------------------
def measure_gemm_rate(size: int = 1024, repeats: int = 5,
                      timer: Callable[[], float] = time.perf_counter
                      ) -> Dict[str, Any]:
    """This machine's fp32 matmul rate (FLOP/s) at the current torch thread
    count: the best of ``repeats`` ``size``x``size`` @ ``size``x``size``
    products (one untimed first)."""
    if size < 1 or repeats < 1:
        raise ValueError('Need size >= 1 and repeats >= 1.')
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    torch.mm(a, b)
    best = float('inf')
    for _ in range(repeats):
        start = timer()
        torch.mm(a, b)
        best = min(best, timer() - start)
    flops = 2.0 * size ** 3
    return dict(flops_per_s=flops / max(best, 1e-12), size=size,
                repeats=repeats, threads=torch.get_num_threads(),
                best_s=best)


def count_flops(model: torch.nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass (a multiply-add counts 2) as torch's
    ``FlopCounterMode`` counts them (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(inputs)
    return int(counter.get_total_flops())


def gemm_fraction(flops: float, median_ms: float,
                  gemm_flops_per_s: float) -> float:
    """The fraction of the machine's measured matmul rate that a network
    running ``flops`` in ``median_ms`` reaches."""
    if median_ms <= 0 or gemm_flops_per_s <= 0:
        raise ValueError('Need a positive time and a positive GEMM rate.')
    return flops / (median_ms * 1e-3) / gemm_flops_per_s


def onnxruntime_session(path: str, threads: int):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = \
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options,
                                providers=['CPUExecutionProvider'])


def time_onnxruntime(path: str, inputs: np.ndarray, threads: int,
                     warmup: int, runs: int,
                     reference: Sequence[np.ndarray]) -> Dict[str, Any]:
    """Create an ONNX Runtime CPU session, check it, and time ``run``."""
    start = time.perf_counter()
    session = onnxruntime_session(path, threads)
    name = session.get_inputs()[0].name
    feed = {name: inputs.astype(np.float32)}
    first = session.run(None, feed)
    load_s = time.perf_counter() - start
    times = time_callable(lambda: session.run(None, feed), warmup, runs)
    return dict(summarize(times), load_s=load_s,
                max_abs_diff=max_abs_diff(first, reference))
