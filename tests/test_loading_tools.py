"""Whole-model checkpoint loading in the tools, with real mmdet / mmseg /
mmpretrain models built from the toy configs.

* ``tools/test.py``: strict by default (a backbone-only or wrong checkpoint
  is an error naming the keys), ``--allow-partial`` as the way out, any
  layout (this project's own, the authors' mmdet / mmseg Runner files);
* ``load_from`` in training: one summary line, nothing else;
* ``tools/demo.py`` / ``tools/benchmark.py`` (through ``iformer_mm.apis``):
  strict by default, ``allow_partial``;
* the authors' mmdet / mmseg whole-model checkpoints round-trip into the
  configs' models; ``init_cfg`` with ``prefix='backbone.'`` from a config.

In process (no subprocess start-up); each test in its own working
directory, where the toy configs generate their data.
"""
import glob
import os
import os.path as osp

import numpy as np
import pytest
import torch

import iformer_mm  # noqa: F401
from iformer_mm.errors import CheckpointMismatchError

from ._layouts import authors_whole, randomize, to_release
from ._tools import load_tool, runner_of

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET = osp.join(ROOT, 'configs/toy/maskrcnn_iformer_t_toy.py')
SEG = osp.join(ROOT, 'configs/toy/fpn_iformer_t_toy.py')
CLS = osp.join(ROOT, 'configs/toy/iformer_t_toy_cls.py')
LIBS = {DET: 'mmdet', SEG: 'mmseg', CLS: 'mmpretrain'}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    # a fresh current MMLogger: the one an earlier test made writes to that
    # test's (closed) captured stdout
    from mmengine.logging import MMLogger
    MMLogger.get_instance(f'ckpt-{request.node.name}')


def _model(config, seed, cfg_options=None):
    pytest.importorskip(LIBS[config])
    if config == DET:
        pytest.importorskip('mmcv.ops')  # RoIAlign, NMS
    from iformer_mm.apis.build import build_model
    from iformer_mm.config import load_config
    model = build_model(load_config(config, cfg_options), init_weights=False)
    return randomize(model, seed)


def _save(state, path, meta=None):
    torch.save({'state_dict': dict(state), 'meta': meta or {}}, path)
    return path


def _assert_identical(model, expected):
    got = model.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


# --------------------------------------------------------------------------
# The authors' whole-model checkpoints into the configs' models
# --------------------------------------------------------------------------
@pytest.mark.parametrize('config', [DET, SEG])
def test_authors_runner_checkpoint_round_trip(config, tmp_path):
    from iformer_mm.models.checkpoint import load_model_checkpoint
    src = dict(_model(config, seed=1).state_dict())
    path = _save(authors_whole(src), 'authors.pth',
                 meta={'dataset_meta': {'classes': ('x', )}})
    model = _model(config, seed=2)
    report = load_model_checkpoint(model, path)
    _assert_identical(model, src)
    assert (report.missing, report.unexpected, report.mismatched) == \
        ([], [], [])
    assert len(report.loaded) == len(src)


def test_init_cfg_prefix_from_a_config(tmp_path):
    """``model.backbone.init_cfg`` with ``prefix='backbone.'`` pointing at
    the authors' mmseg checkpoint fills the backbone (it loaded nothing
    before)."""
    src = dict(_model(SEG, seed=1).state_dict())
    path = _save(authors_whole(src), str(tmp_path / 'authors_seg.pth'))
    from iformer_mm.config import init_scope, load_config
    from mmengine.registry import MODELS
    cfg = load_config(SEG)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=path,
                                       prefix='backbone.')
    init_scope(cfg)
    model = randomize(MODELS.build(cfg.model), 2)
    model.init_weights()
    _assert_identical(model.backbone, {k[9:]: v for k, v in src.items()
                                       if k.startswith('backbone.')})


# --------------------------------------------------------------------------
# tools/test.py
# --------------------------------------------------------------------------
def _test_runner(argv):
    """What tools/test.py builds, up to loading the checkpoint."""
    return runner_of('test', argv)


def _run_test_main(argv, capsys):
    """tools/test.py's main; a UserError counts as exit 2 whether or not
    the tool's wrapper has already turned it into one."""
    from iformer_mm.engine.cli import test_main
    from iformer_mm.errors import UserError
    try:
        rc = test_main(argv)
        msg = capsys.readouterr().err
    except UserError as e:
        rc, msg = 2, str(e)
    return rc, msg


def test_test_tool_loads_every_layout_strictly(tmp_path, capsys):
    src = dict(_model(SEG, seed=1).state_dict())
    own = _save(src, 'own.pth')
    authors = _save(authors_whole(src), 'authors.pth')
    for path in (own, authors):
        runner = _test_runner([SEG, path, '--work-dir', 'w'])
        runner.load_or_resume()
        _assert_identical(runner.model, src)

    # a backbone-only file: an error naming the neck / head keys
    backbone_only = _save({k: v for k, v in src.items()
                           if k.startswith('backbone.')}, 'bb.pth')
    rc, msg = _run_test_main([SEG, backbone_only, '--work-dir', 'w'],
                             capsys)
    assert rc == 2
    assert 'neck.*' in msg and 'decode_head.*' in msg  # what is missing
    assert 'neck.lateral_convs.0.conv.weight' in msg
    assert 'only backbone weights' in msg and '--allow-partial' in msg

    # --allow-partial: it runs (on one test image), with a warning that
    # counts what did not load
    rc, _ = _run_test_main([SEG, backbone_only, '--work-dir', 'w',
                            '--allow-partial', '--cfg-options',
                            'test_dataloader.dataset.indices=1'], capsys)
    assert rc == 0
    log = open(sorted(glob.glob('w/*/*.log'))[-1]).read()
    n_backbone = len([k for k in src if k.startswith('backbone.')])
    assert f'{n_backbone} loaded' in log and 'missing' in log


