"""The OpenMMLab 2.0 stack that tools/install.py sets up, and our place in it.

Expected values are computed by hand, independent of torchvision.
"""
import glob
import importlib
import os.path as osp
import sys
import textwrap
from importlib import metadata

import pytest
import torch

import iformer_mm  # noqa: F401  (registers IFormer in mmengine's root MODELS)

from iformer_mm.check import read_constraints, spec_ok  # noqa: E402

# the pins live in constraints.txt, which tools/install.py installs from
PINS = read_constraints()
STACK = ['mmcv', 'mmdet', 'mmsegmentation', 'mmpretrain', 'mmengine',
         'coremltools', 'numpy']


@pytest.mark.parametrize('dist', STACK)
def test_pinned_versions(dist):
    assert spec_ok(metadata.version(dist), PINS[dist]), (
        dist, metadata.version(dist), PINS[dist])


def test_opencv_below_5():
    """mmseg's dataset browser crashes with opencv 5: constraints.txt keeps
    every installed opencv wheel below it."""
    found = {}
    for dist in ('opencv-python', 'opencv-python-headless'):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    assert found, 'no opencv wheel installed (mmengine needs one)'
    for dist, version in found.items():
        assert PINS[dist] == '>=4.5,<5'
        assert spec_ok(version, PINS[dist]), (dist, version)


@pytest.mark.parametrize('module', [
    'mmcv.ops', 'mmdet', 'mmdet.models', 'mmseg', 'mmseg.models',
    'mmpretrain', 'mmpretrain.models', 'coremltools', 'onnx', 'onnxruntime'
])
def test_imports(module):
    importlib.import_module(module)


def test_torchvision_matches_torch():
    import torchvision
    from torchvision.ops import nms

    t_major, t_minor = (int(x) for x in torch.__version__.split('.')[:2])
    v_minor = int(torchvision.__version__.split('.')[1])
    assert v_minor == (t_minor + 15 if t_major == 2 else t_minor + 1)
    # the compiled op loads and runs (fails with a mismatched pair)
    keep = nms(torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.]]),
               torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]


# --------------------------------------------------------------------------
# mmcv ops on CPU, against hand-computed values
# --------------------------------------------------------------------------
# A and B overlap with IoU 81/119 = 0.68; A and C: 50/150 = 0.33;
# B and C: 54/146 = 0.37; D overlaps nothing.
BOXES = torch.tensor([
    [0., 0., 10., 10.],    # A
    [1., 1., 11., 11.],    # B
    [5., 0., 15., 10.],    # C
    [50., 50., 60., 60.],  # D
])
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.95])


@pytest.mark.parametrize('iou_thr,expected', [
    (0.5, [3, 0, 2]),      # B suppressed by A (0.68 > 0.5)
    (0.7, [3, 0, 1, 2]),   # nothing above 0.7
    (0.3, [3, 0]),         # C suppressed by A (0.33 > 0.3)
])
def test_mmcv_nms_cpu(iou_thr, expected):
    from mmcv.ops import nms

    dets, keep = nms(BOXES, SCORES, iou_thr)
    assert keep.tolist() == expected
    assert torch.allclose(dets[:, :4], BOXES[expected])
    assert torch.allclose(dets[:, 4], SCORES[expected])


def test_mmcv_batched_nms_cpu():
    from mmcv.ops import batched_nms

    # same boxes, but B in another class: it is no longer suppressed by A
    idxs = torch.tensor([0, 1, 0, 0])
    dets, keep = batched_nms(BOXES, SCORES, idxs,
                             dict(type='nms', iou_threshold=0.5))
    assert sorted(keep.tolist()) == [0, 1, 2, 3]
    assert dets[:, 4].tolist() == sorted(dets[:, 4].tolist(), reverse=True)


