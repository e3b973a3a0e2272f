"""The macOS path of the latency tool, tested on any OS: argument handling,
the timing statistics, the op-placement summary and the report, on records
built from coremltools 9.0's own classes (``MLModelBenchmarker``'s
execution records, one per op *output*, with a real
``ModelStructurePath``). Nothing here runs Core ML; the whole session
through fakes of the runtime is ``test_macos_session.py``."""
import platform

import numpy as np
import pytest

from iformer_mm.deploy import macos
from iformer_mm.deploy.macos import TimingProtocol

ct = pytest.importorskip('coremltools')


# --------------------------------------------------------------------------
# Execution records shaped by coremltools 9.0 itself.
# --------------------------------------------------------------------------
def compute_devices():
    """Instances of 9.0's compute-device classes (their proxies only exist
    on macOS, so the constructor is bypassed)."""
    from coremltools.models import compute_device as cd
    made = []
    for base in (cd.MLNeuralEngineComputeDevice, cd.MLGPUComputeDevice,
                 cd.MLCPUComputeDevice):
        made.append(type(base.__name__, (base, ), {
            '__init__': lambda self: None})())
    return made


NE, GPU, CPU = compute_devices()


def usage(preferred, *supported):
    from coremltools.models.compute_plan import MLComputePlanDeviceUsage
    return MLComputePlanDeviceUsage(
        preferred_compute_device=preferred,
        supported_compute_devices=list(supported or [preferred]))


def execution_infos(ops, total_ms=10.0):
    """What ``benchmark_operation_execution`` returns for ``ops`` (op type,
    output names, device usage, cost weight): one record per output, each
    with the op's spec and the path of that output, sorted by time."""
    from coremltools.models.ml_program.experimental.model_structure_path \
        import ModelStructurePath as P
    from coremltools.models.ml_program.experimental.perf_utils import \
        MLModelBenchmarker as B
    from coremltools.proto import MIL_pb2
    block = (P.Program(), P.Program.Function(name='main'),
             P.Program.Block(index=-1))
    infos = []
    for op_type, outputs, use, weight in ops:
        spec = MIL_pb2.Operation(type=op_type)
        for name in outputs:
            spec.outputs.add(name=name)
        samples = [] if weight is None else [total_ms * weight]
        for name in outputs:
            infos.append(B.OperationExecutionInfo(
                spec=spec,
                path=P(components=block + (P.Program.Operation(
                    output_name=name), )),
                compute_device_usage=use,
                measurement=B.Measurement.from_samples(samples)))
    return sorted(infos, key=lambda i: i.measurement.sort_key, reverse=True)


def recorded_ops():
    """conv on the NE, a reshape/transpose pair on the CPU (the NE could
    run the reshape), softmax on the GPU, a 2-way split on the CPU (two
    records, one op) and a const (no placement)."""
    return [
        ('conv', ['c0'], usage(NE, NE, GPU, CPU), 0.5),
        ('reshape', ['r0'], usage(CPU, CPU, NE), 0.1),
        ('transpose', ['t0'], usage(CPU, CPU), 0.1),
        ('softmax', ['s0'], usage(GPU, GPU, CPU), 0.15),
        ('split', ['p0', 'p1'], usage(CPU, CPU), 0.1),
        ('const', ['k0'], None, None),
    ]


# --------------------------------------------------------------------------
# Placement.
# --------------------------------------------------------------------------
def test_each_op_is_counted_once_though_coremltools_records_each_output():
    infos = execution_infos(recorded_ops())
    assert len(infos) == 7                        # split gives two records
    records = macos.placements_from_execution_infos(infos)
    assert sorted(r.op_type for r in records) == [
        'conv', 'reshape', 'softmax', 'split', 'transpose']
    conv = next(r for r in records if r.op_type == 'conv')
    assert conv == macos.OpPlacement('conv', 'Neural Engine',
                               ('Neural Engine', 'GPU', 'CPU'),
                               pytest.approx(5.0))
    summary = macos.placement_summary(records)
    assert summary['cpu_ops']['split']['count'] == 1
    assert summary['by_device']['CPU']['cost_share'] == pytest.approx(
        0.3 / 0.95)


def test_two_ops_with_the_same_outputs_names_in_different_blocks_are_two():
    infos = execution_infos([('add', ['x'], usage(NE), 0.5)])
    inner = execution_infos([('add', ['x'], usage(CPU), 0.5)])[0]
    from coremltools.models.ml_program.experimental.model_structure_path \
        import ModelStructurePath as P
    components = inner.path.components
    inner.path = P(components=components[:-1] + (
        P.Program.Operation(output_name='cond_0'),
        P.Program.Block(index=0), components[-1]))
    assert len(macos.placements_from_execution_infos(infos + [inner])) == 2


