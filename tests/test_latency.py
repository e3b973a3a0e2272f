"""Tests of the latency tool: census, conversion, the tool end to end at a
tiny size, and its error messages.

Conversions here are small (iFormer-T at 128x128); the full 512x512 sweep of
every variant is a benchmark run (benchmarks/coreml_vs_authors.py --sweep).
"""
import importlib.util
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

HAS_COREMLTOOLS = importlib.util.find_spec('coremltools') is not None
HAS_ORT = importlib.util.find_spec('onnxruntime') is not None
needs_ct = pytest.mark.skipif(not HAS_COREMLTOOLS,
                              reason='coremltools not installed')
needs_ort = pytest.mark.skipif(not HAS_ORT, reason='onnxruntime missing')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mmdet_ready():
    try:
        import mmcv  # noqa: F401
        import mmdet.models  # noqa: F401
    except Exception:  # noqa: BLE001  (missing or broken install)
        return False
    return True


# --------------------------------------------------------------------------
# Op census on a toy ML program.
# --------------------------------------------------------------------------
@needs_ct
def test_census_counts_a_toy_program():
    from iformer_mm.deploy.coreml import import_coremltools
    from iformer_mm.deploy.census import census_from_spec
    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb

    weight = np.random.rand(8, 4, 3, 3).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 8, 8))],
                opset_version=ct.target.iOS16)
    def prog(x):
        y = mb.conv(x=x, weight=weight, pad_type='same')   # 8 channels
        a = mb.reshape(x=y, shape=[1, 8, 64])
        b = mb.transpose(x=a, perm=[0, 2, 1])
        c = mb.concat(values=[b, b], axis=2)
        s1, s2 = mb.split(x=c, num_splits=2, axis=2)
        r = mb.reshape(x=s1, shape=[1, 64, 8])
        return mb.add(x=r, y=s2)

    mlmodel = ct.convert(prog, convert_to='mlprogram',
                         compute_precision=ct.precision.FLOAT16,
                         minimum_deployment_target=ct.target.iOS16,
                         pass_pipeline=ct.PassPipeline.EMPTY,
                         skip_model_load=True)
    census = census_from_spec(mlmodel.get_spec())
    assert census['reshape'] == 2
    assert census['transpose'] == 1
    assert census['concat'] == 1
    assert census['split'] == 1
    assert census['rearrange_ops'] == 5
    # Output bytes (FP32 here): reshape 2 x 512, transpose 512, concat 1024,
    # split 2 x 512 elements.
    assert census['rearrange_bytes_by_op'] == dict(
        reshape=4096, transpose=2048, concat=4096, split=4096)
    assert census['largest_rearrange_bytes'] == 4096
    assert census['largest_bytes_by_op']['transpose'] == 2048
    assert census['op_counts']['conv'] == 1
    assert census['op_counts']['add'] == 1
    # Every non-const op is counted, consts are not.
    nonconst = sum(v for k, v in census['op_counts'].items() if k != 'const')
    assert census['total_ops'] == nonconst >= 7
    assert census['const_ops'] == census['op_counts']['const'] > 0
    # The only blob-file weight is the conv kernel; the empty pass pipeline
    # leaves it in FP32 (the FP16 cast is itself a pass).
    assert census['weight_bytes'] == weight.size * 4
    assert census['weight_bytes_by_dtype'] == {'fp32': weight.size * 4}
    # 288 fp32 values = 1152 bytes = 0.0011 MiB (rounded to 3 places)
    assert census['weight_mib'] == 0.001


def test_census_rejects_a_neural_network():
    pytest.importorskip('coremltools')
    from coremltools.proto import Model_pb2
    from iformer_mm.deploy.census import census_from_spec
    spec = Model_pb2.Model()
    spec.neuralNetwork.SetInParent()
    with pytest.raises(ValueError, match='ML program'):
        census_from_spec(spec)


# --------------------------------------------------------------------------
# Conversion of one small variant in Table 17's three layouts.
# --------------------------------------------------------------------------
@needs_ct
@pytest.mark.slow
def test_iformer_t_converts_in_three_layouts(tmp_path):
    from iformer_mm.deploy.backbones import table17_specs
    from iformer_mm.deploy.census import validate_package
    from iformer_mm.deploy.coreml import convert_exported_program, save_package
    from iformer_mm.deploy.export import (TupleOutputs, export_program,
                                          prepare_for_deploy)
    # Stage 3 is 8x20 tokens: padded to 16x32, two 16x16 windows (a single
    # window is not partitioned at all).
    shape = (1, 3, 128, 320)
    x = torch.randn(shape)
    census = {}
    for spec in table17_specs('t'):
        model, fold = prepare_for_deploy(spec.build())
        assert 'folded' in fold
        model = TupleOutputs(model).eval()
        with torch.no_grad():
            outs = model(x)
        ml = convert_exported_program(export_program(model, x), shape,
                                      len(outs), 'iOS17')
        path = save_package(ml, str(tmp_path / f'{spec.key[-9:]}.mlpackage'))
        check = validate_package(path, shape, [o.shape for o in outs])
        assert check['ok'] and check['opset'] == 'CoreML7'
        assert list(check['outputs']) == ['out0', 'out1', 'out2', 'out3']
        assert set(check['weight_bytes_by_dtype']) == {'fp16'}
        census[spec.key.split(':')[1]] = check['census']
    # Channel chunking multiplies the rearrangements, windows add some.
    assert census['global']['reshape'] < census['hybrid']['reshape'] < \
        census['cc-hybrid']['reshape']
    assert census['cc-hybrid']['concat'] > census['hybrid']['concat']
    # ... and shrinks the largest single copy (Appendix F).
    assert census['cc-hybrid']['largest_bytes_by_op']['transpose'] < \
        census['hybrid']['largest_bytes_by_op']['transpose']
    # Same network, about the same weights whatever the layout (a few
    # shape constants differ).
    sizes = [c['weight_bytes'] for c in census.values()]
    assert max(sizes) - min(sizes) < 0.001 * max(sizes)