# f(y, x) = 8y + x on an 8x8 map is linear, so bilinear sampling is exact
# and a RoIAlign bin is f at the bin's centre, whatever the sampling ratio,
# as long as every sample stays inside the map (no border clamping).
FEAT = torch.arange(64.).view(1, 1, 8, 8)
ROI = [1., 1., 5., 5.]  # x1, y1, x2, y2: 2x2 bins of 2x2 pixels


@pytest.mark.parametrize('aligned,sampling_ratio,expected', [
    # bin centres (y, x) = (2,2), (2,4), (4,2), (4,4)
    (False, 1, [18., 20., 34., 36.]),
    (False, 2, [18., 20., 34., 36.]),
    # aligned=True shifts the RoI by half a pixel: (1.5,1.5) ...
    (True, 1, [13.5, 15.5, 29.5, 31.5]),
    (True, 2, [13.5, 15.5, 29.5, 31.5]),
])
def test_mmcv_roi_align_cpu(aligned, sampling_ratio, expected):
    from mmcv.ops import RoIAlign

    rois = torch.tensor([[0.] + ROI])
    out = RoIAlign((2, 2), 1.0, sampling_ratio, aligned=aligned)(FEAT, rois)
    assert out.shape == (1, 1, 2, 2)
    assert torch.allclose(out.flatten(), torch.tensor(expected))


def test_mmcv_roi_align_spatial_scale_and_batch_index():
    from mmcv.ops import RoIAlign

    feat = torch.cat([torch.zeros_like(FEAT), FEAT])  # image 1 is FEAT
    # the same RoI given in input-image coordinates at stride 2, on image 1
    rois = torch.tensor([[1.] + [2 * c for c in ROI]])
    out = RoIAlign((2, 2), 0.5, 2, aligned=False)(feat, rois)
    assert torch.allclose(out.flatten(), torch.tensor([18., 20., 34., 36.]))


# --------------------------------------------------------------------------
# our modules reach every downstream scope
# --------------------------------------------------------------------------
def _registry(scope):
    return importlib.import_module(f'{scope}.registry').MODELS


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_iformer_builds_under_scope(scope):
    from mmengine.registry import DefaultScope

    registry = _registry(scope)
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(dict(type='IFormer', arch='t'))
    assert type(model).__name__ == 'IFormer'
    assert type(model).__module__.startswith('iformer_mm.')
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert isinstance(outs, (tuple, list)) and len(outs) >= 1
    assert outs[-1].shape[0] == 1 and outs[-1].shape[-1] == 2  # stride 32


@pytest.mark.slow
def test_custom_imports_in_a_config(tmp_path):
    """The documented config line imports us and makes IFormer buildable."""
    import subprocess

    cfg = tmp_path / 'cfg.py'
    cfg.write_text(textwrap.dedent("""\
        custom_imports = dict(imports=['iformer_mm'],
                              allow_failed_imports=False)
        default_scope = 'mmdet'
        model = dict(type='IFormer', arch='t')
    """))
    # a fresh interpreter, so the import really comes from the config
    code = textwrap.dedent(f"""\
        import sys
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        assert 'iformer_mm' not in sys.modules
        cfg = Config.fromfile({str(cfg)!r})
        assert 'iformer_mm' in sys.modules
        init_default_scope(cfg.default_scope)
        from mmdet.registry import MODELS
        print(type(MODELS.build(cfg.model)).__name__)
    """)
    proc = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == 'IFormer'


def test_every_requirement_is_reported_by_the_probe():
    """The installer's 'everything in place' needs a version for each
    requirement; a requirement the probe does not report makes every run
    reinstall it (onedl-mim and scipy once did)."""
    import re
    from iformer_mm.check import DISTS
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    for path in glob.glob(osp.join(root, 'requirements', '*.txt')):
        for line in open(path):
            line = line.split('#', 1)[0].strip()
            if not line or line.startswith('-'):
                continue
            name = re.split(r'[<>=!~;\[ ]', line)[0].lower()
            assert name in DISTS, f'{osp.basename(path)}: {name}'
