"""The macOS side of the latency tool: Core ML timing, op placement and
attached devices, through coremltools 9's own APIs.

* Timing: ``coremltools.models.ml_program.experimental.perf_utils.
  MLModelBenchmarker`` (Core ML's own per-prediction durations), run as a
  protocol of warm-up then rounds of predictions; the report gives the
  median and the trimmed mean of the round means (:func:`summarize_rounds`).
* Placement: ``coremltools.models.compute_plan.MLComputePlan`` (the device
  Core ML prefers for each op and its estimated share of the cost), summed
  per device by :func:`placement_summary`.
* Devices: ``coremltools.models.ml_program.experimental.remote_device``
  (an iPhone/iPad attached to the Mac, through Xcode's ``devicectl``).

Everything that needs the Core ML runtime is behind :func:`macos_only`: on
another OS each feature says in one line that it needs macOS and what the
user gets instead. The arithmetic and the report are plain Python and are
tested everywhere against result objects shaped like coremltools'.
"""
from __future__ import annotations

import asyncio
import math
import platform
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .census import walk_operations

#: Core ML device names used in the reports, by coremltools class name.
DEVICE_NAMES = {
    'MLNeuralEngineComputeDevice': 'Neural Engine',
    'MLGPUComputeDevice': 'GPU',
    'MLCPUComputeDevice': 'CPU',
}
DEVICE_ORDER = ('Neural Engine', 'GPU', 'CPU')

#: What each macOS-only feature gives on another OS (one line each).
NOT_ON_THIS_OS = {
    'timing': 'Core ML timing (MLModelBenchmarker) needs macOS; here the '
              'package is converted and validated, and the CPU proxies '
              '(ONNX Runtime, PyTorch eager) are timed instead.',
    'compute_units': '--compute-units selects the Core ML device, which '
                     'needs macOS; here it is recorded only and the CPU '
                     'proxies are timed instead.',
    'placement': 'The per-op Neural Engine/GPU/CPU placement '
                 '(MLComputePlan) needs macOS; here the device-independent '
                 'op census is reported instead.',
    'device': '--device needs macOS with Xcode (coremltools drives the '
              'attached iPhone/iPad through devicectl); here nothing runs '
              'on a device: conversion, op census and CPU proxies only.',
}


def on_macos() -> bool:
    return platform.system() == 'Darwin'


def macos_only(feature: str) -> Optional[str]:
    """``None`` on macOS; otherwise the one line that says what ``feature``
    needs and what the user gets instead."""
    if feature not in NOT_ON_THIS_OS:
        raise KeyError(f'Unknown macOS feature {feature!r}.')
    return None if on_macos() else NOT_ON_THIS_OS[feature]


# --------------------------------------------------------------------------
# The timing protocol and its arithmetic.
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class TimingProtocol:
    """Warm-up predictions, then ``rounds`` rounds of ``per_round``
    predictions; each round gives its mean; the report gives the median of
    the round means and their mean with ``trim`` of the rounds dropped at
    each end (the fastest and the slowest)."""
    warmup: int = 10
    rounds: int = 20
    per_round: int = 50
    trim: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.rounds < 1 or self.per_round < 1:
            raise ValueError(f'A timing protocol needs warmup >= 0, rounds '
                             f'>= 1 and per_round >= 1, got {self}.')
        if not 0 <= self.trim < 0.5:
            raise ValueError(f'trim is the fraction dropped at each end: '
                             f'0 <= trim < 0.5, got {self.trim}.')

    @property
    def trimmed_each_side(self) -> int:
        return int(math.floor(self.rounds * self.trim))

    def describe(self) -> str:
        k = self.trimmed_each_side
        return (f'{self.warmup} warm-up predictions, then {self.rounds} '
                f'rounds x {self.per_round} predictions (Core ML\'s own '
                'per-prediction durations, MLModelBenchmarker); per-round '
                f'mean; reported: median of the {self.rounds} round means '
                f'and their mean with the {k} fastest and {k} slowest rounds '
                'dropped')

    def as_dict(self) -> Dict[str, Any]:
        """The settings and their description, as runs record them."""
        return dict(asdict(self), description=self.describe())


def trimmed_mean(values: Sequence[float], each_side: int) -> float:
    """Mean of ``values`` without the ``each_side`` smallest and largest."""
    ordered = sorted(float(v) for v in values)
    if each_side < 0 or 2 * each_side >= len(ordered):
        raise ValueError(f'Cannot drop {each_side} values at each end of '
                         f'{len(ordered)}.')
    kept = ordered[each_side:len(ordered) - each_side]
    return sum(kept) / len(kept)


