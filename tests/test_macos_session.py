"""The Core ML session end to end, on any OS: ``benchmark_package``,
``prepare_device`` and the tool's run driven the way production calls
them, through coremltools 9.0's own ``MLModelBenchmarker``, ``Device``,
``ModelStructurePath`` and compute-plan classes and a real converted
package. Only what needs Apple's runtime is faked, with 9.0's behaviour:

* the loaded model (an ``MLModelAsyncWrapper``): its device transfer turns
  inputs into arrays and rejects uint8; a device model must be unloaded in
  the event loop that loaded it; each load and each device prediction
  leaves files in the temp folder;
* the compute plan: it raises below macOS 14.4; ``MLModelBenchmarker``
  itself then makes one execution record per op *output*;
* devices: a state (connected or not) and, once prepared, a session;
  Xcode's tools on PATH, ``devicectl`` found by ``xcrun`` only.
"""
import asyncio
import dataclasses
import json
import os
import platform
import stat
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

ct = pytest.importorskip('coremltools')

from coremltools.models import compute_device as cd  # noqa: E402
from coremltools.models import compute_plan as cp  # noqa: E402
from coremltools.models.ml_program.experimental import \
    remote_device as rd  # noqa: E402
from coremltools.models.ml_program.experimental.async_wrapper import \
    MLModelAsyncWrapper  # noqa: E402

from iformer_mm.deploy import macos, report  # noqa: E402
from iformer_mm.deploy.macos import TimingProtocol  # noqa: E402

TEAM = 'ABCDE12345'
#: What 9.0's device transfer accepts (remote_device._TensorDescriptor).
SENDABLE = (np.float16, np.float32, np.float64, np.int32)


def _device_class(base):
    return type(base.__name__, (base, ), {'__init__': lambda self: None})


NE = _device_class(cd.MLNeuralEngineComputeDevice)()
CPU = _device_class(cd.MLCPUComputeDevice)()


# --------------------------------------------------------------------------
# A real package: relu, a 2-way split (two outputs), add.
# --------------------------------------------------------------------------
@pytest.fixture(scope='module')
def package(tmp_path_factory):
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 2, 2))],
                opset_version=ct.target.iOS17)
    def prog(image):
        a, b = mb.split(x=mb.relu(x=image), num_splits=2, axis=1)
        return mb.add(x=a, y=b, name='out0')

    mlmodel = ct.convert(prog, convert_to='mlprogram',
                         minimum_deployment_target=ct.target.iOS17,
                         pass_pipeline=ct.PassPipeline.EMPTY,
                         skip_model_load=True)
    path = str(tmp_path_factory.mktemp('pkg') / 'model.mlpackage')
    mlmodel.save(path)
    return path


FEED = {'image': np.ones((1, 4, 2, 2), np.float32)}
EXPECTED = {'out0': np.zeros((1, 2, 2, 2), np.float32)}


# --------------------------------------------------------------------------
# The Core ML runtime, faked with 9.0's behaviour.
# --------------------------------------------------------------------------
class Runtime:
    """What the runtime saw: loads, predictions, plans, unloads, arrays
    sent to a device, files left in the temp folder."""

    def __init__(self, macos_version, plan_error=None):
        self.macos, self.plan_error = macos_version, plan_error
        self.loads = self.unloads = self.plans = 0
        self.durations_ms, self.sent, self.left_behind = [], [], []
        self.loop = None

    def next_duration_ns(self) -> int:
        ms = 2.0 + 0.5 * (len(self.durations_ms) % 5)
        self.durations_ms.append(ms)
        return int(ms * 1e6)

    def leave_file(self, suffix):
        fd, name = tempfile.mkstemp(suffix=suffix)
        os.close(fd)
        self.left_behind.append(name)


