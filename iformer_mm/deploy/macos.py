"""The macOS side of the latency tool: Core ML timing, op placement and
attached devices, through coremltools 9.0's own APIs.

* Timing: ``coremltools.models.ml_program.experimental.perf_utils.
  MLModelBenchmarker`` (Core ML's own per-prediction durations). One load,
  one prediction checked against PyTorch, warm-up predictions, then the
  timed ones; the statistics are over every timed prediction, as
  ``MLModelBenchmarker`` and Xcode give them (:func:`summarize_samples`).
* Placement: the compute plan of the same loaded model
  (``benchmark_operation_execution``, one prediction; ``MLComputePlan``
  needs macOS 14.4, iOS 17.4 on a device). A failed placement leaves the
  timing and says why it is missing.
* Devices: ``coremltools.models.ml_program.experimental.remote_device``
  (an iPhone/iPad attached to the Mac, through Xcode's ``devicectl``).
  Every device prediction is a ``devicectl`` file round trip of a few
  seconds, so the device protocol is short (:data:`DEVICE_PROTOCOL`).

What coremltools 9.0 does not do by itself, this module does: it unloads
the model in the event loop that loaded it, deletes the files 9.0 leaves
behind, runs from inside a running loop (Jupyter), puts ``devicectl`` on
PATH, signs the runner app with a team and a bundle id of its own, and
refuses image inputs on a device (9.0's transfer rejects uint8 arrays).

Everything that needs the Core ML runtime is behind :func:`macos_only`: on
another OS each feature says in one line that it needs macOS and what the
user gets instead. The arithmetic and the report are plain Python.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
import types
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple)

import numpy as np

from .coreml import PLACEMENT_MACOS, macos_version, version_tuple

#: Core ML device names used in the reports, by coremltools class name.
DEVICE_NAMES = {
    'MLNeuralEngineComputeDevice': 'Neural Engine',
    'MLGPUComputeDevice': 'GPU',
    'MLCPUComputeDevice': 'CPU',
}
DEVICE_ORDER = ('Neural Engine', 'GPU', 'CPU')
#: MLComputePlan on a device (API_AVAILABLE ios(17.4)).
PLACEMENT_IOS = (17, 4)
#: The arrays coremltools 9.0 can send to a device.
DEVICE_DTYPES = (np.float16, np.float32, np.float64, np.int32)

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


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


# --------------------------------------------------------------------------
# The timing protocol and its arithmetic.
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class TimingProtocol:
    """``warmup`` untimed predictions, then ``rounds`` x ``per_round``
    timed ones (a round is one ``benchmark_predict`` call and one step of
    the progress display). The statistics are over all timed predictions:
    min, median, mean, std and max (as ``MLModelBenchmarker``), and the
    mean without the ``trim`` fraction of fastest and of slowest ones."""
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
    def predictions(self) -> int:
        return self.rounds * self.per_round

    @property
    def trimmed_each_side(self) -> int:
        return int(math.floor(self.predictions * self.trim))

    def describe(self) -> str:
        k = self.trimmed_each_side
        return (f'one prediction checked against PyTorch, {self.warmup} '
                f'warm-up predictions, then {self.rounds} x '
                f'{self.per_round} timed predictions (Core ML\'s own '
                'per-prediction durations, MLModelBenchmarker); reported '
                f'over the {self.predictions} timed predictions: min, '
                f'median, mean, std and max, and the mean without the {k} '
                f'fastest and {k} slowest; load: the first load of the '
                'compiled model in this run (compilation excluded; Core '
                'ML may reuse its cache from an earlier run, so not a cold '
                'load)')

    def as_dict(self) -> Dict[str, Any]:
        """The settings and their description, as runs record them."""
        return dict(asdict(self), predictions=self.predictions,
                    description=self.describe())


#: The default on this Mac: predictions are cheap, keep many samples.
MAC_PROTOCOL = TimingProtocol()
#: The default on a device: each prediction is a devicectl round trip of a
#: few seconds; with the check, the placement, the load and the unload
#: about 40 round trips, a few minutes per backbone.
DEVICE_PROTOCOL = TimingProtocol(warmup=3, rounds=3, per_round=10)


def default_protocol(on_device: bool) -> TimingProtocol:
    return DEVICE_PROTOCOL if on_device else MAC_PROTOCOL


def trimmed_mean(values: Sequence[float], each_side: int) -> float:
    """Mean of ``values`` without the ``each_side`` smallest and largest."""
    ordered = sorted(float(v) for v in values)
    if each_side < 0 or 2 * each_side >= len(ordered):
        raise ValueError(f'Cannot drop {each_side} values at each end of '
                         f'{len(ordered)}.')
    kept = ordered[each_side:len(ordered) - each_side]
    return sum(kept) / len(kept)


def summarize_samples(samples: Sequence[float],
                      protocol: TimingProtocol) -> Dict[str, Any]:
    """Per-prediction statistics (ms) of the timed predictions, with the
    raw samples."""
    if len(samples) != protocol.predictions:
        raise ValueError(f'Expected {protocol.predictions} timed '
                         f'predictions, got {len(samples)}.')
    values = np.asarray(samples, dtype=np.float64)
    return dict(min_ms=float(values.min()), median_ms=float(np.median(values)),
                mean_ms=float(values.mean()), std_ms=float(values.std()),
                max_ms=float(values.max()),
                trimmed_mean_ms=trimmed_mean(values,
                                             protocol.trimmed_each_side),
                predictions=protocol.predictions,
                samples_ms=[float(v) for v in values])


# --------------------------------------------------------------------------
# Op placement.
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class OpPlacement:
    """Where Core ML plans to run one op: ``device`` is the preferred one
    (None when the plan does not say), ``supported`` the devices that could
    run it, ``cost`` its estimated share of the model's work (None when
    unknown)."""
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


def _op_key(info) -> Tuple[Any, ...]:
    """One key per op: 9.0 makes one record per op *output*, whose
    ``ModelStructurePath`` ends with that output's name; the op is the path
    without it, plus all the op's output names."""
    return (info.path.components[:-1],
            tuple(output.name for output in info.spec.outputs))