def summarize_rounds(rounds: Sequence[Sequence[float]],
                     protocol: TimingProtocol) -> Dict[str, Any]:
    """Median and trimmed mean of the per-round means (ms)."""
    if len(rounds) != protocol.rounds:
        raise ValueError(f'Expected {protocol.rounds} rounds, got '
                         f'{len(rounds)}.')
    for i, samples in enumerate(rounds):
        if len(samples) != protocol.per_round:
            raise ValueError(f'Round {i} has {len(samples)} predictions, '
                             f'expected {protocol.per_round}.')
    means = [float(np.mean(samples)) for samples in rounds]
    each = protocol.trimmed_each_side
    return dict(median_ms=float(np.median(means)),
                trimmed_mean_ms=trimmed_mean(means, each),
                min_round_ms=min(means), max_round_ms=max(means),
                round_means_ms=means, rounds=protocol.rounds,
                per_round=protocol.per_round, trimmed_each_side=each,
                predictions=protocol.rounds * protocol.per_round)


async def run_protocol(benchmarker, inputs: Optional[Dict[str, Any]],
                       protocol: TimingProtocol) -> Dict[str, Any]:
    """Time a ``MLModelBenchmarker`` (or an object with its
    ``benchmark_load`` / ``benchmark_predict`` coroutines) by ``protocol``.
    A coroutine: a remote device's connection belongs to the event loop
    that opened it, so the caller runs the whole session in one loop."""
    load = await benchmarker.benchmark_load(iterations=1)
    if protocol.warmup:
        await benchmarker.benchmark_predict(inputs=inputs,
                                            iterations=protocol.warmup)
    rounds = []
    for _ in range(protocol.rounds):
        measurement = await benchmarker.benchmark_predict(
            inputs=inputs, iterations=protocol.per_round)
        rounds.append(list(measurement.samples))
    result = summarize_rounds(rounds, protocol)
    result.update(load_ms=float(load.samples[0]),
                  protocol=protocol.as_dict())
    return result


# --------------------------------------------------------------------------
# Op placement (MLComputePlan).
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class OpPlacement:
    """Where Core ML plans to run one op: ``device`` is the preferred one
    (None when the plan does not say), ``supported`` the devices that could
    run it, ``cost`` its estimated share of the model's work (0..1, None
    when unknown)."""
    op_type: str
    device: Optional[str]
    supported: Tuple[str, ...]
    cost: Optional[float]


def device_name(device: Any) -> str:
    """'Neural Engine', 'GPU' or 'CPU' for a coremltools compute device."""
    for cls in type(device).__mro__:
        if cls.__name__ in DEVICE_NAMES:
            return DEVICE_NAMES[cls.__name__]
    return type(device).__name__


def _placement(op_type: str, usage, cost: Optional[float]) -> OpPlacement:
    """An :class:`OpPlacement` from an ``MLComputePlanDeviceUsage`` (None:
    the plan does not place the op)."""
    return OpPlacement(
        op_type=op_type,
        device=None if usage is None else
        device_name(usage.preferred_compute_device),
        supported=() if usage is None else tuple(
            device_name(d) for d in usage.supported_compute_devices),
        cost=cost)


def placements_from_plan(plan, function: str = 'main') -> List[OpPlacement]:
    """Read an ``MLComputePlan`` of an ML program into :class:`OpPlacement`
    records (``const`` ops are data and are left out)."""
    program = plan.model_structure.program
    if program is None:
        raise ValueError('The compute plan is not an ML program\'s.')
    if function not in program.functions:
        raise ValueError(f'No function {function!r} in the program; it has '
                         f'{sorted(program.functions)}.')
    records = []
    for op in walk_operations(program.functions[function].block):
        if op.operator_name == 'const':
            continue
        cost = plan.get_estimated_cost_for_mlprogram_operation(op)
        records.append(_placement(
            op.operator_name,
            plan.get_compute_device_usage_for_mlprogram_operation(op),
            None if cost is None else float(cost.weight)))
    return records


def placements_from_execution_infos(infos) -> List[OpPlacement]:
    """Read ``MLModelBenchmarker.benchmark_operation_execution`` results (the
    remote-device path) into :class:`OpPlacement` records; the cost is the
    op's estimated median time."""
    records = []
    for info in infos:
        stats = info.measurement.statistics
        records.append(_placement(
            info.spec.type, info.compute_device_usage,
            None if stats is None else float(stats.median)))
    return [r for r in records if r.op_type != 'const']