def test_placement_summary_shares_and_cpu_fallback():
    summary = macos.placement_summary(macos.placements_from_execution_infos(
        execution_infos(recorded_ops())))
    assert (summary['ops'], summary['placed'], summary['unplaced']) == \
        (5, 5, 0)
    by = summary['by_device']
    assert list(by) == ['Neural Engine', 'GPU', 'CPU']
    assert by['Neural Engine']['ops'] == 1
    assert by['CPU']['ops'] == 3
    assert sum(d['op_share'] for d in by.values()) == pytest.approx(1)
    assert sum(d['cost_share'] for d in by.values()) == pytest.approx(1)
    cpu = summary['cpu_ops']
    assert set(cpu) == {'reshape', 'transpose', 'split'}
    assert cpu['reshape']['ne_supported'] == 1
    assert cpu['transpose']['ne_supported'] == 0


def test_placement_summary_counts_unplaced_ops_and_unknown_costs():
    records = [macos.OpPlacement('conv', 'Neural Engine',
                                 ('Neural Engine', ), None),
               macos.OpPlacement('relu', None, (), None)]
    summary = macos.placement_summary(records)
    assert (summary['placed'], summary['unplaced']) == (1, 1)
    assert summary['by_device']['Neural Engine']['cost_share'] is None
    assert summary['cpu_ops'] == {}
    assert len(macos.placement_lines(summary)) == 2


def test_placement_lines_report():
    summary = macos.placement_summary(macos.placements_from_execution_infos(
        execution_infos(recorded_ops())))
    lines = macos.placement_lines(summary)
    assert lines[0].startswith('Op placement (5 of 5 ops')
    assert 'Neural Engine 20% of ops' in lines[0]
    assert lines[1].startswith('On the CPU: ')
    assert 'could run on the Neural Engine' in lines[1]
    short = macos.placement_lines(summary, top=1)[1]
    assert short.endswith('and 2 more op types.')


# --------------------------------------------------------------------------
# The timing protocol: per-prediction statistics, as MLModelBenchmarker.
# --------------------------------------------------------------------------
def test_statistics_are_per_prediction_with_the_samples_kept():
    protocol = TimingProtocol(warmup=2, rounds=2, per_round=5, trim=0.1)
    samples = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 100.0]
    s = macos.summarize_samples(samples, protocol)
    assert s['samples_ms'] == samples and s['predictions'] == 10
    assert (s['min_ms'], s['max_ms']) == (1.0, 100.0)
    assert s['median_ms'] == 5.5
    assert s['mean_ms'] == pytest.approx(14.5)
    assert s['std_ms'] == pytest.approx(float(np.std(samples)))
    assert s['trimmed_mean_ms'] == pytest.approx(5.5)   # drops 1 and 100
    with pytest.raises(ValueError):
        macos.summarize_samples(samples[:-1], protocol)


def test_protocol_arithmetic_and_checks():
    assert TimingProtocol(rounds=7, per_round=1, trim=0.2
                          ).trimmed_each_side == 1
    assert TimingProtocol(rounds=9, per_round=1, trim=0.1
                          ).trimmed_each_side == 0
    assert macos.trimmed_mean([5, 1, 3], 0) == 3
    assert macos.trimmed_mean([5, 1, 3, 100], 1) == 4
    with pytest.raises(ValueError):
        macos.trimmed_mean([1, 2], 1)
    for bad in (dict(rounds=0), dict(per_round=0), dict(warmup=-1),
                dict(trim=0.5), dict(trim=-0.1)):
        with pytest.raises(ValueError):
            TimingProtocol(**bad)


def test_the_device_protocol_is_minutes_not_hours():
    mac, phone = macos.default_protocol(False), macos.default_protocol(True)
    assert mac.predictions >= 500
    # Each device prediction is a devicectl round trip of a few seconds.
    assert phone.predictions + phone.warmup <= 50
    text = phone.describe()
    assert str(phone.predictions) in text and 'median' in text
    assert 'not a cold load' in text
    assert phone.as_dict()['predictions'] == phone.predictions


# --------------------------------------------------------------------------
# Devices.
# --------------------------------------------------------------------------
def devices():
    from coremltools.models.ml_program.experimental.remote_device import (
        Device, DeviceState, DeviceType)

    def device(name, kind, ident, state):
        return Device(name=name, type=kind, identifier=ident,
                      udid=ident.lower(), os_version='18.1',
                      os_build_number='22B83', developer_mode_state='enabled',
                      state=state, session=None)
    return [device("Ana's iPhone", DeviceType.IPHONE, 'ID-1',
                   DeviceState.CONNECTED),
            device('iPad', DeviceType.IPAD, 'ID-2', DeviceState.DISCONNECTED)]


def test_find_device_takes_connected_devices_only():
    phones = devices()
    assert macos.find_device("ana's iphone", phones) is phones[0]
    assert macos.find_device('id-1', phones) is phones[0]
    with pytest.raises(macos.DeviceSetupError) as err:
        macos.find_device('iPad', phones)
    assert 'disconnected' in str(err.value)
    with pytest.raises(macos.DeviceSetupError) as err:
        macos.find_device('Pixel', phones)
    assert 'Pixel' in str(err.value) and 'iPad' in str(err.value)
    with pytest.raises(ValueError):
        macos.find_device('x', [])


