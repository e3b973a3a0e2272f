"""The macOS path of the latency tool, tested on any OS:
argument handling, the timing protocol's arithmetic, the op-placement
summary and the report, against recorded result objects shaped like
coremltools 9's (``MLModelBenchmarker.Measurement``, ``MLComputePlan``,
``remote_device.Device``). Nothing here runs Core ML."""
import asyncio
import platform
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import pytest

from iformer_mm.deploy import macos
from iformer_mm.deploy.macos import (OpPlacement, TimingProtocol,
                                     placement_lines, placement_summary,
                                     placements_from_execution_infos,
                                     placements_from_plan, run_protocol,
                                     summarize_rounds, trimmed_mean)


# --------------------------------------------------------------------------
# Fakes with the attribute names of coremltools 9's classes.
# --------------------------------------------------------------------------
class MLNeuralEngineComputeDevice:
    pass


class MLGPUComputeDevice:
    pass


class MLCPUComputeDevice:
    pass


NE, GPU, CPU = (MLNeuralEngineComputeDevice(), MLGPUComputeDevice(),
                MLCPUComputeDevice())


@dataclass(frozen=True)
class MLComputePlanDeviceUsage:
    preferred_compute_device: object
    supported_compute_devices: list


@dataclass(frozen=True)
class MLComputePlanCost:
    weight: float


@dataclass
class Operation:          # MLModelStructureProgramOperation
    operator_name: str
    blocks: list = field(default_factory=list)


@dataclass
class Block:              # MLModelStructureProgramBlock
    operations: list


@dataclass
class Function:
    block: Block


@dataclass
class Program:
    functions: dict


@dataclass
class Structure:          # MLModelStructure
    program: Optional[Program]


class FakePlan:
    """MLComputePlan over a recorded placement: op -> (usage, cost)."""

    def __init__(self, ops_and_plans):
        self.table = {id(op): (usage, cost) for op, usage, cost in
                      ops_and_plans}
        top = [op for op, _, _ in ops_and_plans if not getattr(
            op, '_nested', False)]
        self.model_structure = Structure(Program(
            {'main': Function(Block(top))}))

    def get_compute_device_usage_for_mlprogram_operation(self, op):
        return self.table[id(op)][0]

    def get_estimated_cost_for_mlprogram_operation(self, op):
        return self.table[id(op)][1]


def usage(preferred, *supported):
    return MLComputePlanDeviceUsage(preferred, list(supported or
                                                    [preferred]))


def recorded_plan():
    """A small program: conv on the NE, a reshape/transpose pair on the CPU
    (the NE could run the reshape), softmax on the GPU, a const (no
    placement) and an op nested in a block."""
    conv, reshape, transpose, softmax, const = (
        Operation('conv'), Operation('reshape'), Operation('transpose'),
        Operation('softmax'), Operation('const'))
    inner = Operation('add')
    inner._nested = True
    cond = Operation('cond', blocks=[Block([inner])])
    rows = [
        (conv, usage(NE, NE, GPU, CPU), MLComputePlanCost(0.6)),
        (reshape, usage(CPU, CPU, NE), MLComputePlanCost(0.1)),
        (transpose, usage(CPU, CPU), MLComputePlanCost(0.1)),
        (softmax, usage(GPU, GPU, CPU), MLComputePlanCost(0.15)),
        (const, None, None),
        (cond, usage(CPU), MLComputePlanCost(0.0)),
        (inner, usage(NE, NE), MLComputePlanCost(0.05)),
    ]
    return FakePlan(rows)


# --------------------------------------------------------------------------
# Placement.
# --------------------------------------------------------------------------
def test_placements_from_a_compute_plan():
    records = placements_from_plan(recorded_plan())
    assert [r.op_type for r in records] == [
        'conv', 'reshape', 'transpose', 'softmax', 'cond', 'add']
    assert records[0] == OpPlacement('conv', 'Neural Engine',
                                     ('Neural Engine', 'GPU', 'CPU'), 0.6)
    assert records[1].supported == ('CPU', 'Neural Engine')
    with pytest.raises(ValueError, match='No function'):
        placements_from_plan(recorded_plan(), function='other')
    plan = recorded_plan()
    plan.model_structure = Structure(None)
    with pytest.raises(ValueError, match='not an ML program'):
        placements_from_plan(plan)


def test_placement_summary_shares_and_cpu_fallback():
    summary = placement_summary(placements_from_plan(recorded_plan()))
    assert (summary['ops'], summary['placed'], summary['unplaced']) == \
        (6, 6, 0)
    by = summary['by_device']
    assert list(by) == ['Neural Engine', 'GPU', 'CPU']
    assert by['Neural Engine']['ops'] == 2
    assert by['Neural Engine']['op_share'] == pytest.approx(2 / 6)
    assert by['Neural Engine']['cost_share'] == pytest.approx(0.65)
    assert by['GPU']['cost_share'] == pytest.approx(0.15)
    assert by['CPU']['ops'] == 3
    assert by['CPU']['cost_share'] == pytest.approx(0.2)
    assert sum(d['op_share'] for d in by.values()) == pytest.approx(1)
    cpu = summary['cpu_ops']
    assert set(cpu) == {'reshape', 'transpose', 'cond'}
    assert cpu['reshape'] == dict(count=1, cost_share=pytest.approx(0.1),
                                  ne_supported=1)
    assert cpu['transpose']['ne_supported'] == 0