def placements_from_execution_infos(infos) -> List[OpPlacement]:
    """``MLModelBenchmarker.benchmark_operation_execution`` results as one
    :class:`OpPlacement` per op (``const`` ops are data and are left out);
    the cost is the op's estimated median time."""
    records, seen = [], set()
    for info in infos:
        key = _op_key(info)
        if key in seen or info.spec.type == 'const':
            continue
        seen.add(key)
        usage, stats = info.compute_device_usage, info.measurement.statistics
        records.append(OpPlacement(
            op_type=info.spec.type,
            device=None if usage is None else
            device_name(usage.preferred_compute_device),
            supported=() if usage is None else tuple(
                device_name(d) for d in usage.supported_compute_devices),
            cost=None if stats is None else float(stats.median)))
    return records


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


def placement_unavailable(device=None) -> Optional[str]:
    """Why the compute plan cannot be read here, or None: it needs macOS
    14.4 on this Mac and, on a device, iOS 17.4 there."""
    host = macos_version()
    if host < PLACEMENT_MACOS:
        return (f'op placement needs macOS 14.4 or later (MLComputePlan); '
                f'this Mac runs macOS {platform.mac_ver()[0] or "?"}')
    ios = str(getattr(device, 'os_version', '') or '')
    if device is not None and ios and version_tuple(ios) < PLACEMENT_IOS:
        return (f'op placement on a device needs iOS 17.4 or later '
                f'(MLComputePlan); {device.name} runs iOS {ios}')
    return None


# --------------------------------------------------------------------------
# Attached devices.
# --------------------------------------------------------------------------
class DeviceSetupError(ValueError):
    """The attached device cannot be used: one line with why and what to
    do (the tool exits with status 2)."""


def _state(device: Any) -> str:
    return str(getattr(device.state, 'value', device.state)).lower()