@needs_ct
def test_validation_catches_wrong_shapes(tmp_path):
    from iformer_mm.deploy.census import validate_package
    from iformer_mm.deploy.coreml import convert_exported_program, save_package
    from iformer_mm.deploy.export import TupleOutputs, export_program
    model = TupleOutputs(torch.nn.Conv2d(3, 4, 3, padding=1)).eval()
    x = torch.randn(1, 3, 32, 32)
    ml = convert_exported_program(export_program(model, x), x.shape, 1)
    path = save_package(ml, str(tmp_path / 'conv.mlpackage'))
    validate_package(path, x.shape, [(1, 4, 32, 32)])
    with pytest.raises(ValueError, match='outputs are'):
        validate_package(path, x.shape, [(1, 4, 16, 16)])


@needs_ct
def test_validation_checks_the_weight_precision(tmp_path):
    """An FP16 package may keep a little FP32 weight (here 0.3% of it, a
    small conv left in FP32); one whose FP32 weights are a real share (5%)
    is not FP16, and is fine when FP32 weights were asked for."""
    from iformer_mm.deploy.census import validate_package
    from iformer_mm.deploy.coreml import import_coremltools, save_package
    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb

    def package(fp32_channels):
        big = np.random.rand(64, 64, 3, 3).astype(np.float16)
        small = np.random.rand(fp32_channels, 64, 1, 1).astype(np.float32)

        @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64, 8, 8))],
                    opset_version=ct.target.iOS16)
        def prog(image):
            y = mb.conv(x=mb.cast(x=image, dtype='fp16'), weight=big,
                        pad_type='same')
            z = mb.conv(x=mb.cast(x=y, dtype='fp32'), weight=small)
            return mb.identity(x=z, name='out0')
        ml = ct.convert(prog, convert_to='mlprogram',
                        pass_pipeline=ct.PassPipeline.EMPTY,
                        minimum_deployment_target=ct.target.iOS16,
                        skip_model_load=True)
        return save_package(ml, str(tmp_path / f'p{fp32_channels}.mlpackage'))

    shape = (1, 64, 8, 8)
    mostly = validate_package(package(1), shape, [(1, 1, 8, 8)])
    assert mostly['weight_bytes_by_dtype'] == {'fp16': 64 * 64 * 9 * 2,
                                               'fp32': 64 * 4}
    mixed = package(16)
    with pytest.raises(ValueError, match='FP16'):
        validate_package(mixed, shape, [(1, 16, 8, 8)])
    assert validate_package(mixed, shape, [(1, 16, 8, 8)], fp16=False)['ok']


# --------------------------------------------------------------------------
# The tool end to end.
# --------------------------------------------------------------------------
@needs_ct
@needs_ort
@pytest.mark.slow
def test_tool_end_to_end(tmp_path, capsys):
    from iformer_mm.deploy.benchmark import main
    out = tmp_path / 'lat'
    rc = main(['iformer-t', 'iformer-t:global', '--size', '64',
               '--program', 'dense', '--warmup', '1', '--runs', '2',
               '--out', str(out), '--quiet'])
    printed = capsys.readouterr().out
    assert rc == 0
    for name in ('latency.md', 'latency.json', 'latency.png'):
        assert (out / name).is_file()
    run = json.loads((out / 'latency.json').read_text())
    assert run['config']['resolution'] == [64, 64]
    assert run['environment']['threads'] >= 1
    assert run['environment']['versions']['coremltools']
    keys = [r['key'] for r in run['results']]
    assert keys == ['iformer-t:cc-hybrid', 'iformer-t:global']
    for r in run['results']:
        assert r['status'] == 'ok', r.get('error')
        assert os.path.isdir(r['coreml']['package'])
        assert r['coreml']['census']['total_ops'] > 0
        assert r['onnx']['max_abs_diff'] <= 1e-3
        assert r['fold_max_abs_diff'] <= 1e-3
        for t in (r['torch']['timing'], r['torch']['channels_last'],
                  r['onnx']['timing']):
            assert t['runs'] == 2 and t['min_ms'] <= t['median_ms'] <= \
                t['p90_ms']
        assert r['torch']['timing']['memory_format'] == 'NCHW'
        assert r['torch']['channels_last']['memory_format'] == \
            'channels_last'
        assert r['torch']['backend'] == 'PyTorch eager CPU (fused), proxy'
        assert r['torch']['fold_info']['left'] == 0
        assert 'proxy' in r['onnx']['backend']
        # The share of the measured GEMM rate is flops / time / rate.
        share = r['gemm_fraction']['torch_nchw']
        assert share == pytest.approx(
            r['flops'] / (r['torch']['timing']['median_ms'] * 1e-3) /
            run['gemm']['flops_per_s'])
        assert r['paper'] is None  # no published figure at 64x64
    if platform.system() != 'Darwin':
        assert run['coreml_runtime'] is False
        assert 'Core ML cannot run on' in printed
        assert 'not timed (no Core ML runtime)' in printed
        assert all(r['coreml']['status'] == 'validated'
                   for r in run['results'])
        assert 'MLComputePlan) needs macOS' in printed
    assert 'PyTorch eager CPU NCHW' in printed
    assert 'channels_last' in printed
    assert 'ONNX Runtime CPU' in printed
    assert 'GEMM rate measured in this run' in printed