class Plan:
    """An MLComputePlan over the package's ops (split on the CPU)."""
    COST = {'relu': 0.2, 'split': 0.3, 'add': 0.5}

    def __init__(self, spec):
        block = next(iter(spec.mlProgram.functions['main']
                          .block_specializations.values()))
        ops = [cp.MLModelStructureProgramOperation(
            inputs={}, operator_name=op.type, blocks=[], __proxy__=None,
            outputs=[cp.MLModelStructureProgramNamedValueType(
                name=o.name, type=None) for o in op.outputs])
            for op in block.operations]
        self.model_structure = cp.MLModelStructure(
            neuralnetwork=None, pipeline=None,
            program=cp.MLModelStructureProgram(functions={
                'main': cp.MLModelStructureProgramFunction(
                    inputs=[], block=cp.MLModelStructureProgramBlock(
                        inputs=[], operations=ops,
                        output_names=list(block.outputs)))}))

    def get_compute_device_usage_for_mlprogram_operation(self, op):
        if op.operator_name == 'const':
            return None
        if op.operator_name == 'split':
            return cp.MLComputePlanDeviceUsage(CPU, [CPU, NE])
        return cp.MLComputePlanDeviceUsage(NE, [NE, CPU])

    def get_estimated_cost_for_mlprogram_operation(self, op):
        weight = self.COST.get(op.operator_name)
        return None if weight is None else cp.MLComputePlanCost(weight)


class LoadedModel(MLModelAsyncWrapper):
    """9.0's local or remote loaded model, with the runtime faked."""

    def __init__(self, runtime, device=None, **kwargs):
        super().__init__(**kwargs)
        self.runtime, self.device, self.last = runtime, device, None
        self.loaded = False

    async def load(self):
        rt = self.runtime
        rt.loads += 1
        rt.loop = asyncio.get_running_loop()
        self.temp_asset_path = tempfile.mkdtemp()  # the compiled copy
        rt.left_behind.append(self.temp_asset_path)
        if self.device is not None:  # the socket's request/response folder
            (self.device.session.working_directory /
             str(uuid.uuid4())).mkdir(parents=True)
        self.loaded = True

    def make_state_if_needed(self):
        return None

    async def predict(self, inputs, state=None):
        if self.device is not None:
            arrays = [np.array(v) for v in inputs.values()]  # as 9.0
            for array in arrays:
                if array.dtype not in SENDABLE:
                    raise ValueError(f'{array.dtype} is not supported')
            self.runtime.sent += [a.dtype for a in arrays]
            self.runtime.leave_file('.bin')  # 9.0 never deletes it
        self.last = self.runtime.next_duration_ns()
        return {o.name: np.zeros(tuple(o.type.multiArrayType.shape),
                                 np.float32)
                for o in self.spec_or_path.description.output}

    async def retrieve_compute_plan(self):
        rt = self.runtime
        rt.plans += 1
        if tuple(map(int, rt.macos.split('.'))) < (14, 4):
            raise RuntimeError('MLComputePlan is not available')
        if rt.plan_error:
            raise RuntimeError(rt.plan_error)
        return Plan(self.spec_or_path)

    async def unload(self):
        if self.device is not None:
            # 9.0's remote service belongs to the loop that loaded it.
            assert asyncio.get_running_loop() is self.runtime.loop
        self.runtime.unloads += 1
        self.loaded = False

    @property
    def load_duration_in_nano_seconds(self):
        return 250_000_000 if self.loaded else None

    @property
    def last_predict_duration_in_nano_seconds(self):
        return self.last


@pytest.fixture
def apple(monkeypatch):
    """``apple(macOS version)``: this process on a Mac with that version,
    the Core ML runtime faked; returns what the runtime saw."""
    def make(version='15.1', plan_error=None):
        rt = Runtime(version, plan_error)
        monkeypatch.setattr(platform, 'system', lambda: 'Darwin')
        monkeypatch.setattr(platform, 'mac_ver',
                            lambda: (version, ('', '', ''), 'arm64'))
        monkeypatch.setattr(
            MLModelAsyncWrapper, 'from_spec_or_path',
            staticmethod(lambda device=None, **kw: LoadedModel(rt, device,
                                                               **kw)))
        return rt
    return make


class Session:
    """9.0's app session as the tool sees it."""

    def __init__(self, folder):
        self.working_directory = Path(folder)
        self.stopped = False
        self.is_alive = True

    def stop(self):
        self.stopped = True