def find_device(name: str, devices: Sequence[Any]):
    """The *connected* device called ``name`` (or with that identifier /
    UDID), case insensitive; a :class:`DeviceSetupError` otherwise."""
    wanted = name.strip().lower()
    matches = [d for d in devices if wanted in (
        str(getattr(d, 'name', '')).lower(),
        str(getattr(d, 'identifier', '')).lower(),
        str(getattr(d, 'udid', '')).lower())]
    for device in matches:
        if _state(device) == 'connected':
            return device
    if matches:
        raise DeviceSetupError(
            f'{matches[0].name} is {_state(matches[0])}, not connected: '
            'unlock it, trust this Mac, enable Developer Mode, and check '
            'that `xcrun devicectl list devices` shows it connected.')
    known = ', '.join(f'{d.name} ({getattr(d.type, "value", d.type)}, '
                      f'{_state(d)})' for d in devices) or 'none'
    raise DeviceSetupError(f'No device named {name!r}; devicectl lists: '
                           f'{known}.')


def _xcrun_find(tool: str) -> Optional[str]:
    try:
        found = subprocess.run(['xcrun', '--find', tool], capture_output=True,
                               text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    path = found.stdout.strip()
    return path if found.returncode == 0 and os.path.isfile(path) else None


def check_device_tools() -> List[str]:
    """Make sure Xcode's tools are there: ``xcodebuild``, and ``devicectl``
    on PATH (coremltools 9.0 runs it by its bare name; when only ``xcrun``
    finds it, its folder is put on PATH for this process). Returns a note
    for each change; raises :class:`DeviceSetupError` when one is missing."""
    if shutil.which('xcodebuild') is None:
        raise DeviceSetupError(
            'xcodebuild was not found: install Xcode 15 or later (not only '
            'the Command Line Tools) and select it with `sudo xcode-select '
            '-s /Applications/Xcode.app` (docs/macos.md).')
    if shutil.which('devicectl') is not None:
        return []
    found = _xcrun_find('devicectl')
    if found is None:
        raise DeviceSetupError(
            'devicectl was not found, and coremltools 9.0 runs it by its '
            'bare name: install Xcode 15 or later and check that `xcrun '
            '--find devicectl` prints a path (docs/macos.md).')
    folder = os.path.dirname(found)
    os.environ['PATH'] = folder + os.pathsep + os.environ.get('PATH', '')
    return [f'devicectl was not on PATH; {folder} was added to PATH for this '
            'run (coremltools 9.0 runs it by its bare name).']


def check_signing(team: Optional[str], bundle_id: Optional[str]) -> str:
    """The bundle id the runner app is signed with, after checking the
    team: without one coremltools 9.0 signs the app ad hoc and iOS refuses
    to install it. The default id is derived from the team, because 9.0's
    own (``com.coremltools.modelrunnerd``) belongs to another team."""
    if not team:
        raise DeviceSetupError(
            '--device needs --device-team TEAMID, the 10-character Apple '
            'development team that signs the model-runner app (coremltools '
            '9.0 signs it ad hoc otherwise, and iOS will not install it; '
            'docs/macos.md says where to find it).')
    if not re.fullmatch(r'[A-Z0-9]{10}', team):
        raise DeviceSetupError(
            f'--device-team {team!r} is not a team id: 10 capital letters '
            'and digits, as Xcode > Settings > Accounts shows it.')
    bundle_id = bundle_id or f'com.{team.lower()}.iformer-mm.modelrunner'
    if not re.fullmatch(r'[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+', bundle_id):
        raise DeviceSetupError(
            f'--device-bundle-id {bundle_id!r} is not a bundle id: '
            'reverse-DNS parts of letters, digits and hyphens, e.g. '
            'com.example.modelrunner.')
    return bundle_id


def prepare_device(name: str, team: Optional[str], working_directory: str,
                   bundle_id: Optional[str] = None):
    """Find the connected device ``name`` and build, sign (``team``,
    ``bundle_id``), install and launch coremltools' model-runner app on it;
    the build and the session's files go in ``working_directory``, which
    the caller owns. Returns the device with its session. Every failure is
    a :class:`DeviceSetupError`."""
    bundle_id = check_signing(team, bundle_id)
    check_device_tools()
    from coremltools.models.ml_program.experimental.remote_device import (
        AppSigningCredentials, Device)
    try:
        device = find_device(name, Device.get_devices())
    except DeviceSetupError:
        raise
    except Exception as exc:  # noqa: BLE001  (devicectl failed)
        raise DeviceSetupError(f'`xcrun devicectl list devices` failed '
                               f'({one_line(exc)}).') from exc
    credentials = AppSigningCredentials(development_team=team,
                                        bundle_identifier=bundle_id)
    try:
        return run_async(device.prepare_for_model_debugging(
            credentials=credentials,
            working_directory=Path(working_directory)))
    except Exception as exc:  # noqa: BLE001  (build, signing, install)
        raise DeviceSetupError(
            f"Could not build, install or launch coremltools' model-runner "
            f'app on {device.name} as {bundle_id} for team {team} '
            f'({one_line(exc)}); docs/macos.md lists what to check.') from exc


@contextlib.contextmanager
def device_session(name: str, team: Optional[str],
                   bundle_id: Optional[str] = None) -> Iterator[Any]:
    """:func:`prepare_device` in a folder of our own; on exit the runner
    app's session is stopped and the folder (the app build, the request and
    response files) deleted."""
    with tempfile.TemporaryDirectory(prefix='iformer-mm-device-') as work:
        device = prepare_device(name, team, work, bundle_id)
        try:
            yield device
        finally:
            if device.session is not None:
                device.session.stop()


def check_device_inputs(inputs: Dict[str, Any]) -> None:
    """coremltools 9.0 sends numeric arrays to a device, not images (an
    image becomes a uint8 array, which its transfer rejects): refuse those
    before anything is sent."""
    for name, value in inputs.items():
        dtype = getattr(value, 'dtype', None)
        if not isinstance(value, np.ndarray) or dtype not in DEVICE_DTYPES:
            raise ValueError(
                f'Input {name!r} ({type(value).__name__}) cannot be sent to '
                'a device with coremltools 9.0, which sends float16/32/64 '
                'and int32 arrays only: use a tensor input (--input-type '
                'tensor).')


# --------------------------------------------------------------------------
# One package on this Mac or an attached device.
# --------------------------------------------------------------------------
def run_async(coroutine):
    """Run ``coroutine`` in an event loop of its own: in this thread, or in
    a worker thread when this one already runs a loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@contextlib.contextmanager
def _files_cleaned_up(device) -> Iterator[None]:
    """Delete what coremltools writes for one package: its temporary files
    (a copy of the package, the compiled model, one input file per device
    prediction, never deleted by 9.0) go to a folder of our own, and the
    request/response folders that appear in the device session's folder."""
    session = getattr(device, 'session', None)
    exchange = Path(session.working_directory) if session else None
    before = set(os.listdir(exchange)) if exchange and exchange.is_dir() \
        else set()
    folder = tempfile.mkdtemp(prefix='iformer-mm-coreml-')
    saved, tempfile.tempdir = tempfile.tempdir, folder
    try:
        yield
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(folder, ignore_errors=True)
        if exchange is not None and exchange.is_dir():
            for name in set(os.listdir(exchange)) - before:
                shutil.rmtree(exchange / name, ignore_errors=True)


@contextlib.contextmanager
def _quiet_transfers() -> Iterator[None]:
    """9.0 draws two tqdm bars per device round trip; the tool shows its
    own progress."""
    from coremltools.models.ml_program.experimental import remote_device
    bars = remote_device._tqdm
    remote_device._tqdm = types.SimpleNamespace(
        tqdm=functools.partial(bars.tqdm, disable=True))
    try:
        yield
    finally:
        remote_device._tqdm = bars


def _loaded_model(benchmarker):
    """The model ``benchmark_load`` loaded: 9.0 keeps it here and has no
    public way to predict with it or unload it."""
    return benchmarker._loaded_model


def _max_abs_diff(outputs: Dict[str, Any],
                  reference: Dict[str, np.ndarray]) -> float:
    worst = 0.
    for name, ref in reference.items():
        ref = np.asarray(ref, np.float64)
        out = np.asarray(outputs[name], np.float64).reshape(ref.shape)
        worst = max(worst, float(np.max(np.abs(out - ref))))
    return worst


async def _placement(benchmarker, inputs) -> Dict[str, Any]:
    """The placement read on the loaded model (one prediction), or why it
    could not be."""
    try:
        infos = await benchmarker.benchmark_operation_execution(
            inputs=inputs, iterations=1)
        return dict(placement=placement_summary(
            placements_from_execution_infos(infos)))
    except Exception as exc:  # noqa: BLE001  (the timing stands)
        return dict(placement=None, placement_error=one_line(exc))


async def _measure(benchmarker, inputs, protocol: TimingProtocol,
                   reference, placement: bool,
                   tick: Callable[[int], None]) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    if reference:
        outputs = await _loaded_model(benchmarker).predict(inputs, state=None)
        result['max_abs_diff'] = _max_abs_diff(outputs, reference)
        tick(1)
    if protocol.warmup:
        await benchmarker.benchmark_predict(inputs=inputs,
                                            iterations=protocol.warmup)
        tick(protocol.warmup)
    samples: List[float] = []
    for _ in range(protocol.rounds):
        measurement = await benchmarker.benchmark_predict(
            inputs=inputs, iterations=protocol.per_round)
        samples += measurement.samples
        tick(protocol.per_round)
    result.update(summarize_samples(samples, protocol))
    if placement:
        result.update(await _placement(benchmarker, inputs))
        tick(1)
    return result


async def _session(benchmarker, inputs, protocol: TimingProtocol,
                   reference, placement: bool,
                   tick: Callable[[int], None]) -> Dict[str, Any]:
    """Load once, measure, unload in this same event loop (a device model
    left loaded stays in the runner app: 9.0 would unload it from a loop
    that is closed by then)."""
    load = await benchmarker.benchmark_load(iterations=1)
    unload_error = None
    try:
        result = await _measure(benchmarker, inputs, protocol, reference,
                                placement, tick)
    finally:
        try:
            await _loaded_model(benchmarker).unload()
        except Exception as exc:  # noqa: BLE001  (said in the result)
            unload_error = one_line(exc)
    result['first_load_ms'] = float(load.samples[0])
    if unload_error:
        result['unload_error'] = unload_error
    return result


def benchmark_package(path: str, inputs: Dict[str, Any], compute_unit: str,
                      protocol: TimingProtocol, device=None,
                      placement: bool = True,
                      reference: Optional[Dict[str, np.ndarray]] = None,
                      progress: Optional[Callable[[int, int], None]] = None
                      ) -> Dict[str, Any]:
    """Time ``path`` on this Mac or on ``device`` (from
    :func:`prepare_device`) by ``protocol`` and read its op placement.

    The model is loaded once; with ``reference`` (output name -> array)
    its first prediction is checked (``max_abs_diff``). ``progress(done,
    total)`` is called as predictions complete. A placement that cannot be
    read gives ``placement=None`` and ``placement_error``; the timing
    stays. macOS only (raises ``RuntimeError`` elsewhere)."""
    line = macos_only('timing')
    if line:
        raise RuntimeError(line)
    if device is not None:
        check_device_inputs(inputs)
    import coremltools as ct
    from coremltools.models.ml_program.experimental.perf_utils import \
        MLModelBenchmarker
    model = ct.models.MLModel(
        path, compute_units=getattr(ct.ComputeUnit, compute_unit),
        skip_model_load=True)
    benchmarker = MLModelBenchmarker(model=model, device=device)
    unavailable = placement_unavailable(device) if placement else None
    reads_placement = placement and unavailable is None
    total = (int(bool(reference)) + protocol.warmup + protocol.predictions
             + int(reads_placement))
    done = 0

    def tick(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    with _files_cleaned_up(device), _quiet_transfers():
        result = run_async(_session(benchmarker, inputs, protocol, reference,
                                    reads_placement, tick))
    if unavailable:
        result.update(placement=None, placement_error=unavailable)
    result.update(compute_unit=compute_unit,
                  device=getattr(device, 'name', None) or 'this Mac')
    return result