@needs_ct
@needs_ort
def test_a_failing_model_is_reported_and_the_run_goes_on(tmp_path):
    from iformer_mm.deploy.backbones import spec_from_module
    from iformer_mm.deploy.benchmark import BenchmarkConfig, run_benchmark

    class DataDependent(torch.nn.Module):
        """Eager works, torch.export cannot trace the branch."""

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=32)

        def forward(self, x):
            y = self.conv(x)
            if y.sum() > 0:
                return (y, )
            return (-y, )

    def broken():
        raise RuntimeError('cannot build this one')

    cfg = BenchmarkConfig(
        backbones=[], resolution=(64, 64), warmup=0, runs=1,
        out_dir=str(tmp_path), chart=False,
        specs=[spec_from_module(broken, 'broken'),
               spec_from_module(DataDependent(), 'data-dependent')])
    run = run_benchmark(cfg, show_progress=False)
    first, second = run['results']
    assert first['status'] == 'failed' and first['failed_stage'] == 'build'
    assert 'cannot build this one' in first['error']
    assert second['status'] == 'ok'
    assert second['coreml']['status'] == 'failed'
    assert 'torch.export failed' in second['coreml']['error']
    assert second['torch']['timing']['runs'] == 1
    assert 'failed at build' in run['markdown']


@pytest.mark.slow
@pytest.mark.skipif(not (HAS_COREMLTOOLS and _mmdet_ready()),
                    reason='needs coremltools and a working mmdet')
def test_peer_from_the_mmdet_registry(tmp_path):
    from iformer_mm.deploy.backbones import resolve_backbone
    from iformer_mm.deploy.benchmark import BenchmarkConfig, run_benchmark
    spec = resolve_backbone('resnet18')
    assert spec.source == 'mmdet.ResNet'
    assert [f['iphone13_ms'] for f in spec.paper] == [2.85]
    cfg = BenchmarkConfig(backbones=['resnet18'], resolution=(64, 64),
                          warmup=0, runs=1, out_dir=str(tmp_path),
                          chart=False, onnx=False, channels_last=False,
                          program='dense')
    (r, ) = run_benchmark(cfg, show_progress=False)['results']
    assert r['status'] == 'ok', r.get('error')
    assert r['deploy'].startswith('eval mode')
    # The generic torch.fx pass folds all 20 BN of ResNet-18 (stem 1,
    # 8 blocks x 2, 3 downsamples), so the peer is labelled fused too.
    info = r['torch']['fold_info']
    assert (info['batchnorms'], info['folded'], info['left']) == (20, 20, 0)
    assert r['torch']['fold'] == 'fused' and info['max_abs_diff'] < 1e-3
    assert r['coreml']['status'] == 'validated'
    assert len(r['output_shapes']) == 4


# --------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------
@pytest.mark.parametrize('args, message', [
    (['not-a-backbone'], 'Unknown backbone'),
    (['iformer-m:spiral'], 'Unknown iFormer attention layout'),
    (['configs/does_not_exist.py'], 'config file not found'),
    (['iformer-t', '--size', '16'], 'too small'),
    (['iformer-t', '--size', '500'], 'multiple of 32'),
    (['iformer-t', '--size', '64', '96', '70'], 'takes H or H W'),
    (['iformer-t', '--runs', '0'], 'runs >= 1'),
])
def test_clear_errors(args, message, capsys, tmp_path):
    from iformer_mm.deploy.benchmark import main
    rc = main(args + ['--out', str(tmp_path), '--quiet'])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert 'Traceback' not in err
    assert not os.listdir(tmp_path)  # nothing was run


def test_missing_coremltools_is_a_clear_error(monkeypatch, capsys, tmp_path):
    from iformer_mm.deploy.benchmark import main
    monkeypatch.setitem(sys.modules, 'coremltools', None)
    rc = main(['iformer-t', '--size', '64', '--out', str(tmp_path),
               '--quiet'])
    err = capsys.readouterr().err
    assert rc == 2
    assert 'coremltools is not installed' in err
    assert 'pip install coremltools' in err


def test_resolution_rules():
    from iformer_mm.deploy.backbones import (BackboneError,
                                             check_resolution,
                                             resolve_backbone)
    check_resolution(32, 64, 32)
    check_resolution(33, 47, 1)  # a model without a divisor
    with pytest.raises(BackboneError, match='multiple of 32'):
        resolve_backbone('iformer-s').check_size(512, 500)
    with pytest.raises(BackboneError, match='too small'):
        check_resolution(512, 31)


