"""The latency benchmark: export, convert, census, time, report.

``tools/benchmark_latency.py`` is a thin wrapper around :func:`main`;
:func:`run_benchmark` is the library entry point.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..utils.complexity import count_params
from . import macos, report
from .backbones import (DEFAULT_PEERS, PEERS, BackboneError, BackboneSpec,
                        all_variant_specs, authors_specs, check_resolution,
                        resolve_backbone, table17_specs)
from .census import validate_package
from .coreml import (COMPUTE_UNITS, DEFAULT_IOS_TARGET, INPUT_TYPES,
                     IOS_TARGETS, CoreMLToolsMissing, ImageNormalisation,
                     coreml_inputs, coreml_runtime_status,
                     convert_exported_program, import_coremltools,
                     save_package)
from .executorch import (DELEGATES, ExecuTorchMissing, LoweringError,
                         backend_label, check_delegate, check_pte,
                         export_pte, import_executorch, runtime_status,
                         time_executorch)
from .export import (ImageInput, TupleOutputs, export_onnx, export_program,
                     flatten_outputs, fold_conv_bn_fx, fold_label,
                     prepare_for_deploy)
from .latency import (count_flops, gemm_fraction, max_abs_diff,
                      measure_gemm_rate, time_onnxruntime, time_torch)
from .predictor import (DEFAULT_DEVICE, Program, excluded_reason,
                        predict_for_tool)

DEFAULT_BACKBONES = ('iformer-m', )
#: What --backend chooses from, and what runs without it.
BACKENDS = ('coreml', 'onnx', 'executorch')
DEFAULT_RUN_BACKENDS = ('coreml', 'onnx')
DEFAULT_OUT = os.path.join('work_dirs', 'latency')
#: What is converted and timed: the whole classifier with one output (what
#: the authors' export_coreml.py converts; the default) or the dense
#: backbone with its feature maps (what a detector or segmentor runs).
PROGRAMS = ('classifier', 'dense')


@dataclass
class BenchmarkConfig:
    backbones: Sequence[str] = DEFAULT_BACKBONES
    resolution: Sequence[int] = (512, 512)
    warmup: int = 3
    runs: int = 10
    out_dir: str = DEFAULT_OUT
    compute_unit: str = 'ALL'
    ios_target: str = DEFAULT_IOS_TARGET
    precision: str = 'fp16'
    input_type: str = 'tensor'
    #: None: macos.MAC_PROTOCOL, or macos.DEVICE_PROTOCOL with a device.
    protocol: Optional[macos.TimingProtocol] = None
    placement: bool = True
    device: Optional[str] = None
    device_team: Optional[str] = None
    device_bundle_id: Optional[str] = None
    channels_last: bool = True
    threads: Optional[int] = None
    coreml: bool = True
    onnx: bool = True
    executorch: bool = False
    executorch_delegate: str = 'xnnpack'
    timing: bool = True
    chart: bool = True
    seed: int = 0
    program: str = 'classifier'
    # whose fitted latency model predicts the "predicted" column (None: the
    # --device being timed, else the iPhone 13 of the paper)
    predict_device: Optional[str] = None
    specs: List[BackboneSpec] = field(default_factory=list, repr=False)


# --------------------------------------------------------------------------
# Progress display.
# --------------------------------------------------------------------------
class Progress:
    """A rich progress bar on a terminal, one plain line per step otherwise."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done = total, 0
        self._bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            try:
                from rich.console import Console
                from rich.progress import (BarColumn, MofNCompleteColumn,
                                           Progress as RichProgress,
                                           TextColumn, TimeElapsedColumn)
                self._bar = RichProgress(
                    TextColumn('{task.description}'), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)
                self._task = self._bar.add_task('starting', total=total)
                self._bar.start()
            except ImportError:
                self._bar = None

    def step(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text)
        elif self.enabled:
            print(f'[{self.done + 1}/{self.total}] {text}', file=sys.stderr,
                  flush=True)

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)

    def log(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        elif self.enabled:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# --------------------------------------------------------------------------
# Environment.
# --------------------------------------------------------------------------
def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    if platform.system() == 'Darwin':
        import subprocess
        try:
            return subprocess.run(
                ['sysctl', '-n', 'machdep.cpu.brand_string'],
                capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine()


def _version(module: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:  # noqa: BLE001  (not installed)
        return None


def environment(threads: int) -> Dict[str, Any]:
    return dict(
        os=f'{platform.system()} {platform.release()}',
        platform=platform.platform(), machine=platform.machine(),
        cpu=_cpu_name(), logical_cpus=os.cpu_count(), threads=threads,
        python=platform.python_version(),
        versions={name: _version(name) for name in (
            'torch', 'numpy', 'coremltools', 'onnx', 'onnxruntime',
            'executorch',
            'mmengine', 'mmcv', 'mmdet', 'mmsegmentation', 'mmpretrain',
            'matplotlib')})


# --------------------------------------------------------------------------
# One backbone.
# --------------------------------------------------------------------------
_STEPS = ('build', 'export', 'coreml', 'onnx', 'executorch', 'time')


def _slug(key: str) -> str:
    return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in key)


def make_example(shape, seed: int, input_type: str,
                 image: Optional[ImageNormalisation]) -> torch.Tensor:
    """The input of a run: N(0, 1) noise for a tensor input; for an image
    input, random 8-bit RGB pixels normalised, so that Core ML's image
    preprocessing sees exactly the same picture."""
    gen = torch.Generator().manual_seed(seed)
    if input_type != 'image':
        return torch.randn(shape, generator=gen)
    pixels = torch.randint(0, 256, shape, generator=gen).float()
    mean = torch.tensor(image.mean).view(1, 3, 1, 1)
    std = torch.tensor(image.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def benchmark_one(spec: BackboneSpec, cfg: BenchmarkConfig,
                  coreml_runtime: bool, progress: Progress,
                  gemm: Optional[Dict[str, Any]] = None,
                  device=None,
                  predictor_params: Optional[Dict[str, Any]] = None
                  ) -> Dict[str, Any]:
    """Export, convert, census and time one backbone; never raises for a
    model failure (the failure is recorded and the run goes on).
    ``predictor_params``: the fitted latency model of the run (loaded from
    ``cfg.predict_device`` when not given)."""
    h, w = cfg.resolution
    shape = (1, 3, h, w)
    folder = os.path.join(cfg.out_dir, _slug(spec.key))
    os.makedirs(folder, exist_ok=True)
    image = ImageNormalisation() if cfg.input_type == 'image' else None
    result: Dict[str, Any] = dict(key=spec.key, label=spec.label,
                                  family=spec.family, source=spec.source,
                                  paper=spec.published_at((h, w)),
                                  status='ok', input_shape=list(shape))
    stage = 'build'
    done_steps = 0
    if cfg.program == 'dense' and not spec.dense:
        spec.unavailable = (f'{spec.label} has no OpenMMLab dense backbone '
                            'here, only its classifier (--program '
                            'classifier)')
    if spec.unavailable:
        # Reported once, in main()'s summary: one line per skipped peer.
        result.update(status='skipped', reason=spec.unavailable)
        for _ in range(len(_STEPS)):
            progress.advance()
        return result

    def step(name: str, text: str) -> None:
        nonlocal stage
        stage = name
        progress.step(f'{spec.label}: {text}')

    def advance() -> None:
        nonlocal done_steps
        done_steps += 1
        progress.advance()

    try:
        step('build', 'building')
        torch.manual_seed(cfg.seed)
        raw, program = build_program(spec, cfg.program, (h, w))
        result['program'] = program
        result['params_m'] = program['params'] / 1e6
        if program.get('adapted'):
            result['adapted'] = program['adapted']
        raw.eval()
        example = make_example(shape, cfg.seed, cfg.input_type, image)
        raw.eval()
        with torch.inference_mode():
            before = [t.numpy().copy() for t in flatten_outputs(raw(example))]
        model, fold = prepare_for_deploy(raw)
        if program['kind'] == 'classifier':
            fold = program['built']  # folded as the predictor's references
        model = TupleOutputs(model).eval()
        with torch.inference_mode():
            reference = [t.numpy().copy() for t in model(example)]
        result['deploy'] = fold
        result['fold_max_abs_diff'] = max_abs_diff(reference, before)
        result['output_shapes'] = [list(r.shape) for r in reference]
        program['outputs'] = len(reference)
        advance()

        step('export', 'torch.export')
        coreml: Dict[str, Any] = {}
        exported = mlmodel = None
        if cfg.coreml:
            result['coreml'] = coreml
            coreml['status'] = 'failed'
            coreml['input'] = image.describe() if image else 'FP32 tensor'
            try:
                t0 = time.perf_counter()
                if image is None:
                    exported = export_program(model, example)
                else:
                    factors = image.channel_factors
                    scaled = example if factors is None else \
                        example / torch.tensor(factors).view(1, 3, 1, 1)
                    exported = export_program(
                        ImageInput(model, factors).eval(), scaled)
                coreml['torch_export_s'] = time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001  (reported, run goes on)
                coreml['error'] = (f'torch.export failed: '
                                   f'{type(exc).__name__}: {exc}')
                coreml['traceback'] = traceback.format_exc(limit=6)
                progress.log(f'  {spec.label}: '
                             f'{coreml["error"].splitlines()[0][:200]}')
        advance()

        step('coreml', 'converting to Core ML')
        if exported is not None:
            try:
                t0 = time.perf_counter()
                mlmodel = convert_exported_program(
                    exported, shape, len(reference), cfg.ios_target,
                    fp16=cfg.precision == 'fp16', image=image)
                coreml['convert_s'] = time.perf_counter() - t0
                package = save_package(mlmodel, os.path.join(
                    folder, 'model.mlpackage'))
                coreml['package'] = package
                coreml['status'] = 'converted'
                check = validate_package(package, shape,
                                         result['output_shapes'],
                                         fp16=cfg.precision == 'fp16')
                coreml['census'] = check.pop('census')
                coreml['validation'] = check
                coreml['status'] = 'validated'
                coreml['predicted'] = predict_for_tool(mlmodel, Program(
                    program['kind'], program['excluded'], (h, w),
                    cfg.precision, cfg.ios_target, cfg.input_type,
                    len(reference)), cfg.predict_device or DEFAULT_DEVICE,
                    predictor_params)
            except Exception as exc:  # noqa: BLE001  (reported, run goes on)
                coreml['error'] = f'{type(exc).__name__}: {exc}'
                coreml['traceback'] = traceback.format_exc(limit=6)
                progress.log(f'  {spec.label}: Core ML conversion failed: '
                             f'{coreml["error"].splitlines()[0][:200]}')
        del exported, mlmodel
        advance()

        step('onnx', 'exporting ONNX')
        onnx_path = None
        if cfg.onnx:
            onnx: Dict[str, Any] = dict(status='failed')
            result['onnx'] = onnx
            try:
                t0 = time.perf_counter()
                onnx_path = export_onnx(
                    model, example, os.path.join(folder, 'model.onnx'),
                    [f'out{i}' for i in range(len(reference))])
                onnx.update(status='exported', path=onnx_path,
                            export_s=time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                onnx['error'] = f'{type(exc).__name__}: {exc}'
                progress.log(f'  {spec.label}: ONNX export failed: '
                             f'{onnx["error"].splitlines()[0][:200]}')
                onnx_path = None
        advance()

        step('executorch', 'exporting an ExecuTorch program (.pte)')
        if cfg.executorch:
            result['executorch'] = _export_executorch(
                model, example, reference, folder, spec.label, cfg, progress)
        advance()

        step('time', 'timing' if cfg.timing else 'checking ONNX output')
        if cfg.timing:
            threads = torch.get_num_threads()
            # The same Conv-BN fold for every row: iFormer arrives folded by
            # switch_to_deploy(), peers are folded here by a torch.fx pass.
            eager, fold_info = fold_conv_bn_fx(model)
            with torch.inference_mode():
                folded_out = [t.numpy() for t in eager(example)]
            fold_info['max_abs_diff'] = max_abs_diff(folded_out, reference)
            label = fold_label(fold_info)
            flops = count_flops(eager, example)
            result['flops'] = flops
            torch_rows: Dict[str, Any] = dict(
                backend=f'PyTorch eager CPU ({label}), proxy', fold=label,
                fold_info=fold_info)
            progress.step(f'{spec.label}: timing PyTorch eager CPU (NCHW)')
            torch_rows['timing'] = time_torch(eager, example, cfg.warmup,
                                              cfg.runs)
            if cfg.channels_last:
                progress.step(f'{spec.label}: timing PyTorch eager CPU '
                              '(channels_last)')
                torch_rows['channels_last'] = time_torch(
                    eager, example, cfg.warmup, cfg.runs, channels_last=True)
            result['torch'] = torch_rows
            if onnx_path:
                progress.step(f'{spec.label}: timing ONNX Runtime CPU')
                timing = time_onnxruntime(onnx_path, example.numpy(),
                                          threads, cfg.warmup, cfg.runs,
                                          reference)
                result['onnx'].update(
                    backend='ONNX Runtime CPU, proxy', status='timed',
                    max_abs_diff=timing.pop('max_abs_diff'),
                    load_s=timing.pop('load_s'), timing=timing)
            pte = result.get('executorch') or {}
            if pte.get('status') == 'checked':
                progress.step(f'{spec.label}: timing {pte["backend"]}')
                _time_executorch(pte, example, reference, threads, cfg)
            if gemm:
                rate = gemm['flops_per_s']
                shares = {}
                for name, timing in (
                        ('onnxruntime', (result.get('onnx') or {})
                         .get('timing')),
                        ('torch_nchw', torch_rows.get('timing')),
                        ('torch_channels_last',
                         torch_rows.get('channels_last')),
                        ('executorch', (result.get('executorch') or {})
                         .get('timing'))):
                    if timing:
                        shares[name] = gemm_fraction(
                            flops, timing['median_ms'], rate)
                result['gemm_fraction'] = shares
            coreml = result.get('coreml') or {}
            if coreml_runtime and coreml.get('status') == 'validated':
                _time_coreml(coreml, example, reference, image, cfg, device,
                             lambda text: progress.step(f'{spec.label}: '
                                                        f'{text}'))
        elif cfg.onnx and onnx_path:
            # Still check ONNX against PyTorch, once, without timing.
            timing = time_onnxruntime(onnx_path, example.numpy(),
                                      torch.get_num_threads(), 0, 1,
                                      reference)
            result['onnx']['max_abs_diff'] = timing['max_abs_diff']
        advance()
    except Exception as exc:  # noqa: BLE001  (reported, run goes on)
        result.update(status='failed', failed_stage=stage,
                      error=f'{type(exc).__name__}: {exc}',
                      traceback=traceback.format_exc(limit=8))
        progress.log(f'  {spec.label}: failed at {stage}: '
                     f'{result["error"].splitlines()[0][:200]}')
        for _ in range(len(_STEPS) - done_steps):
            progress.advance()
    return result


def build_program(spec: BackboneSpec, program: str,
                  size: Tuple[int, int]) -> Tuple[torch.nn.Module,
                                                  Dict[str, Any]]:
    """The network to convert and time, and what it is: the reference
    classifier of ``spec`` for ``program='classifier'`` (the dense backbone
    when it has none, with a note), else the dense backbone, adapted to
    ``size`` where it needs it."""
    if program == 'classifier' and spec.reference is not None:
        model, info = spec.build_classifier(size)
        return model, dict(kind='classifier',
                           excluded=excluded_reason(spec.reference[0]),
                           params=info['params'],
                           built=f"{info['library']} {info['model']}, "
                           f"{info['deploy']}")
    model = spec.build()
    info = dict(kind='dense', excluded=None, params=count_params(model),
                built=spec.source)
    if program == 'classifier':
        info['note'] = ('no classifier is known for this network: its '
                        'dense backbone was converted')
    if spec.adapt is not None:
        info['adapted'] = spec.adapt(model.eval(), size)
    return model, info


def _export_executorch(model: torch.nn.Module, example: torch.Tensor,
                       reference, folder: str, label: str,
                       cfg: BenchmarkConfig, progress: Progress
                       ) -> Dict[str, Any]:
    """Write ``model_<delegate>.pte`` and, where this runtime runs the
    delegate, check it against PyTorch; a failure is recorded, naming the
    network (and the op to blame), and the run goes on."""
    delegate = cfg.executorch_delegate
    fp16 = delegate == 'coreml' and cfg.precision == 'fp16'
    row: Dict[str, Any] = dict(status='failed', delegate=delegate,
                               backend=backend_label(delegate))
    try:
        row.update(export_pte(
            model, example, os.path.join(folder, f'model_{delegate}.pte'),
            delegate, name=label, ios_target=cfg.ios_target, fp16=fp16,
            compute_unit=cfg.compute_unit))
        row['status'] = 'exported'
        runs, row['runtime'] = runtime_status(delegate)
        if runs:
            row['check'] = check_pte(row['path'], example.numpy(), reference,
                                     fp16)
            row['status'] = 'checked'
    except Exception as exc:  # noqa: BLE001  (reported, run goes on)
        row['error'] = str(exc) if isinstance(exc, LoweringError) else \
            f'{label}: ExecuTorch failed: {type(exc).__name__}: {exc}'
        progress.log(f"  {row['error'].splitlines()[0][:300]}")
    return row


def _time_executorch(pte: Dict[str, Any], example: torch.Tensor, reference,
                     threads: int, cfg: BenchmarkConfig) -> None:
    """Time a checked ``.pte`` with the ExecuTorch runtime."""
    try:
        timing = time_executorch(pte['path'], example.numpy(), threads,
                                 cfg.warmup, cfg.runs, reference)
    except Exception as exc:  # noqa: BLE001  (reported, run goes on)
        pte['timing_error'] = f'{type(exc).__name__}: {exc}'
        return
    pte.update(status='timed', threads=timing.pop('threads'),
               threads_note=timing.pop('threads_note'),
               load_s=timing.pop('load_s'),
               max_abs_diff=timing.pop('max_abs_diff'), timing=timing)


def _time_coreml(coreml: Dict[str, Any], example: torch.Tensor,
                 reference, image, cfg: BenchmarkConfig, device,
                 say: Callable[[str], None]) -> None:
    """macOS: time the package by the protocol, on this Mac or the device,
    after checking its first prediction against PyTorch, and read its op
    placement; the progress display counts the predictions."""
    where = f'{cfg.compute_unit}, {getattr(device, "name", "this Mac")}'
    feed = coreml_inputs(example.numpy(), image)
    expected = {f'out{i}': ref for i, ref in enumerate(reference)}
    say(f'timing Core ML ({where})')
    try:
        timing = macos.benchmark_package(
            coreml['package'], feed, cfg.compute_unit, cfg.protocol,
            device=device, placement=cfg.placement, reference=expected,
            progress=lambda done, total: say(
                f'Core ML ({where}): {done}/{total} predictions'))
    except Exception as exc:  # noqa: BLE001  (reported, run goes on)
        coreml['timing_error'] = f'{type(exc).__name__}: {exc}'
        return
    coreml['max_abs_diff'] = timing.pop('max_abs_diff', None)
    coreml['placement'] = timing.pop('placement', None)
    if 'placement_error' in timing:
        coreml['placement_error'] = timing.pop('placement_error')
    coreml.update(status='timed', timing=timing,
                  backend=f'Core ML ({cfg.compute_unit}, '
                  f'{timing["device"]})')


# --------------------------------------------------------------------------
# A whole run.
# --------------------------------------------------------------------------
def macos_notes(cfg: BenchmarkConfig) -> List[str]:
    """One line for each macOS-only feature this run would use that this
    machine cannot run, with what the user gets instead."""
    if not cfg.coreml:
        return []
    wanted = ['timing'] if cfg.timing else []
    if cfg.timing and cfg.placement:
        wanted.append('placement')
    if cfg.compute_unit != 'ALL':
        wanted.append('compute_units')
    if cfg.device:
        wanted.append('device')
    return [line for line in map(macos.macos_only, wanted) if line]


def check_device_request(cfg: BenchmarkConfig) -> None:
    """``--device`` needs a name and a signing team, and a tensor input:
    coremltools 9.0 cannot send an image to a device. Checked on every OS,
    before anything runs; a bundle id is derived from the team when not
    given."""
    if cfg.device is None:
        return
    if not cfg.device.strip():
        raise ValueError('--device needs a device name (as Xcode / '
                         'devicectl lists it).')
    cfg.device_bundle_id = macos.check_signing(cfg.device_team,
                                               cfg.device_bundle_id)
    if cfg.input_type == 'image':
        raise macos.DeviceSetupError(
            '--input-type image cannot be timed on a device: coremltools '
            '9.0 sends an image as uint8, which its device transfer '
            'rejects; use --input-type tensor with --device, or time the '
            'image input on this Mac without --device.')


def attach_device(cfg: BenchmarkConfig, stack: contextlib.ExitStack,
                  progress: Progress, notes: List[str]):
    """Build, sign, install and launch the runner app on ``cfg.device``
    for the rest of the run (``stack`` stops its session and deletes its
    files); a :class:`macos.DeviceSetupError` stops the run."""
    for note in macos.check_device_tools():
        notes.append(note)
        progress.log(note)
    progress.log(f'Preparing {cfg.device}: building, signing '
                 f'({cfg.device_team}, {cfg.device_bundle_id}) and '
                 "installing coremltools' model-runner app (minutes) ...")
    device = stack.enter_context(macos.device_session(
        cfg.device, cfg.device_team, cfg.device_bundle_id))
    p = cfg.protocol
    progress.log(f'{device.name}: each prediction is a devicectl round '
                 f'trip; about {p.predictions + p.warmup + 5} per backbone.')
    return device


def collect_specs(cfg: BenchmarkConfig) -> List[BackboneSpec]:
    specs = [resolve_backbone(name) for name in cfg.backbones]
    specs += list(cfg.specs)
    seen, unique = set(), []
    for spec in specs:
        if spec.key not in seen:
            seen.add(spec.key)
            unique.append(spec)
    return unique


def check_predict_device(cfg: BenchmarkConfig) -> Dict[str, Any]:
    """The fitted parameters that predict the "predicted" column: those of
    ``--predict-device``, else of the ``--device`` timed, else of the
    paper's iPhone 13 (``cfg.predict_device`` is set to it);
    :class:`BackboneError` when that device has no fitted parameters."""
    from .predictor.model import load_params
    device = cfg.predict_device or cfg.device or DEFAULT_DEVICE
    try:
        params = load_params(device)
    except (OSError, ValueError) as exc:
        raise BackboneError(
            f'no fitted latency model for {device!r}; fit one with `python benchmarks/latency_predictor.py fit '
            f'--measurements YOUR.csv --device "{device}"`, or pass '
            f'--predict-device "{DEFAULT_DEVICE}".') from exc
    cfg.predict_device = device
    return params


def run_benchmark(cfg: BenchmarkConfig, show_progress: bool = True
                  ) -> Dict[str, Any]:
    """Run the benchmark and write ``latency.md``, ``latency.json`` and
    ``latency.png`` to ``cfg.out_dir``. Returns the JSON-able run record.

    Raises :class:`BackboneError` for bad names, configs and resolutions,
    :class:`CoreMLToolsMissing` when conversion is asked for without
    coremltools, and :class:`macos.DeviceSetupError` when ``--device``
    cannot be used, before anything is built.
    """
    if len(cfg.resolution) != 2:
        raise BackboneError(f'Resolution must be (height, width), got '
                            f'{cfg.resolution}.')
    h, w = (int(v) for v in cfg.resolution)
    cfg.resolution = (h, w)
    check_resolution(h, w)
    if cfg.precision not in ('fp16', 'fp32'):
        raise ValueError(f"precision must be 'fp16' or 'fp32', got "
                         f'{cfg.precision!r}.')
    if cfg.compute_unit not in COMPUTE_UNITS:
        raise ValueError(f'Unknown compute unit {cfg.compute_unit!r}; '
                         f'choose one of {COMPUTE_UNITS}.')
    if cfg.ios_target not in IOS_TARGETS:
        raise ValueError(f'Unknown iOS target {cfg.ios_target!r}; choose '
                         f'one of {IOS_TARGETS}.')
    if cfg.warmup < 0 or cfg.runs < 1:
        raise ValueError('Need --warmup >= 0 and --runs >= 1.')
    if cfg.input_type not in INPUT_TYPES:
        raise ValueError(f'Unknown input type {cfg.input_type!r}; choose one '
                         f'of {INPUT_TYPES}.')
    check_device_request(cfg)
    if cfg.protocol is None:
        cfg.protocol = macos.default_protocol(on_device=bool(cfg.device))
    if cfg.program not in PROGRAMS:
        raise ValueError(f'Unknown program {cfg.program!r}; choose one of '
                         f'{PROGRAMS}.')
    params = check_predict_device(cfg) if cfg.coreml else None
    specs = collect_specs(cfg)
    if not specs:
        raise BackboneError('No backbone to benchmark.')
    for spec in specs:
        spec.check_size(h, w)
    check_delegate(cfg.executorch_delegate)
    if cfg.coreml or (cfg.executorch and cfg.executorch_delegate == 'coreml'):
        import_coremltools()  # raises CoreMLToolsMissing with the fix
    et_line = None
    if cfg.executorch:
        import_executorch()  # raises ExecuTorchMissing with the fix
        et_line = runtime_status(cfg.executorch_delegate)[1]
    if cfg.coreml:
        runtime, line = coreml_runtime_status()
    else:
        runtime, line = False, ('Core ML conversion not selected (--backend '
                                'without coreml, or --no-coreml).')
    if cfg.coreml and runtime and not cfg.timing:
        line += ' Timing disabled (--no-timing).'
    notes = macos_notes(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()

    results = []
    with contextlib.ExitStack() as stack:
        progress = Progress(len(specs) * len(_STEPS), enabled=show_progress)
        stack.callback(progress.close)
        progress.log(f'Core ML: {line}')
        if et_line:
            progress.log(f'ExecuTorch ({cfg.executorch_delegate}): {et_line}')
        for note in notes:
            progress.log(note)
        device = None
        if cfg.device and runtime and cfg.coreml and cfg.timing:
            device = attach_device(cfg, stack, progress, notes)
        os.makedirs(cfg.out_dir, exist_ok=True)
        gemm = None
        if cfg.timing:
            progress.log('Measuring this machine\'s fp32 matmul rate ...')
            gemm = measure_gemm_rate()
        started = time.perf_counter()
        for spec in specs:
            results.append(benchmark_one(spec, cfg, runtime, progress,
                                         gemm=gemm, device=device,
                                         predictor_params=params))

    config = {k: v for k, v in asdict(cfg).items() if k != 'specs'}
    config['backbones'] = [s.key for s in specs]
    config['batch'] = 1
    config['protocol'] = cfg.protocol.as_dict()
    predictor = None
    if params is not None:
        from .predictor import proxy_verdict
        predictor = dict(device=cfg.predict_device,
                         verdict=proxy_verdict(params))
    run = dict(config=config, environment=environment(threads),
               predictor=predictor,
               coreml_runtime=runtime, coreml_line=line,
               executorch_line=et_line, macos_notes=notes,
               gemm=gemm, results=results,
               wall_s=time.perf_counter() - started)
    md = report.markdown_report(run)
    run['outputs'] = dict(
        markdown=os.path.join(cfg.out_dir, 'latency.md'),
        json=os.path.join(cfg.out_dir, 'latency.json'),
        chart=os.path.join(cfg.out_dir, 'latency.png') if cfg.chart
        else None)
    with open(run['outputs']['markdown'], 'w') as f:
        f.write(md)
    if cfg.chart:
        run['outputs']['chart'] = report.write_chart(
            run, run['outputs']['chart'])
    report.write_json(run, run['outputs']['json'])
    run['markdown'] = md
    return run


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='benchmark_latency.py',
        description='Export backbones to Core ML (.mlpackage), ONNX and '
        'ExecuTorch (.pte), count the Core ML ops, and time them: Core ML on '
        'macOS, labelled CPU proxies (PyTorch eager, ONNX Runtime, '
        'ExecuTorch XNNPACK) elsewhere.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('backbones', nargs='*', default=list(DEFAULT_BACKBONES),
                   help='iFormer archs (iformer-m, iformer-m:hybrid, '
                   'iformer-l:global, ...), config files, peer presets ('
                   + ', '.join(sorted(PEERS)) + ') or SCOPE.Type '
                   'registry names.')
    p.add_argument('--resolution', '--size', nargs='+', type=int,
                   default=[512], metavar='H [W]', help='input size')
    p.add_argument('--table17', action='store_true',
                   help="add Table 17's attention comparison: iFormer-M "
                   'with global, hybrid and channel-chunked hybrid SHMA')
    p.add_argument('--peers', nargs='*', default=None, metavar='PEER',
                   help='add peers; with no names the Table 5 set: '
                   + ', '.join(DEFAULT_PEERS))
    p.add_argument('--all-variants', action='store_true',
                   help='add every iFormer arch in the three Table 17 '
                   'layouts')
    p.add_argument('--authors', action='store_true',
                   help="add the released code's layouts (authors: explicit "
                   'attention, authors-fa: SDPA) for iFormer-M, L and L2')
    p.add_argument('--program', default='classifier', choices=PROGRAMS,
                   help='what is converted and timed: the whole classifier '
                   "(one output; what the authors' export_coreml.py converts "
                   'and, most likely, what Table 5 timed) or the dense '
                   'backbone with its feature maps (what a detector or '
                   'segmentor runs; configs and registry names have only '
                   'this)')
    p.add_argument('--predict-device', default=None, metavar='DEVICE',
                   help='whose fitted latency model predicts the predicted '
                   'column (default: the --device timed, else iPhone 13)')
    p.add_argument('--no-channels-last', action='store_true',
                   help='skip the channels_last PyTorch timing')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--runs', type=int, default=10)
    p.add_argument('--out', default=DEFAULT_OUT, help='output folder')
    mac = p.add_argument_group(
        'Core ML on macOS (elsewhere each says what it needs and what you '
        'get instead)')
    mac.add_argument('--compute-units', '--compute-unit',
                     dest='compute_unit', default='ALL',
                     choices=COMPUTE_UNITS,
                     help='Core ML compute units for timing and placement')
    mac.add_argument('--ios-target', default=DEFAULT_IOS_TARGET,
                     choices=IOS_TARGETS,
                     help='minimum deployment target of the package')
    mac.add_argument('--precision', default='fp16', choices=('fp16', 'fp32'),
                     help='Core ML compute precision (weights and compute)')
    mac.add_argument('--input-type', default='tensor', choices=INPUT_TYPES,
                     help='package input: an FP32 tensor, or an RGB image '
                     '(ct.ImageType, ImageNet normalisation folded into '
                     'its scale and bias)')
    mac_p, dev_p = macos.MAC_PROTOCOL, macos.DEVICE_PROTOCOL
    mac.add_argument('--rounds', type=int, default=argparse.SUPPRESS,
                     help='Core ML timing: rounds of --per-round timed '
                     'predictions (one progress step each; default '
                     f'{mac_p.rounds} on this Mac, {dev_p.rounds} with '
                     '--device)')
    mac.add_argument('--per-round', type=int, default=argparse.SUPPRESS,
                     help='Core ML timing: timed predictions per round '
                     f'(default {mac_p.per_round} on this Mac, '
                     f'{dev_p.per_round} with --device, where each is a '
                     'devicectl round trip of a few seconds)')
    mac.add_argument('--warmup-predictions', type=int, default=argparse.SUPPRESS,
                     help='Core ML timing: untimed predictions first '
                     f'(default {mac_p.warmup} on this Mac, {dev_p.warmup} '
                     'with --device)')
    mac.add_argument('--trim', type=float, default=mac_p.trim,
                     help='Core ML timing: fraction of the timed predictions '
                     'dropped at each end for the trimmed mean (min, median, '
                     'mean, std and max use them all)')
    mac.add_argument('--no-placement', action='store_true',
                     help='skip the per-op placement (MLComputePlan, macOS '
                     '14.4+ / iOS 17.4+; one more prediction)')
    mac.add_argument('--device', default=None, metavar='NAME',
                     help='time on an attached, connected iPhone/iPad (name, '
                     "identifier or UDID) through coremltools' remote-device "
                     'API; needs --device-team and a tensor input '
                     '(docs/macos.md)')
    mac.add_argument('--device-team', default=None, metavar='TEAM',
                     help='Apple development team id (10 characters) that '
                     'signs the model-runner app; required with --device')
    mac.add_argument('--device-bundle-id', default=None, metavar='ID',
                     help='bundle id of the model-runner app; None: '
                     'com.<team>.iformer-mm.modelrunner, derived from '
                     '--device-team')
    p.add_argument('--threads', type=int, default=None,
                   help='CPU threads for the proxies (default: torch\'s)')
    p.add_argument('--backend', nargs='+', choices=BACKENDS, default=None,
                   help='what to export (and time where it runs), besides '
                   'the PyTorch eager proxy; default: '
                   + ' '.join(DEFAULT_RUN_BACKENDS))
    p.add_argument('--executorch-delegate', choices=DELEGATES, default=None,
                   help='ExecuTorch delegate: xnnpack (CPU, the Android '
                   'path; default) or coreml (the iOS path: lowers here, '
                   'runs on macOS/iOS only)')
    p.add_argument('--no-coreml', action='store_true',
                   help='skip Core ML conversion (proxies only)')
    p.add_argument('--no-onnx', action='store_true', help='skip ONNX')
    p.add_argument('--no-timing', action='store_true',
                   help='export, validate and count ops only')
    p.add_argument('--no-chart', action='store_true')
    p.add_argument('--quiet', action='store_true', help='no progress display')
    p.add_argument('--seed', type=int, default=0)
    return p


def protocol_from_args(args: argparse.Namespace) -> macos.TimingProtocol:
    """The default protocol of this Mac or of a device, with the values
    given on the command line."""
    given = dict(warmup=getattr(args, 'warmup_predictions', None),
                 rounds=getattr(args, 'rounds', None),
                 per_round=getattr(args, 'per_round', None), trim=args.trim)
    return dataclasses.replace(
        macos.default_protocol(on_device=args.device is not None),
        **{k: v for k, v in given.items() if v is not None})


def selected_backends(args: argparse.Namespace) -> List[str]:
    """``--backend`` (or the default pair) less ``--no-coreml`` and
    ``--no-onnx``."""
    chosen = list(args.backend or DEFAULT_RUN_BACKENDS)
    dropped = {'coreml': args.no_coreml, 'onnx': args.no_onnx}
    chosen = [b for b in chosen if not dropped.get(b)]
    if args.executorch_delegate and 'executorch' not in chosen:
        raise ValueError('--executorch-delegate needs --backend ... '
                         'executorch.')
    return chosen


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    res = args.resolution
    if len(res) == 1:
        res = [res[0], res[0]]
    elif len(res) != 2:
        raise BackboneError(f'--resolution takes H or H W, got {res}.')
    # Order: the attention comparison / variant sweep, the named backbones
    # (iFormer-M by default), then the peers; duplicates are dropped.
    specs: List[BackboneSpec] = []
    if args.table17:
        specs += table17_specs('m')
    if args.all_variants:
        specs += all_variant_specs()
    if args.authors:
        specs += authors_specs()
    specs += [resolve_backbone(name) for name in args.backbones]
    if args.peers is not None:
        specs += [resolve_backbone(n) for n in (args.peers or DEFAULT_PEERS)]
    backends = selected_backends(args)
    return BenchmarkConfig(
        backbones=[], resolution=res, warmup=args.warmup,
        runs=args.runs, out_dir=args.out, compute_unit=args.compute_unit,
        ios_target=args.ios_target, precision=args.precision,
        input_type=args.input_type, protocol=protocol_from_args(args),
        placement=not args.no_placement, device=args.device,
        device_team=args.device_team, device_bundle_id=args.device_bundle_id,
        channels_last=not args.no_channels_last,
        threads=args.threads, coreml='coreml' in backends,
        onnx='onnx' in backends, executorch='executorch' in backends,
        executorch_delegate=args.executorch_delegate or 'xnnpack',
        timing=not args.no_timing, chart=not args.no_chart, seed=args.seed,
        program=args.program, predict_device=args.predict_device,
        specs=specs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        run = run_benchmark(cfg, show_progress=not args.quiet)
    except (BackboneError, CoreMLToolsMissing, ExecuTorchMissing,
            ValueError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    print(run['markdown'])
    outputs = run['outputs']
    print('Wrote ' + ', '.join(p for p in outputs.values() if p))
    failed = [r['label'] for r in run['results'] if r['status'] == 'failed']
    if failed:
        print(f'{len(failed)} backbone(s) failed: {", ".join(failed)} '
              '(see the table and latency.json).')
    skipped = [r for r in run['results'] if r['status'] == 'skipped']
    for r in skipped:
        print(f"skipped {r['label']}: {r['reason']}")
    return 0