# --------------------------------------------------------------------------
# The command line and Linux.
# --------------------------------------------------------------------------
def _args(*extra):
    from iformer_mm.deploy.benchmark import build_parser, config_from_args
    return config_from_args(build_parser().parse_args(
        ['iformer-t', '--size', '64', *extra]))


def test_macos_arguments_reach_the_config():
    cfg = _args('--input-type', 'image', '--compute-units', 'CPU_AND_NE',
                '--precision', 'fp32', '--rounds', '8', '--per-round', '5',
                '--warmup-predictions', '3', '--trim', '0.25', '--device',
                'My iPhone', '--device-team', 'ABCDE12345',
                '--device-bundle-id', 'org.example.runner', '--no-placement')
    assert (cfg.input_type, cfg.compute_unit, cfg.precision) == \
        ('image', 'CPU_AND_NE', 'fp32')
    assert cfg.protocol == TimingProtocol(warmup=3, rounds=8, per_round=5,
                                          trim=0.25)
    assert (cfg.device, cfg.device_team, cfg.device_bundle_id,
            cfg.placement) == ('My iPhone', 'ABCDE12345',
                               'org.example.runner', False)
    # The old spelling still works.
    assert _args('--compute-unit', 'CPU_ONLY').compute_unit == 'CPU_ONLY'
    defaults = _args()
    assert defaults.protocol == macos.MAC_PROTOCOL
    assert (defaults.input_type, defaults.compute_unit, defaults.device) == \
        ('tensor', 'ALL', None)
    # A device gets its own short protocol unless told otherwise.
    phone = _args('--device', 'x', '--device-team', 'ABCDE12345')
    assert phone.protocol == macos.DEVICE_PROTOCOL
    assert _args('--device', 'x', '--per-round', '4').protocol.per_round == 4


@pytest.mark.parametrize('args, message', [
    (['--compute-units', 'NE'], 'invalid choice'),
    (['--input-type', 'video'], 'invalid choice'),
    (['--precision', 'int8'], 'invalid choice'),
])
def test_bad_macos_choices_exit_2(args, message, capsys, tmp_path):
    from iformer_mm.deploy.benchmark import main
    with pytest.raises(SystemExit) as exc:
        main(['iformer-t', *args, '--out', str(tmp_path)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize('args, message', [
    (['--rounds', '0'], 'rounds >= 1'),
    (['--trim', '0.6'], '0 <= trim < 0.5'),
    (['--device', ' '], '--device needs a device name'),
    # Unsigned, the runner app is ad-hoc signed and iOS refuses it.
    (['--device', 'My iPhone'], '--device-team'),
    (['--device', 'My iPhone', '--device-team', 'abc'], '--device-team'),
    (['--device', 'My iPhone', '--device-team', 'ABCDE12345',
      '--device-bundle-id', 'no spaces'], '--device-bundle-id'),
    # coremltools 9.0 sends an image to a device as uint8 and fails.
    (['--device', 'My iPhone', '--device-team', 'ABCDE12345',
      '--input-type', 'image'], '--input-type'),
])
def test_bad_protocol_and_device_values_are_one_line(args, message, capsys,
                                                     tmp_path):
    from iformer_mm.deploy.benchmark import main
    out = tmp_path / 'out'
    rc = main(['iformer-t', '--size', '64', *args, '--out', str(out),
               '--quiet', '--no-coreml', '--no-onnx', '--no-timing',
               '--no-chart'])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_help_states_both_default_protocols(capsys):
    from iformer_mm.deploy.benchmark import build_parser
    text = ' '.join(build_parser().format_help().split())
    phone = macos.DEVICE_PROTOCOL
    assert f'{phone.per_round} with --device' in text
    assert '--device-bundle-id' in text


@pytest.mark.skipif(platform.system() == 'Darwin',
                    reason='platform: Linux behaviour')
def test_each_macos_feature_says_what_it_needs_here():
    from iformer_mm.deploy.benchmark import BenchmarkConfig, macos_notes
    cfg = BenchmarkConfig(compute_unit='CPU_AND_NE', device='My iPhone')
    notes = macos_notes(cfg)
    assert len(notes) == 4
    for note in notes:
        assert 'needs macOS' in note and 'here' in note
        assert '\n' not in note
    assert any(n.startswith('--device needs macOS') for n in notes)
    assert any(n.startswith('--compute-units') for n in notes)
    # Only what the run would use: no device, default units, no timing.
    assert len(macos_notes(BenchmarkConfig())) == 2
    assert macos_notes(BenchmarkConfig(timing=False)) == []
    assert macos_notes(BenchmarkConfig(coreml=False, device='x')) == []
    with pytest.raises(RuntimeError, match='needs macOS'):
        macos.benchmark_package('x.mlpackage', {}, 'ALL', TimingProtocol())