def test_backbone_names():
    from iformer_mm.deploy.backbones import resolve_backbone
    spec = resolve_backbone('iformer-m')
    assert spec.key == 'iformer-m:cc-hybrid'
    assert sorted((f['source'], f['iphone13_ms']) for f in spec.paper) == [
        ('paper, Table 17', 4.0), ('paper, Table 5', 4.0)]
    glob = {tuple(f['size']): f for f in resolve_backbone('M:global').paper}
    assert glob[(512, 512)]['failed'] is True
    assert glob[(224, 224)]['iphone13_ms'] == 1.10
    assert resolve_backbone('m:faster').key == 'iformer-m:authors-fa'
    assert [f['iphone13_ms'] for f in
            resolve_backbone('iformer-m:authors-fa').paper] == [4.0]
    assert resolve_backbone('iformer_l2:hybrid').key == 'iformer-l2:hybrid'
    model = resolve_backbone('iformer-t:hybrid').build()
    assert model.window_chunks == 1 and model.stages[2].layout.windowed


def test_timing_summary():
    from iformer_mm.deploy.latency import summarize, time_callable
    s = summarize([5., 1., 3., 2., 4.])
    assert (s['median_ms'], s['min_ms'], s['runs']) == (3., 1., 5)
    assert s['p90_ms'] == pytest.approx(4.6)
    calls = []
    times = time_callable(lambda: calls.append(1), warmup=2, runs=3)
    assert len(calls) == 5 and len(times) == 3