def phone(name="Ana's iPhone", state=rd.DeviceState.CONNECTED,
          session=None, ios='18.1'):
    return rd.Device(name=name, type=rd.DeviceType.IPHONE,
                     identifier=f'ID-{name}', udid=f'udid-{len(name)}',
                     os_version=ios, os_build_number='22B83',
                     developer_mode_state='enabled', state=state,
                     session=session)


def statistics(samples):
    return dict(min_ms=min(samples), median_ms=float(np.median(samples)),
                mean_ms=pytest.approx(float(np.mean(samples))),
                std_ms=pytest.approx(float(np.std(samples))),
                max_ms=max(samples))


# --------------------------------------------------------------------------
# benchmark_package
# --------------------------------------------------------------------------
def test_a_mac_session_loads_once_and_reports_per_prediction_statistics(
        package, apple):
    rt = apple('15.1')
    protocol = TimingProtocol(warmup=2, rounds=3, per_round=4)
    steps, tmp = [], tempfile.tempdir
    result = macos.benchmark_package(
        package, FEED, 'CPU_AND_NE', protocol, reference=EXPECTED,
        progress=lambda done, total: steps.append((done, total)))
    assert (rt.loads, rt.unloads) == (1, 1)
    timed = rt.durations_ms[3:15]          # after the check and the warm-up
    assert result['samples_ms'] == timed and result['predictions'] == 12
    assert {k: result[k] for k in statistics(timed)} == statistics(timed)
    assert result['first_load_ms'] == 250.0
    assert result['max_abs_diff'] == 0.0
    assert (result['device'], result['compute_unit']) == \
        ('this Mac', 'CPU_AND_NE')
    # Each op once: relu, split (two outputs, two records), add.
    placement = result['placement']
    assert placement['ops'] == 3
    assert placement['cpu_ops']['split']['count'] == 1
    assert placement['by_device']['CPU']['cost_share'] == pytest.approx(0.3)
    assert steps[-1] == (16, 16) and steps == sorted(steps)
    assert tempfile.tempdir is tmp
    assert not [p for p in rt.left_behind if os.path.exists(p)]


def test_a_device_session_unloads_its_model_and_leaves_no_files(
        package, apple, tmp_path):
    rt = apple('15.1')
    exchange = tmp_path / 'exchange'
    exchange.mkdir()
    (exchange / 'not-ours.txt').write_text('kept')
    device = phone(session=Session(exchange))
    protocol = TimingProtocol(warmup=3, rounds=3, per_round=10)
    result = macos.benchmark_package(package, FEED, 'ALL', protocol,
                                     device=device)
    assert (rt.loads, rt.unloads) == (1, 1)
    assert 'unload_error' not in result
    # Placement needs one prediction, not a round.
    assert len(rt.durations_ms) == protocol.warmup + protocol.predictions + 1
    assert result['device'] == "Ana's iPhone"
    assert result['placement']['ops'] == 3
    assert not [p for p in rt.left_behind if os.path.exists(p)]
    assert sorted(os.listdir(exchange)) == ['not-ours.txt']


def test_an_image_input_is_refused_before_anything_reaches_the_device(
        package, apple, tmp_path):
    from PIL import Image
    rt = apple('15.1')
    image = {'image': Image.new('RGB', (2, 2))}
    with pytest.raises(ValueError):
        macos.benchmark_package(package, image, 'ALL', TimingProtocol(),
                                device=phone(session=Session(tmp_path)))
    assert (rt.loads, rt.sent) == (0, [])


@pytest.mark.parametrize('version, plan_error, asked', [
    ('14.2', None, 0),                  # MLComputePlan needs 14.4
    ('15.1', 'no plan for this model', 1),
])
def test_a_failed_placement_keeps_the_timing(package, apple, version,
                                             plan_error, asked):
    rt = apple(version, plan_error)
    protocol = TimingProtocol(warmup=0, rounds=1, per_round=5)
    result = macos.benchmark_package(package, FEED, 'ALL', protocol)
    assert result['samples_ms'] == rt.durations_ms[:5]
    assert result['median_ms'] > 0
    assert result['placement'] is None and result['placement_error']
    assert rt.plans == asked and rt.unloads == 1
    if version == '14.2':
        assert '14.4' in result['placement_error']


