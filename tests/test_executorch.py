"""The ExecuTorch path of the latency tool: a ``.pte`` per backbone, checked
against PyTorch and timed by the ExecuTorch runtime.

Importing ExecuTorch and its first lowering cost about 10 s each on 2
shared cores, whatever the network, so the default suite lowers one tiny
dense network; the unsupported op, iFormer-T and the Core ML delegate are
slow tests.
The ``executorch`` extra is installed by ``tools/install.py --with
executorch``, which CI runs: there a missing extra fails the skip policy.
"""
import importlib.util
import json
import os
import sys

import pytest
import torch
import torch.nn as nn

HAS_EXECUTORCH = importlib.util.find_spec('executorch') is not None
needs_executorch = pytest.mark.skipif(
    not HAS_EXECUTORCH,
    reason='executorch extra not installed (pip install -e ".[executorch]")')


class FourMaps(nn.Module):
    """A dense backbone in miniature: four feature maps, strides 2-16."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(3 if i == 0 else 8, 8, 3, 2, 1),
                          nn.BatchNorm2d(8), nn.ReLU()) for i in range(4))

    def forward(self, x):
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return tuple(maps)


@torch.library.custom_op('iformer_test::mystery', mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class MysteryOp(nn.Module):
    """Runs in PyTorch; ExecuTorch has no kernel for its custom op."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)

    def forward(self, x):
        return (mystery(self.conv(x)), )


def _config(tmp_path, specs, **kw):
    from iformer_mm.deploy.benchmark import BenchmarkConfig
    base = dict(backbones=[], resolution=(64, 64), warmup=0, runs=2,
                out_dir=str(tmp_path), chart=False, coreml=False, onnx=False,
                executorch=True, channels_last=False, specs=specs)
    base.update(kw)
    return BenchmarkConfig(**base)


@needs_executorch
def test_pte_matches_pytorch_and_is_timed_by_the_runtime(tmp_path):
    """Through the library API: a four-map network becomes a .pte in its
    backbone folder, matches PyTorch within the stated tolerance, is timed
    by the runtime on the tool's threads, and a file the tool did not
    write is left alone."""
    from iformer_mm.deploy.backbones import spec_from_module
    from iformer_mm.deploy.benchmark import run_benchmark
    mine = tmp_path / 'four-maps' / 'notes.pte'
    mine.parent.mkdir()
    mine.write_bytes(b'mine')
    run = run_benchmark(_config(
        tmp_path, [spec_from_module(FourMaps(), 'four-maps')]),
        show_progress=False)
    (row, ) = run['results']
    pte = row['executorch']
    assert pte['status'] == 'timed', pte.get('error')
    assert os.path.isfile(pte['path']) and pte['path'].endswith('.pte')
    assert os.path.dirname(pte['path']) == str(mine.parent)
    assert pte['size_bytes'] == os.path.getsize(pte['path']) > 0
    assert len(row['output_shapes']) == 4
    assert pte['check']['passed']
    assert pte['max_abs_diff'] <= pte['check']['tolerance']
    assert pte['timing']['runs'] == 2
    assert pte['timing']['min_ms'] <= pte['timing']['median_ms']
    assert pte['threads'] == torch.get_num_threads()
    assert 'XNNPACK' in pte['backend'] and 'proxy' in pte['backend']
    assert mine.read_bytes() == b'mine'
    table = run['markdown'].split('\n## ')[0]
    assert 'XNNPACK' in table and 'four-maps' in table
    saved = json.loads(open(run['outputs']['json']).read())
    assert saved['results'][0]['executorch']['timing']['median_ms'] > 0


@needs_executorch
@pytest.mark.slow
def test_an_unsupported_op_is_named_and_the_next_row_runs(tmp_path):
    from iformer_mm.deploy.backbones import spec_from_module
    from iformer_mm.deploy.benchmark import run_benchmark
    run = run_benchmark(_config(tmp_path, [
        spec_from_module(MysteryOp(), 'mystery-net'),
        spec_from_module(FourMaps(), 'four-maps')], runs=1),
        show_progress=False)
    bad, good = run['results']
    assert bad['executorch']['status'] == 'failed'
    error = bad['executorch']['error']
    assert 'mystery-net' in error and 'iformer_test' in error
    assert 'iformer_test' in run['markdown'].split('## ExecuTorch')[1]
    assert bad['torch']['timing']['runs'] == 1  # the row's other timings ran
    assert good['executorch']['status'] == 'timed'


def test_missing_executorch_is_one_line_and_exit_2(monkeypatch, capsys,
                                                   tmp_path):
    from iformer_mm.deploy.benchmark import main
    monkeypatch.setitem(sys.modules, 'executorch', None)
    out = tmp_path / 'lat'
    rc = main(['iformer-t', '--size', '64', '--backend', 'executorch',
               '--out', str(out), '--quiet'])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1
    assert 'executorch' in err.lower() and 'pip install' in err
    assert not out.exists()


def test_a_delegate_without_the_executorch_backend_is_refused(capsys,
                                                              tmp_path):
    from iformer_mm.deploy.benchmark import main
    rc = main(['iformer-t', '--size', '64', '--executorch-delegate', 'coreml',
               '--out', str(tmp_path), '--quiet'])
    assert rc == 2
    assert 'executorch' in capsys.readouterr().err
    assert not os.listdir(tmp_path)


@needs_executorch
@pytest.mark.slow
def test_tool_exports_a_dense_iformer_to_pte(tmp_path, capsys):
    """``--program dense --backend executorch onnx``: the .pte and the
    ONNX file, no Core ML package; iFormer's four feature maps match
    PyTorch."""
    from iformer_mm.deploy.benchmark import main
    out = tmp_path / 'lat'
    rc = main(['iformer-t', '--size', '64', '--program', 'dense',
               '--backend', 'executorch', 'onnx', '--warmup', '0', '--runs',
               '1', '--out', str(out), '--quiet', '--no-chart'])
    printed = capsys.readouterr().out
    assert rc == 0
    (row, ) = json.loads((out / 'latency.json').read_text())['results']
    folder = os.path.dirname(row['executorch']['path'])
    assert sorted(os.listdir(folder)) == ['model.onnx', 'model_xnnpack.pte']
    assert row['executorch']['status'] == 'timed'
    assert len(row['output_shapes']) == 4
    assert row['executorch']['check']['passed']
    assert 'ExecuTorch' in printed


@needs_executorch
@pytest.mark.slow
def test_coreml_delegate_lowers_here_and_runs_only_where_it_can(tmp_path):
    from executorch.runtime import Runtime

    from iformer_mm.deploy.backbones import spec_from_module
    from iformer_mm.deploy.benchmark import run_benchmark
    run = run_benchmark(_config(
        tmp_path, [spec_from_module(FourMaps(), 'four-maps')],
        executorch_delegate='coreml'), show_progress=False)
    (row, ) = run['results']
    pte = row['executorch']
    assert os.path.isfile(pte['path']) and 'coreml' in pte['path']
    if Runtime.get().backend_registry.is_available('CoreMLBackend'):
        assert pte['status'] == 'timed'
    else:
        assert pte['status'] == 'exported' and 'timing' not in pte
        assert 'CoreMLBackend' in run['executorch_line']
        assert 'not timed' in run['markdown']