def test_placement_summary_counts_unplaced_ops_and_unknown_costs():
    records = [OpPlacement('conv', 'Neural Engine', ('Neural Engine', ), None),
               OpPlacement('relu', None, (), None)]
    summary = placement_summary(records)
    assert (summary['placed'], summary['unplaced']) == (1, 1)
    assert summary['by_device']['Neural Engine']['cost_share'] is None
    assert summary['cpu_ops'] == {}
    assert placement_lines(summary)[-1] == 'No op falls back to the CPU.'


def test_placement_lines_report():
    lines = placement_lines(placement_summary(
        placements_from_plan(recorded_plan())))
    assert lines[0] == (
        'Op placement (6 of 6 ops placed by MLComputePlan): Neural Engine '
        '33% of ops, 65% of cost; GPU 17% of ops, 15% of cost; CPU 50% of '
        'ops, 20% of cost.')
    assert lines[1].startswith('On the CPU: ')
    assert 'reshape x1 (10.0% of cost), 1 could run on the Neural Engine' \
        in lines[1]
    short = placement_lines(placement_summary(
        placements_from_plan(recorded_plan())), top=1)[1]
    assert short.endswith('and 2 more op types.')


@dataclass
class Statistics:
    median: float


@dataclass
class Measurement:
    statistics: Optional[Statistics]
    samples: List[float]


@dataclass
class OpSpec:
    type: str


@dataclass
class OperationExecutionInfo:
    spec: OpSpec
    path: str
    compute_device_usage: Optional[MLComputePlanDeviceUsage]
    measurement: Measurement


def test_placements_from_remote_execution_infos():
    infos = [
        OperationExecutionInfo(OpSpec('conv'), 'p0', usage(NE, NE, CPU),
                               Measurement(Statistics(3.0), [3.0])),
        OperationExecutionInfo(OpSpec('gather'), 'p1', usage(CPU),
                               Measurement(Statistics(1.0), [1.0])),
        OperationExecutionInfo(OpSpec('const'), 'p2', None,
                               Measurement(None, [])),
    ]
    records = placements_from_execution_infos(infos)
    assert [r.op_type for r in records] == ['conv', 'gather']
    summary = placement_summary(records)
    assert summary['by_device']['Neural Engine']['cost_share'] == \
        pytest.approx(0.75)
    assert summary['cpu_ops']['gather']['count'] == 1


# --------------------------------------------------------------------------
# The timing protocol.
# --------------------------------------------------------------------------
def test_protocol_arithmetic():
    protocol = TimingProtocol(warmup=2, rounds=10, per_round=3, trim=0.2)
    assert protocol.trimmed_each_side == 2
    # Round r has predictions r+1, r+1, r+1 ms except a slow outlier round.
    rounds = [[r + 1.0] * 3 for r in range(9)] + [[100.0, 100.0, 100.0]]
    s = summarize_rounds(rounds, protocol)
    assert s['round_means_ms'][:3] == [1.0, 2.0, 3.0]
    assert s['median_ms'] == 5.5
    # Dropped: 1, 2 (fastest) and 9, 100 (slowest): mean of 3..8.
    assert s['trimmed_mean_ms'] == pytest.approx(5.5)
    assert (s['min_round_ms'], s['max_round_ms']) == (1.0, 100.0)
    assert s['predictions'] == 30 and s['trimmed_each_side'] == 2
    # The trimmed count rounds down: 7 x 0.2 = 1.4 rounds drop 1 each side.
    assert TimingProtocol(rounds=7, trim=0.2).trimmed_each_side == 1
    assert TimingProtocol(rounds=9, trim=0.1).trimmed_each_side == 0
    assert trimmed_mean([5, 1, 3], 0) == 3
    assert trimmed_mean([5, 1, 3, 100], 1) == 4
    with pytest.raises(ValueError, match='Cannot drop'):
        trimmed_mean([1, 2], 1)


def test_protocol_checks_its_input():
    protocol = TimingProtocol(rounds=2, per_round=2)
    with pytest.raises(ValueError, match='Expected 2 rounds'):
        summarize_rounds([[1, 1]], protocol)
    with pytest.raises(ValueError, match='Round 1 has 3'):
        summarize_rounds([[1, 1], [1, 1, 1]], protocol)
    for bad in (dict(rounds=0), dict(per_round=0), dict(warmup=-1),
                dict(trim=0.5), dict(trim=-0.1)):
        with pytest.raises(ValueError):
            TimingProtocol(**bad)


def test_protocol_is_described():
    text = TimingProtocol().describe()
    assert text.startswith('10 warm-up predictions, then 20 rounds x 50 '
                           'predictions')
    assert 'median of the 20 round means' in text
    assert '2 fastest and 2 slowest rounds dropped' in text