def test_placement_on_a_device_needs_ios_17_4(package, apple, tmp_path):
    apple('15.1')
    device = phone(session=Session(tmp_path), ios='17.2')
    result = macos.benchmark_package(package, FEED, 'ALL',
                                     TimingProtocol(0, 1, 2), device=device)
    assert result['placement'] is None and '17.4' in result['placement_error']
    assert result['predictions'] == 2


def test_a_running_event_loop_is_no_obstacle(package, apple):
    rt = apple('15.1')

    async def notebook_cell():
        return macos.benchmark_package(package, FEED, 'ALL',
                                       TimingProtocol(0, 1, 3))
    assert asyncio.run(notebook_cell())['predictions'] == 3
    assert rt.unloads == 1


def test_the_runtime_status_tells_macos_below_14_4_apart(monkeypatch):
    from coremltools.models import model
    from iformer_mm.deploy.coreml import coreml_runtime_status
    monkeypatch.setattr(model, '_MLModelProxy', object())
    monkeypatch.setattr(platform, 'system', lambda: 'Darwin')
    for version, says in (('14.2', True), ('14.4', False), ('15.1', False)):
        monkeypatch.setattr(platform, 'mac_ver',
                            lambda v=version: (v, ('', '', ''), 'arm64'))
        available, line = coreml_runtime_status()
        assert available and ('placement' in line.lower()) == says


def test_the_report_gives_the_statistics_and_the_json_the_samples(
        package, apple, tmp_path):
    apple('14.2')
    timing = macos.benchmark_package(package, FEED, 'ALL',
                                     TimingProtocol(1, 2, 3))
    coreml = dict(status='timed', placement=timing.pop('placement'),
                  placement_error=timing.pop('placement_error'),
                  timing=timing)
    result = dict(label='Tiny', status='ok', coreml=coreml)
    lines = report.coreml_timing_lines([result])
    for word in ('median', 'mean', 'min', 'max', 'load', 'this Mac'):
        assert word in lines[0]
    assert 'placement' in lines[1] and '14.4' in lines[1]
    assert 'median' in report.coreml_cell(result)
    path = report.write_json(dict(results=[result]), str(tmp_path / 'r.json'))
    kept = json.loads(Path(path).read_text())['results'][0]['coreml']
    assert kept['timing']['samples_ms'] == timing['samples_ms']