def placement_summary(records: Sequence[OpPlacement]) -> Dict[str, Any]:
    """Share of ops and of estimated cost per device, and the ops that run
    on the CPU (with how many of them the Neural Engine could have run)."""
    placed = [r for r in records if r.device is not None]
    total_cost = sum(r.cost or 0. for r in placed)
    devices = sorted({r.device for r in placed},
                     key=lambda d: (DEVICE_ORDER.index(d)
                                    if d in DEVICE_ORDER else 9, d))
    by_device = {}
    for device in devices:
        mine = [r for r in placed if r.device == device]
        cost = sum(r.cost or 0. for r in mine)
        by_device[device] = dict(
            ops=len(mine), op_share=len(mine) / len(placed),
            cost_share=cost / total_cost if total_cost > 0 else None)
    cpu = [r for r in placed if r.device == 'CPU']
    fallback: Dict[str, Dict[str, Any]] = {}
    for op_type, count in Counter(r.op_type for r in cpu).most_common():
        mine = [r for r in cpu if r.op_type == op_type]
        fallback[op_type] = dict(
            count=count,
            cost_share=(sum(r.cost or 0. for r in mine) / total_cost
                        if total_cost > 0 else None),
            ne_supported=sum('Neural Engine' in r.supported for r in mine))
    return dict(ops=len(records), placed=len(placed),
                unplaced=len(records) - len(placed), by_device=by_device,
                cpu_ops=fallback)


def placement_lines(summary: Dict[str, Any], top: int = 8) -> List[str]:
    """The placement summary as markdown lines."""
    parts = []
    for device, row in summary['by_device'].items():
        cost = row['cost_share']
        parts.append(f"{device} {row['op_share']:.0%} of ops"
                     + ('' if cost is None else f', {cost:.0%} of cost'))
    lines = [f"Op placement ({summary['placed']} of {summary['ops']} ops "
             'placed by MLComputePlan): ' + '; '.join(parts) + '.']
    cpu = summary['cpu_ops']
    if cpu:
        items = []
        for op_type, row in list(cpu.items())[:top]:
            cost = row['cost_share']
            items.append(f"{op_type} x{row['count']}"
                         + ('' if cost is None else f' ({cost:.1%} of cost)')
                         + (f", {row['ne_supported']} could run on the "
                            'Neural Engine' if row['ne_supported'] else ''))
        more = len(cpu) - top
        lines.append('On the CPU: ' + ', '.join(items)
                     + (f', and {more} more op types' if more > 0 else '')
                     + '.')
    else:
        lines.append('No op falls back to the CPU.')
    return lines


# --------------------------------------------------------------------------
# Attached devices.
# --------------------------------------------------------------------------
def find_device(name: str, devices: Sequence[Any]):
    """The device called ``name`` (or with that identifier / UDID), case
    insensitive; a ``ValueError`` lists the ones there are."""
    wanted = name.strip().lower()
    for device in devices:
        if wanted in (str(getattr(device, 'name', '')).lower(),
                      str(getattr(device, 'identifier', '')).lower(),
                      str(getattr(device, 'udid', '')).lower()):
            return device
    known = ', '.join(f'{d.name} ({getattr(d.type, "value", d.type)}, '
                      f'{getattr(d.state, "value", d.state)})'
                      for d in devices) or 'none'
    raise ValueError(f'No device named {name!r}; devicectl lists: {known}.')


def prepare_device(name: str, team: Optional[str] = None):
    """Find the attached device ``name`` and build, install and launch
    coremltools' model-runner app on it (macOS with Xcode)."""
    from coremltools.models.ml_program.experimental.remote_device import (
        AppSigningCredentials, Device)
    device = find_device(name, Device.get_devices())
    credentials = AppSigningCredentials(development_team=team or '')
    return asyncio.run(device.prepare_for_model_debugging(
        credentials=credentials))


# --------------------------------------------------------------------------
# One package on this Mac or an attached device.
# --------------------------------------------------------------------------
def benchmark_package(path: str, inputs: Dict[str, Any], compute_unit: str,
                      protocol: TimingProtocol, device=None,
                      placement: bool = True) -> Dict[str, Any]:
    """Time ``path`` by ``protocol`` through ``MLModelBenchmarker`` and read
    its op placement. macOS only (raises ``RuntimeError`` elsewhere)."""
    line = macos_only('timing')
    if line:
        raise RuntimeError(line)
    import coremltools as ct
    from coremltools.models.ml_program.experimental.perf_utils import \
        MLModelBenchmarker
    units = getattr(ct.ComputeUnit, compute_unit)
    model = ct.models.MLModel(path, compute_units=units)
    benchmarker = MLModelBenchmarker(model=model, device=device)

    async def everything():
        timing = await run_protocol(benchmarker, inputs, protocol)
        infos = None
        if placement and device is not None:
            infos = await benchmarker.benchmark_operation_execution(
                inputs=inputs, iterations=protocol.per_round)
        return timing, infos

    # One event loop for the whole session (a remote device's connection
    # belongs to the loop that opened it).
    result, infos = asyncio.run(everything())
    result['compute_unit'] = compute_unit
    result['device'] = getattr(device, 'name', None) or 'this Mac'
    if placement:
        if device is None:
            from coremltools.models.compute_plan import MLComputePlan
            plan = MLComputePlan.load_from_path(
                path=model.get_compiled_model_path(), compute_units=units)
            records = placements_from_plan(plan)
        else:
            records = placements_from_execution_infos(infos)
        result['placement'] = placement_summary(records)
    return result