@pytest.mark.slow
def test_script_help_runs():
    proc = subprocess.run([sys.executable, 'tools/benchmark_latency.py',
                           '--help'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    assert '--table17' in proc.stdout and '--compute-unit' in proc.stdout


@pytest.mark.parametrize('name,chunks,figures', [
    # The default M config is the authors' released network: the figure is
    # their source's comment on iFormer_m.
    ('maskrcnn_iformer_m_coco', 16, {(4.3, 'released code')}),
    # The paper's Table 16/17 layout: Table 17 and Table 5 give 4.0 ms.
    ('mask-rcnn_iformer-m-cc-hybrid_fpn_1x_coco', 16,
     {(4.0, 'paper')}),
])
def test_config_backbone_is_taken(name, chunks, figures):
    from iformer_mm.deploy.backbones import resolve_backbone
    path = os.path.join(ROOT, 'configs', name + '.py')
    spec = resolve_backbone(path)
    assert spec.family == 'iformer'
    assert spec.key == f'config:{name}'
    model = spec.build()  # init_cfg (a download) is dropped
    assert model.arch_name == 'm' and model.init_cfg is None
    assert model.window_chunks == chunks
    assert model.stages[2].layout.windowed
    assert {(f['iphone13_ms'], f['kind']) for f in spec.paper} == figures
    assert all(tuple(f['size']) == (512, 512) for f in spec.paper)


def test_config_backbone_gets_the_figures_of_its_layout(tmp_path):
    """A config that leaves the layout arguments at IFormer's defaults
    (global attention, no channel chunks) gets that layout's published
    figures, and one that sets only attention='hybrid' the hybrid ones."""
    from iformer_mm.deploy.backbones import resolve_backbone
    cls = resolve_backbone(os.path.join(ROOT, 'configs', 'iformer_m_in1k.py'))
    assert cls.family == 'iformer'
    assert cls.paper and \
        cls.paper == resolve_backbone('iformer-m:global').paper
    hybrid = tmp_path / 'hybrid.py'
    hybrid.write_text("model = dict(backbone=dict(type='IFormer', arch='m', "
                      "attention='hybrid'))\n")
    paper = resolve_backbone(str(hybrid)).paper
    assert paper and paper == resolve_backbone('iformer-m:hybrid').paper


# --------------------------------------------------------------------------
# The fair CPU proxy: one Conv-BN fold for every row, FLOPs, GEMM share.
# --------------------------------------------------------------------------
def _randomise_bn(model):
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


class _Peer(torch.nn.Module):
    """Conv-BN pairs (with and without conv bias, 1d too), a BN after a
    non-conv op (not foldable) and a conv read twice (not foldable)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 8, 1)
        self.b2 = torch.nn.BatchNorm2d(8)
        self.c3 = torch.nn.Conv2d(8, 8, 1)
        self.b3 = torch.nn.BatchNorm2d(8)
        self.b4 = torch.nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        z = self.c3(y)
        return self.b3(z) + z, self.b4(torch.relu(y))


@torch.no_grad()
def test_fx_fold_matches_the_unfolded_network():
    from iformer_mm.deploy.export import (count_batchnorms, fold_conv_bn_fx,
                                          fold_label)
    model = _randomise_bn(_Peer())
    x = torch.randn(2, 3, 16, 16)
    reference = model(x)
    folded, info = fold_conv_bn_fx(model)
    out = folded(x)
    for a, b in zip(out, reference):
        assert torch.allclose(a, b, atol=1e-5)
    assert (info['batchnorms'], info['folded'], info['left']) == (4, 2, 2)
    assert count_batchnorms(folded) == 2
    assert fold_label(info) == 'partly fused (2/4 BN folded)'
    # The original module is left as it was.
    assert count_batchnorms(model) == 4
    assert torch.equal(model(x)[0], reference[0])


def test_fx_fold_labels():
    from iformer_mm.deploy.export import fold_conv_bn_fx, fold_label

    class Untraceable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 4, 1)
            self.b = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:        # data-dependent: fx cannot trace it
                return self.b(self.c(x))
            return x

    model, info = fold_conv_bn_fx(Untraceable().eval())
    assert fold_label(info) == 'unfused' and 'cannot trace' in info['error']
    assert isinstance(model, Untraceable)

    class UntraceableSequential(torch.nn.Module):
        """fx cannot trace it; its Conv-BN pair sits in a Sequential, which
        fixes the order, so the structural pass folds it."""

        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 4, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                torch.nn.Conv2d(4, 4, 1), torch.nn.ReLU(),
                torch.nn.BatchNorm2d(4))

        def forward(self, x):
            return self.body(x) if x.sum() > 0 else x

    net = _randomise_bn(UntraceableSequential())
    x = torch.rand(1, 3, 8, 8) + 0.1
    with torch.no_grad():
        want = net(x)
        model, info = fold_conv_bn_fx(net)
        got = model(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert info['method'].startswith('structural')
    assert (info['batchnorms'], info['folded'], info['left']) == (2, 1, 1)
    assert fold_label(info) == 'partly fused (1/2 BN folded)'
    assert model is not net and isinstance(net.body[1],
                                           torch.nn.BatchNorm2d)
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1),
                              torch.nn.BatchNorm2d(4)).eval()
    _, info = fold_conv_bn_fx(seq)
    assert fold_label(info) == 'fused' and info['folded'] == 1
    _, info = fold_conv_bn_fx(torch.nn.Conv2d(3, 4, 1))
    assert fold_label(info) == 'fused' and info['batchnorms'] == 0


def test_flops_and_gemm_share():
    from iformer_mm.deploy.latency import (count_flops, gemm_fraction,
                                           measure_gemm_rate)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    # 2 x Cin x Cout x k x k x H x W.
    assert count_flops(conv, torch.randn(1, 4, 10, 10)) == \
        2 * 4 * 8 * 9 * 100
    assert gemm_fraction(2e9, 100.0, 40e9) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        gemm_fraction(1e9, 0.0, 1e9)
    ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0, 3.0])
    rate = measure_gemm_rate(size=8, repeats=3, timer=lambda: next(ticks))
    assert rate['best_s'] == 0.25
    assert rate['flops_per_s'] == pytest.approx(2 * 8 ** 3 / 0.25)


# --------------------------------------------------------------------------
# Image input: normalisation folded into ImageType scale / bias.
# --------------------------------------------------------------------------
def test_image_normalisation_is_exact():
    from iformer_mm.deploy.coreml import (IMAGENET_MEAN, IMAGENET_STD,
                                          ImageNormalisation)
    norm = ImageNormalisation()
    pixels = np.array([0., 17., 128., 255.])
    for c in range(3):
        core_ml = pixels * norm.scale + norm.bias[c]       # ImageType
        in_net = core_ml * norm.channel_factors[c]         # first op
        want = (pixels - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert np.allclose(in_net, want, rtol=0, atol=1e-12)
    same = ImageNormalisation(mean=(0, 0, 0), std=(2, 2, 2))
    assert same.channel_factors is None and same.scale == 0.5
    with pytest.raises(ValueError):
        ImageNormalisation(std=(1, 0, 1))


@needs_ct
def test_image_input_package(tmp_path):
    from iformer_mm.deploy.benchmark import make_example
    from iformer_mm.deploy.census import validate_package
    from iformer_mm.deploy.coreml import (ImageNormalisation,
                                          convert_exported_program,
                                          load_package_spec, save_package)
    from iformer_mm.deploy.export import (ImageInput, TupleOutputs,
                                          export_program)
    norm = ImageNormalisation()
    model = TupleOutputs(torch.nn.Conv2d(3, 4, 3, padding=1)).eval()
    x = make_example((1, 3, 32, 32), 0, 'image', norm)
    # The example is 8-bit pixels, normalised.
    pixels = x * torch.tensor(norm.std).view(1, 3, 1, 1) + \
        torch.tensor(norm.mean).view(1, 3, 1, 1)
    assert torch.allclose(pixels, pixels.round(), atol=1e-4)
    factors = torch.tensor(norm.channel_factors).view(1, 3, 1, 1)
    wrapped = ImageInput(model, norm.channel_factors).eval()
    with torch.no_grad():
        assert torch.allclose(wrapped(x / factors)[0], model(x)[0],
                              atol=1e-6)
    ml = convert_exported_program(export_program(wrapped, x / factors),
                                  x.shape, 1, image=norm)
    path = save_package(ml, str(tmp_path / 'img.mlpackage'))
    check = validate_package(path, x.shape, [(1, 4, 32, 32)])
    assert check['inputs'] == {'image': [1, 3, 32, 32]}
    spec = load_package_spec(path)
    assert spec.description.input[0].type.WhichOneof('Type') == 'imageType'
    image = spec.description.input[0].type.imageType
    assert (image.width, image.height) == (32, 32)


def _levit_numbering(resolution):
    """{(dy, dx): entry} of a LeViT-style bias table for a resolution x
    resolution token grid, numbered as mmpretrain's EfficientFormer
    attention numbers it: in the order the offsets first appear over the
    token pairs, row by row."""
    points = [(y, x) for y in range(resolution) for x in range(resolution)]
    numbering = {}
    for a in points:
        for b in points:
            numbering.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])),
                                 len(numbering))
    return numbering


def _pair_indices(resolution):
    """The bias entry each (query, key) token pair reads."""
    numbering = _levit_numbering(resolution)
    pts = [(y, x) for y in range(resolution) for x in range(resolution)]
    return torch.tensor(
        [numbering[(abs(a[0] - b[0]), abs(a[1] - b[1]))] for a in pts
         for b in pts]).view(len(pts), len(pts))


def _levit_like(resolution=7, heads=2):
    """A module with a LeViT-style attention-bias table, as mmpretrain's
    EfficientFormer attention has."""
    m = nn.Module()
    # bias = 10*dy + dx (+ 100 per head): each entry says its offset
    m.attention_biases = nn.Parameter(torch.tensor(
        [[100. * h + 10 * dy + dx for dy, dx in _levit_numbering(resolution)]
         for h in range(heads)]))
    m.attention_bias_idxs = _pair_indices(resolution)
    return m


@pytest.mark.parametrize('size,new', [(160, 5), (512, 16)])
def test_attention_biases_follow_the_token_grid(size, new):
    from iformer_mm.deploy.backbones import resize_attention_biases
    model = nn.Sequential(_levit_like())
    note = resize_attention_biases(model, (size, size))
    assert note == f'attention biases resized 7x7 -> {new}x{new} (bicubic)'
    m = model[0]
    assert m.attention_biases.shape == (2, new * new)
    # the new table is numbered as mmpretrain numbers it at that grid
    assert torch.equal(m.attention_bias_idxs, _pair_indices(new))
    table = {offset: m.attention_biases[0, entry].item()
             for offset, entry in _levit_numbering(new).items()}
    # align_corners: the zero offset and the largest offset keep their
    # values; in between, the 10*dy + dx ramp is interpolated, rising
    # along both offsets
    assert table[(0, 0)] == pytest.approx(0.0, abs=1e-4)
    assert table[(new - 1, new - 1)] == pytest.approx(66.0, abs=1e-4)
    step = 6 / (new - 1)
    for (dy, dx), value in table.items():
        assert -1 < value < 67
        if dx + 1 < new:
            assert table[(dy, dx + 1)] > value
        if dy + 1 < new:
            assert table[(dy + 1, dx)] > value + 5 * step
    # each query/key pair points at the entry of its offset
    assert m.attention_biases[1, m.attention_bias_idxs[0, new + 1]].item() \
        == pytest.approx(100 + table[(1, 1)], abs=1e-4)
    assert m.attention_biases[0, m.attention_bias_idxs[new + 2, 0]].item() \
        == pytest.approx(table[(1, 2)], abs=1e-4)


def test_attention_biases_at_their_own_grid_are_left_alone():
    from iformer_mm.deploy.backbones import resize_attention_biases
    model = nn.Sequential(_levit_like())
    before = model[0].attention_biases
    assert resize_attention_biases(model, (224, 224)) == ''
    assert model[0].attention_biases is before


def test_census_of_a_program_without_rearrangement():
    from iformer_mm.deploy.coreml import import_coremltools
    from iformer_mm.deploy.census import census_from_spec
    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 8, 8))],
                opset_version=ct.target.iOS16)
    def prog(x):
        return mb.relu(x=x)

    census = census_from_spec(ct.convert(
        prog, convert_to='mlprogram', pass_pipeline=ct.PassPipeline.EMPTY,
        minimum_deployment_target=ct.target.iOS16,
        skip_model_load=True).get_spec())
    assert census['rearrange_ops'] == census['rearrange_bytes'] == 0
    assert census['largest_rearrange_bytes'] == 0
    assert census['weight_bytes'] == 0 and census['weight_mib'] == 0


# --------------------------------------------------------------------------
# backbone names: registries, configs, mistakes
# --------------------------------------------------------------------------
def test_registry_names_build_their_backbone_and_mistakes_say_why():
    from iformer_mm.deploy.backbones import BackboneError, resolve_backbone
    spec = resolve_backbone('mmpretrain.MobileOne{"arch": "s0"}')
    assert spec.source == 'mmpretrain.MobileOne' and spec.size_divisor == 1
    model = spec.build()
    assert type(model).__name__ == 'MobileOne'
    assert model.arch['num_blocks'] == [2, 8, 10, 1]  # s0's table
    for name, needle in [
            ('mmpretrain.MobileOne{arch: s0}', 'Bad JSON arguments'),
            ('mmdet.NoSuchNet', "mmdet has no backbone 'NoSuchNet'"),
            ('mmocr.ResNet', "Unknown OpenMMLab scope 'mmocr'"),
            ('no-such-backbone', 'Unknown backbone')]:
        with pytest.raises(BackboneError, match=needle):
            resolve_backbone(name)


def test_a_missing_library_makes_its_backbones_unavailable(monkeypatch):
    """On the light install (no mmdet) a preset of mmdet is listed as
    unavailable, with the reason, instead of failing the whole run."""
    from iformer_mm.deploy.backbones import BackboneError, resolve_backbone
    monkeypatch.setitem(sys.modules, 'mmdet.registry', None)
    spec = resolve_backbone('resnet18')
    assert spec.unavailable and 'mmdet is not importable here' in \
        spec.unavailable and 'install it' in spec.unavailable
    with pytest.raises(BackboneError, match='mmdet is not importable'):
        spec.build()


def test_config_backbones_follow_their_scope(tmp_path):
    from iformer_mm.deploy.backbones import BackboneError, resolve_backbone
    cfg = tmp_path / 'mine.py'
    cfg.write_text("default_scope = 'mmseg'\nmodel = dict(backbone=dict("
                   "type='mmpretrain.MobileOne', arch='s0'))\n")
    spec = resolve_backbone(str(cfg))
    assert spec.family == 'peer' and spec.paper is None
    assert '[mmpretrain.MobileOne]' in spec.source
    assert type(spec.build()).__name__ == 'MobileOne'
    # as mmengine: the scope ends at the first dot
    dotted = tmp_path / 'dotted.py'
    dotted.write_text("model = dict(backbone=dict("
                      "type='mmpretrain.x.MobileOne', arch='s0'))\n")
    spec = resolve_backbone(str(dotted))
    assert spec.source.endswith('[mmpretrain.x.MobileOne]')
    with pytest.raises(KeyError, match='x.MobileOne is not in the '
                       'mmpretrain::model registry'):
        spec.build()
    empty = tmp_path / 'empty.py'
    empty.write_text("model = dict(type='X')\n")
    with pytest.raises(BackboneError, match='has no model.backbone'):
        resolve_backbone(str(empty))
    with pytest.raises(BackboneError, match='config file not found'):
        resolve_backbone(str(tmp_path / 'gone.py'))


def test_efficientformer_biases_are_resized_to_the_token_grid():
    """EfficientFormer's 7x7 bias table (224 px) becomes 16x16 at 512 px:
    the corner offsets keep their values (bicubic, corners aligned) and
    every pair of tokens reads the bias of its offset."""
    from iformer_mm.deploy.backbones import (BackboneError,
                                             resize_attention_biases,
                                             resolve_backbone)
    spec = resolve_backbone('efficientformer-l1')
    model = spec.build()
    model.eval()  # (mmpretrain's train() returns None) caches the biases
    (attn, ) = [m for m in model.modules()
                if hasattr(m, 'attention_bias_idxs')]
    torch.manual_seed(0)
    with torch.no_grad():
        attn.attention_biases.normal_()
    old = attn.attention_biases.detach().clone()
    old_idxs = attn.attention_bias_idxs.clone()
    # the bias of token 0 with itself (offset 0, 0) and with the far corner
    # token of the 7x7 grid (offset 6, 6)
    same, far = old[:, old_idxs[0, 0]], old[:, old_idxs[0, 48]]
    with pytest.raises(BackboneError, match='square input'):
        resize_attention_biases(model, (512, 256))
    note = resize_attention_biases(model, (512, 512))
    assert '7x7 -> 16x16' in note
    idxs = attn.attention_bias_idxs
    assert idxs.shape == (256, 256)
    table = attn.attention_biases
    assert table.shape == (old.shape[0], 256)
    assert torch.allclose(table[:, idxs[0, 0]], same, atol=1e-5)
    assert torch.allclose(table[:, idxs[0, 255]], far, atol=1e-5)
    for a, b in ((3, 40), (17, 200), (255, 0)):
        ay, ax, by, bx = a // 16, a % 16, b // 16, b % 16
        offset = (abs(ay - by), abs(ax - bx))
        same_offset = [(i, j) for i in range(256) for j in range(256)
                       if (abs(i // 16 - j // 16), abs(i % 16 - j % 16)) ==
                       offset][:3]
        assert {int(idxs[i, j]) for i, j in same_offset} == {int(idxs[a, b])}
    # the eval-mode cache follows the new table: inference at 512 runs
    assert torch.equal(attn.ab, table[:, idxs])
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 512, 512))
    assert out[-1].shape == (1, 448, 16, 16)
    assert resize_attention_biases(model, (512, 512)) == ''  # already 16


# The peers as their papers publish them: ImageNet parameters (millions, as
# printed), the classifier those include (in -> 1000 classes; EfficientFormer
# trains two, a head and a distillation head), and the widths of the four
# dense maps (strides 4, 8, 16, 32).
PEER_ARCHITECTURES = {
    # ResNet (He et al. 2016), Table 3 / torchvision: 11.7M, 25.6M
    'resnet18': (11.7, 512, 1, (64, 128, 256, 512)),
    'resnet50': (25.6, 2048, 1, (256, 512, 1024, 2048)),
    # Swin Transformer (Liu et al. 2021), Table 1: Swin-T 28M (28.3M)
    'swin-t': (28.3, 768, 1, (96, 192, 384, 768)),
    # PVTv2 (Wang et al. 2022), Table 2: B1 14.0M
    'pvtv2-b1': (14.0, 512, 1, (64, 128, 320, 512)),
    # PoolFormer / MetaFormer (Yu et al. 2022), Table 1: S12 12M, S24 21M
    'poolformer-s12': (11.9, 512, 1, (64, 128, 320, 512)),
    'poolformer-s24': (21.4, 512, 1, (64, 128, 320, 512)),
    # EfficientFormer (Li et al. 2022), Table 1: L1 12.3M, L3 31.3M
    'efficientformer-l1': (12.3, 448, 2, (48, 96, 224, 448)),
    'efficientformer-l3': (31.3, 512, 2, (64, 128, 320, 512)),
    # ConvNeXt (Liu et al. 2022), Table 1: ConvNeXt-T 29M (28.6M)
    'convnext-t': (28.6, 768, 1, (96, 192, 384, 768)),
    # EfficientNet (Tan & Le 2019), Table 1: B0 5.3M; the last map is the
    # 1x1 head conv's 1280 channels
    'efficientnet-b0': (5.3, 1280, 1, (24, 40, 112, 1280)),
}


def test_every_peer_preset_is_the_published_network_with_dense_maps():
    """Each peer preset is its paper's network: its parameters plus the
    classifier(s) it drops are the published ImageNet count (within 1%,
    printed to 0.1M), and it returns four 4-D maps at strides 4, 8, 16 and
    32 with the paper's widths (a preset that pooled its last map, e.g.
    ConvNeXt with gap_before_final_norm, would feed a neck vectors; a wrong
    ``out_indices`` a map of the wrong stride)."""
    from iformer_mm.deploy.backbones import (BackboneError, PEERS,
                                             resolve_backbone)
    assert set(PEER_ARCHITECTURES) == set(PEERS)
    size = 128
    for key in sorted(PEERS):
        published, head_in, heads, widths = PEER_ARCHITECTURES[key]
        spec = resolve_backbone(key)
        model = spec.build()
        model.eval()
        if spec.adapt is not None:
            spec.adapt(model, (size, size))
        count = sum(p.numel() for p in model.parameters())
        count += heads * (head_in * 1000 + 1000)
        assert abs(count / 1e6 - published) <= 0.01 * published, \
            (key, count)
        with torch.no_grad():
            outs = model(torch.zeros(1, 3, size, size))
        outs = outs if isinstance(outs, (tuple, list)) else (outs, )
        assert [tuple(o.shape) for o in outs] == [
            (1, c, size // s, size // s)
            for c, s in zip(widths, (4, 8, 16, 32))], key
        # dense inputs must be multiples of the network's total stride
        assert spec.size_divisor == 32, key
        with pytest.raises(BackboneError, match='multiple of 32'):
            spec.check_size(size, size + 16)


def test_attention_peers_have_their_published_heads_and_windows():
    """Heads and windows change no parameter count, but do change latency:
    PVTv2-B1 has 1, 2, 5, 8 heads over 2, 2, 2, 2 blocks (PVTv2, Table 2)
    and Swin-T 3, 6, 12, 24 heads over 2, 2, 6, 2 blocks with 7x7 windows
    (Swin, Sec. 3.3)."""
    from iformer_mm.deploy.backbones import resolve_backbone

    def heads_per_stage(model, kind, stage_of):
        out = {}
        for name, module in model.named_modules():
            if type(module).__name__ == kind:
                out.setdefault(stage_of(name), []).append(module)
        return out

    pvt = heads_per_stage(resolve_backbone('pvtv2-b1').build(),
                          'SpatialReductionAttention',
                          lambda n: int(n.split('.')[1]))
    assert [len(pvt[i]) for i in range(4)] == [2, 2, 2, 2]
    assert [{m.num_heads for m in pvt[i]} for i in range(4)] == \
        [{1}, {2}, {5}, {8}]
    swin = heads_per_stage(resolve_backbone('swin-t').build(), 'WindowMSA',
                           lambda n: int(n.split('.')[1]))
    assert [len(swin[i]) for i in range(4)] == [2, 2, 6, 2]
    assert [{m.num_heads for m in swin[i]} for i in range(4)] == \
        [{3}, {6}, {12}, {24}]
    assert {tuple(m.window_size) for ms in swin.values() for m in ms} == \
        {(7, 7)}


def test_size_divisor_of_a_custom_backbone_is_enforced():
    from iformer_mm.deploy.backbones import BackboneError, spec_from_module
    spec = spec_from_module(nn.Identity(), 'mine', size_divisor=2)
    spec.check_size(64, 66)
    with pytest.raises(BackboneError, match='multiple of 2, got 64x63'):
        spec.check_size(64, 63)
    spec_from_module(nn.Identity(), 'any').check_size(64, 63)  # divisor 1
    spec_from_module(nn.Identity(), 'any', size_divisor=0).check_size(64, 63)
    assert spec.label == 'mine'  # the key, unless a label is given
    assert spec_from_module(nn.Identity(), 'mine', label='My net').label == \
        'My net'


def test_peers_build_in_their_own_scope_whatever_the_current_one():
    """A process that already ran an mmseg config has mmseg as mmengine's
    default scope; an mmpretrain or mmdet preset must still be built from
    its own registry (found by the full suite: test order mattered)."""
    from mmengine.registry import DefaultScope

    from iformer_mm.deploy.backbones import resolve_backbone
    for current in ('mmseg', 'mmdet', 'mmpretrain'):
        with DefaultScope.overwrite_default_scope(current):
            for key, kind in (('convnext-t', 'ConvNeXt'),
                              ('resnet18', 'ResNet'),
                              ('iformer-t', 'IFormer')):
                assert type(resolve_backbone(key).build()).__name__ == kind
            spec = resolve_backbone('mmpretrain.MobileOne{"arch": "s0"}')
            assert type(spec.build()).__name__ == 'MobileOne'
            assert DefaultScope.get_current_instance().scope_name == current


def test_classifier_program_takes_sizes_as_the_command_line_parses_them():
    """``--size 320 320`` parses two separate ints: that is a square
    classifier, built at 320; ``--size 320 256`` is refused with a pointer
    to the dense program."""
    from iformer_mm.deploy.backbones import BackboneError, resolve_backbone
    spec = resolve_backbone('resnet18')
    height, width = int('320'), int('320')  # two objects, as argparse's
    model, _ = spec.build_classifier((height, width))
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 320, 320)).shape == (1, 1000)
    with pytest.raises(BackboneError, match='--program dense'):
        spec.build_classifier((320, 256))
