"""tools/get_flops.py: an arch, a config's backbone, a config's whole model."""
import os.path as osp
import re
import runpy
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'get_flops.py')


def run_tool(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, 'argv', [TOOL, *args])
    runpy.run_path(TOOL, run_name='__main__')
    out = capsys.readouterr().out
    gmacs = float(re.search(r'Flops: ([\d.]+) GMACs', out).group(1))
    params = float(re.search(r'Params: ([\d.]+) M', out).group(1))
    return gmacs, params, out


def test_arch(monkeypatch, capsys):
    gmacs, params, out = run_tool(monkeypatch, capsys, 't')
    assert gmacs == pytest.approx(0.53, rel=0.01)
    assert params == pytest.approx(2.886, abs=0.001)
    assert 'Input shape: (3, 224, 224)' in out


def test_config_backbone_matches_arch(monkeypatch, capsys):
    from iformer_mm.utils import backbone_complexity
    cfg = osp.join(ROOT, 'configs', 'fpn_iformer_t_ade20k_40k.py')
    gmacs, params, out = run_tool(monkeypatch, capsys, cfg,
                                  '--backbone-only', '--shape', '256')
    ref = backbone_complexity('t', (256, 256), with_head=False,
                              attention='hybrid', window_chunks=16)
    assert gmacs == pytest.approx(ref['macs'] / 1e9, abs=1e-3)
    assert params == pytest.approx(ref['params'] / 1e6, abs=1e-3)


def test_config_whole_model_counts_more(monkeypatch, capsys):
    cfg = osp.join(ROOT, 'configs', 'fpn_iformer_t_ade20k_40k.py')
    backbone, _, _ = run_tool(monkeypatch, capsys, cfg, '--backbone-only',
                              '--shape', '128')
    whole, params, out = run_tool(monkeypatch, capsys, cfg, '--shape', '128')
    assert whole > backbone and 'whole model' in out


def test_bad_target(monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', [TOOL, 'nonexistent.py'])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(TOOL, run_name='__main__')
    assert info.value.code == 2  # a user mistake: one line, exit code 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert 'neither an iFormer arch' in err