def test_test_tool_refuses_one_wrong_shape(capsys):
    src = dict(_model(SEG, seed=1).state_dict())
    key = 'decode_head.conv_seg.weight'
    src[key] = torch.zeros(7, *src[key].shape[1:])  # 7 classes, not 4
    path = _save(src, 'wrong.pth')
    rc, msg = _run_test_main([SEG, path, '--work-dir', 'w'], capsys)
    assert rc == 2 and f'{key} (file (7, ' in msg


# --------------------------------------------------------------------------
# load_from in training: one summary line
# --------------------------------------------------------------------------
def test_train_load_from_prints_one_summary_line(tmp_path, capsys):
    src = dict(_model(SEG, seed=1).state_dict())
    path = _save({k: v for k, v in src.items() if k.startswith('backbone.')},
                 str(tmp_path / 'bb.pth'))
    runner = runner_of('train', [SEG, '--work-dir', 'w', '--cfg-options',
                                 f'load_from={path}'])
    runner._train_loop = runner.build_train_loop(runner._train_loop)
    runner.load_or_resume()  # where train() loads it
    got = runner.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in src.items()
               if k.startswith('backbone.'))
    log = open(glob.glob('w/*/*.log')[0]).read()
    lines = [ln for ln in log.splitlines() if ' - load_from ' in ln]
    assert len(lines) == 1, lines
    n_backbone = len([k for k in src if k.startswith('backbone.')])
    assert f'{n_backbone} loaded' in lines[0]
    assert 'missing' in lines[0] and 'unexpected' in lines[0]
    # no mmengine key wall (it prints that to stdout, not to the log)
    printed = capsys.readouterr()
    assert 'do not match exactly' not in log + printed.out + printed.err


# --------------------------------------------------------------------------
# tools/demo.py and tools/benchmark.py
# --------------------------------------------------------------------------
def _image(path):
    import cv2
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    assert cv2.imwrite(path, img)
    return path


def test_demo_and_benchmark_are_strict(capsys):
    from iformer_mm.apis import benchmark, run_demo
    from iformer_mm.apis.inference import build_inferencer
    model = _model(CLS, seed=1)
    src = dict(model.state_dict())
    # the classifier in the authors' release names: loads whole
    release = {'model': to_release({k[9:] if k.startswith('backbone.') else
                                    k: v for k, v in src.items()})}
    torch.save(release, 'release.pth')
    _, inf = build_inferencer(CLS, checkpoint='release.pth')
    _assert_identical(inf.model, src)

    backbone_only = _save({k: v for k, v in src.items()
                           if k.startswith('backbone.')}, 'bb.pth')
    img = _image('p.png')
    with pytest.raises(CheckpointMismatchError, match='head.head.l.weight'):
        run_demo(CLS, img, checkpoint=backbone_only, out_dir='o')
    with pytest.raises(CheckpointMismatchError, match='head.head.l.weight'):
        benchmark(CLS, checkpoint=backbone_only, num_images=1,
                  num_warmup=0, data='synthetic')
    res = run_demo(CLS, img, checkpoint=backbone_only, out_dir='o',
                   allow_partial=True)
    assert len(res.predictions) == 1
    r = benchmark(CLS, checkpoint=backbone_only, num_images=1, num_warmup=0,
                  data='synthetic', allow_partial=True)
    assert r.ms_per_img > 0
    capsys.readouterr()

    # the tools: one line, exit 2
    assert load_tool('demo').main([CLS, img, '--checkpoint', backbone_only,
                               '--out-dir', 'o2']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'head.head.l.weight' in err
    assert load_tool('benchmark').main([CLS, '--checkpoint', backbone_only,
                                    '--num-images', '1', '--warmup', '0',
                                    '--data', 'synthetic']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and '--allow-partial' in err
    assert not os.path.exists('o2/predictions.json')


# --------------------------------------------------------------------------
# tools/convert_checkpoint.py --config: the whole file checked
# --------------------------------------------------------------------------
def test_convert_against_a_config(capsys):
    from iformer_mm.models.checkpoint import load_model_checkpoint
    src = dict(_model(SEG, seed=1).state_dict())
    authors = _save(authors_whole(src), 'authors.pth')
    tool = load_tool('convert_checkpoint')
    assert tool.main([authors, 'out.pth', '--config', SEG]) == 0
    out = capsys.readouterr().out
    assert f'{len(src)} loaded, 0 missing, 0 unexpected' in out
    model = _model(SEG, seed=2)
    load_model_checkpoint(model, 'out.pth')
    _assert_identical(model, src)
    # the same file against a classification config: refused, nothing
    # written
    assert tool.main([authors, 'out2.pth', '--config', CLS]) == 2
    err = capsys.readouterr().err
    assert 'unexpected' in err and 'neck.lateral_convs.0.conv.weight' in err
    assert 'head.head.l.weight' in err  # the classifier it lacks
    assert not os.path.exists('out2.pth')