class RecordedBenchmarker:
    """MLModelBenchmarker's coroutines replaying recorded samples."""

    def __init__(self, rounds):
        self.rounds = list(rounds)
        self.calls = []

    async def benchmark_load(self, iterations=1):
        self.calls.append(('load', iterations))
        return Measurement(Statistics(250.0), [250.0])

    async def benchmark_predict(self, inputs=None, iterations=1,
                                warmup=False):
        self.calls.append(('predict', iterations))
        if len(self.calls) == 2:          # the warm-up call
            return Measurement(None, [99.0] * iterations)
        samples = self.rounds.pop(0)
        assert len(samples) == iterations
        return Measurement(Statistics(float(np.median(samples))), samples)


def test_run_protocol_drives_the_benchmarker():
    protocol = TimingProtocol(warmup=5, rounds=4, per_round=2, trim=0.25)
    recorded = [[4.0, 4.0], [2.0, 2.0], [3.0, 5.0], [10.0, 10.0]]
    bench = RecordedBenchmarker(recorded)
    result = asyncio.run(run_protocol(bench, {'image': None}, protocol))
    assert bench.calls == [('load', 1), ('predict', 5)] + \
        [('predict', 2)] * 4
    assert result['load_ms'] == 250.0
    assert result['round_means_ms'] == [4.0, 2.0, 4.0, 10.0]
    assert result['median_ms'] == 4.0
    assert result['trimmed_mean_ms'] == 4.0       # drops 2 and 10
    assert result['protocol']['rounds'] == 4
    assert 'warm-up' in result['protocol']['description']


# --------------------------------------------------------------------------
# Devices.
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    value: str


@dataclass(frozen=True)
class Device:
    name: str
    type: Kind
    identifier: str
    udid: str
    state: Kind


def test_find_device_by_name_identifier_or_udid():
    phones = [Device("Ana's iPhone", Kind('iphone'), 'ID-1', '0001',
                     Kind('connected')),
              Device('iPad', Kind('ipad'), 'ID-2', '0002',
                     Kind('disconnected'))]
    assert macos.find_device("ana's iphone", phones) is phones[0]
    assert macos.find_device('id-2', phones) is phones[1]
    assert macos.find_device('0001', phones) is phones[0]
    with pytest.raises(ValueError) as err:
        macos.find_device('Pixel', phones)
    assert "No device named 'Pixel'" in str(err.value)
    assert 'iPad (ipad, disconnected)' in str(err.value)
    with pytest.raises(ValueError, match='lists: none'):
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
                'My iPhone', '--device-team', 'ABCDE12345', '--no-placement')
    assert (cfg.input_type, cfg.compute_unit, cfg.precision) == \
        ('image', 'CPU_AND_NE', 'fp32')
    assert cfg.protocol == TimingProtocol(warmup=3, rounds=8, per_round=5,
                                          trim=0.25)
    assert (cfg.device, cfg.device_team, cfg.placement) == \
        ('My iPhone', 'ABCDE12345', False)
    # The old spelling still works.
    assert _args('--compute-unit', 'CPU_ONLY').compute_unit == 'CPU_ONLY'
    defaults = _args()
    assert defaults.protocol == TimingProtocol(10, 20, 50, 0.1)
    assert (defaults.input_type, defaults.compute_unit, defaults.device) == \
        ('tensor', 'ALL', None)


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
])
def test_bad_protocol_values_are_one_line(args, message, capsys, tmp_path):
    from iformer_mm.deploy.benchmark import main
    rc = main(['iformer-t', '--size', '64', *args, '--out', str(tmp_path),
               '--quiet'])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(platform.system() == 'Darwin', reason='Linux behaviour')
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


def test_report_of_a_recorded_mac_run():
    from iformer_mm.deploy import report
    placement = placement_summary(placements_from_plan(recorded_plan()))
    protocol = TimingProtocol(rounds=4, per_round=2, trim=0.25)
    timing = summarize_rounds([[4.0, 4.0], [2.0, 2.0], [3.0, 5.0],
                               [10.0, 10.0]], protocol)
    timing.update(load_ms=250.0, device="Ana's iPhone",
                  compute_unit='CPU_AND_NE')
    result = dict(key='iformer-m:cc-hybrid', label='iFormer-M', status='ok',
                  coreml=dict(status='timed', timing=timing,
                              placement=placement))
    assert report.coreml_cell(result) == '4.00 median / 4.00 trimmed mean'
    lines = report.coreml_timing_lines([result])
    assert lines[0] == ("- iFormer-M on Ana's iPhone (CPU_AND_NE): median "
                        '4.00 ms, trimmed mean 4.00 ms (rounds 2.00-10.00 '
                        'ms), load 250 ms.')
    assert lines[1].startswith('  Op placement (6 of 6 ops')
    failed = dict(result, coreml=dict(status='validated',
                                      timing_error='RuntimeError: boom'))
    assert report.coreml_timing_lines([failed]) == [
        '- iFormer-M: Core ML timing failed: RuntimeError: boom']