# --------------------------------------------------------------------------
# prepare_device, device_session
# --------------------------------------------------------------------------
def _executable(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('#!/bin/sh\n' + body + '\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def xcode(monkeypatch, tmp_path):
    """Xcode as the tool sees it: ``xcodebuild`` and ``xcrun`` on PATH,
    ``devicectl`` found by ``xcrun --find`` only; devicectl lists
    ``listed``; preparing behaves like 9.0's (a device that is not
    connected is refused, an unsigned app does not install) and records
    what it was asked."""
    tools = tmp_path / 'Xcode' / 'bin'
    _executable(tools / 'devicectl', 'exit 0')
    _executable(tmp_path / 'bin' / 'xcodebuild', 'exit 0')
    _executable(tmp_path / 'bin' / 'xcrun',
                f'[ "$2" = devicectl ] && echo {tools}/devicectl')
    monkeypatch.setenv('PATH', str(tmp_path / 'bin'))
    state = dict(listed=[phone(), phone('iPad', rd.DeviceState.DISCONNECTED)],
                 prepared=[], tools=str(tools))

    async def prepare(self, credentials=None, working_directory=None,
                      clean=False):
        state['prepared'].append((self.name, credentials, working_directory))
        if self.state != rd.DeviceState.CONNECTED:
            raise ValueError('Required: State must be CONNECTED.')
        if not (credentials and credentials.development_team):
            raise RuntimeError('The app is ad-hoc signed; iOS refused it.')
        build = Path(working_directory) / self.udid / 'ModelRunner.app'
        build.mkdir(parents=True, exist_ok=True)  # 9.0 reuses a build
        return dataclasses.replace(
            self, session=Session(Path(working_directory) / 'build'))

    monkeypatch.setattr(rd.Device, 'prepare_for_model_debugging', prepare)
    monkeypatch.setattr(rd.Device, 'get_devices',
                        staticmethod(lambda: state['listed']))
    return state


def test_prepare_device_signs_the_app_and_puts_devicectl_on_path(
        xcode, tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    device = macos.prepare_device("Ana's iPhone", TEAM, str(work))
    assert device.session is not None
    name, credentials, folder = xcode['prepared'][0]
    assert credentials.development_team == TEAM
    assert TEAM.lower() in credentials.bundle_identifier.lower()
    assert credentials.bundle_identifier != 'com.coremltools.modelrunnerd'
    assert Path(folder) == work
    assert xcode['tools'] in os.environ['PATH'].split(os.pathsep)
    macos.prepare_device("Ana's iPhone", TEAM, str(work), 'org.example.run')
    assert xcode['prepared'][1][1].bundle_identifier == 'org.example.run'


@pytest.mark.parametrize('name, team', [
    ('iPad', TEAM),               # disconnected
    ('Pixel', TEAM),              # not listed
    ("Ana's iPhone", None),       # unsigned: iOS would refuse the app
])
def test_an_unusable_device_is_refused_before_any_build(xcode, tmp_path,
                                                        name, team):
    with pytest.raises(macos.DeviceSetupError) as err:
        macos.prepare_device(name, team, str(tmp_path))
    assert '\n' not in str(err.value)
    assert xcode['prepared'] == []


def test_without_devicectl_the_error_says_what_to_do(xcode, tmp_path):
    _executable(tmp_path / 'bin' / 'xcrun', 'exit 1')
    with pytest.raises(macos.DeviceSetupError) as err:
        macos.prepare_device("Ana's iPhone", TEAM, str(tmp_path))
    assert 'devicectl' in str(err.value) and xcode['prepared'] == []


def test_a_device_session_stops_and_deletes_its_folder_in_a_notebook(xcode):
    async def notebook_cell():
        with macos.device_session("Ana's iPhone", TEAM) as device:
            return device, xcode['prepared'][0][2]
    device, folder = asyncio.run(notebook_cell())
    assert device.session.stopped
    assert not Path(folder).exists()


# --------------------------------------------------------------------------
# The tool's run on a Mac with an attached iPhone.
# --------------------------------------------------------------------------
def test_the_tool_times_on_the_device_and_reports_it(apple, xcode, tmp_path,
                                                     monkeypatch):
    import torch
    from coremltools.models import model
    from iformer_mm.deploy.backbones import BackboneSpec
    from iformer_mm.deploy.benchmark import BenchmarkConfig, run_benchmark
    rt = apple('15.1')
    monkeypatch.setattr(model, '_MLModelProxy', object())
    tiny = BackboneSpec(key='tiny', label='Tiny', family='peer',
                        size_divisor=1, build=lambda: torch.nn.Sequential(
                            torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU()))
    cfg = BenchmarkConfig(backbones=[], specs=[tiny], resolution=(32, 32),
                          out_dir=str(tmp_path / 'out'), onnx=False,
                          chart=False, channels_last=False, warmup=0, runs=1,
                          device="Ana's iPhone", device_team=TEAM,
                          predict_device='iPhone 13')
    run = run_benchmark(cfg, show_progress=False)
    coreml = run['results'][0]['coreml']
    assert coreml['status'] == 'timed', coreml.get('timing_error')
    assert coreml['timing']['device'] == "Ana's iPhone"
    assert coreml['max_abs_diff'] is not None
    assert (rt.loads, rt.unloads) == (1, 1)
    assert run['config']['protocol']['predictions'] == \
        macos.DEVICE_PROTOCOL.predictions
    assert "on Ana's iPhone" in run['markdown']
    saved = json.loads(Path(run['outputs']['json']).read_text())
    assert len(saved['results'][0]['coreml']['timing']['samples_ms']) == \
        macos.DEVICE_PROTOCOL.predictions
    assert not Path(xcode['prepared'][0][2]).exists()
