"""tools/benchmark.py and tools/demo.py end to end on the toy configs.

Random-init models, tiny inputs, every test runs in its own temporary
working directory (the toy configs generate their data under ``data/``
relative to it).
"""
import json
import os
import os.path as osp

import numpy as np
import pytest

from ._tools import ROOT, load_tool

DET = osp.join(ROOT, 'configs/toy/maskrcnn_iformer_t_toy.py')
SEG = osp.join(ROOT, 'configs/toy/fpn_iformer_t_toy.py')
CLS = osp.join(ROOT, 'configs/toy/iformer_t_toy_cls.py')
LIBS = {DET: 'mmdet', SEG: 'mmseg', CLS: 'mmpretrain'}

# a random-init Mask R-CNN keeps 1000 proposals and 100 detections with
# masks per image; fewer keep the tests fast (the code paths are the same)
DET_LIGHT = ['model.test_cfg.rpn.max_per_img=50',
             'model.test_cfg.rcnn.max_per_img=5']


def _needs(config):
    pytest.importorskip(LIBS[config])
    if not osp.isfile(config):
        pytest.skip(f'{config} not there')


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _image(path, h=48, w=64, seed=0):
    import cv2
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    cv2.rectangle(img, (10, 8), (40, 36), (0, 200, 255), -1)
    os.makedirs(osp.dirname(str(path)) or '.', exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return str(path)


# --------------------------------------------------------------------------
# benchmark
# --------------------------------------------------------------------------
def test_test_input_shape_of_real_configs():
    from iformer_mm.config import load_config
    from iformer_mm.apis.benchmark import test_input_shape
    coco = osp.join(ROOT, 'configs/maskrcnn_iformer_t_coco.py')
    ade = osp.join(ROOT, 'configs/fpn_iformer_t_ade20k_40k.py')
    in1k = osp.join(ROOT, 'configs/iformer_t_in1k.py')
    for path in (coco, ade, in1k):
        if not osp.isfile(path):
            pytest.skip(f'{path} not there')
    # keep-ratio resizes: 4:3 landscape with the resize's short side
    assert test_input_shape(load_config(coco)) == (800, 1067)
    assert test_input_shape(load_config(ade)) == (512, 683)
    # classification: ResizeEdge(256) then CenterCrop(224) in the pipeline
    assert test_input_shape(load_config(in1k)) == (256, 256)


def test_benchmark_missing_config(capsys):
    tool = load_tool('benchmark')
    from iformer_mm.apis import benchmark
    with pytest.raises(FileNotFoundError, match='config file not found'):
        benchmark('no/such/config.py')
    assert tool.main(['no/such/config.py']) == 2
    assert 'config file not found' in capsys.readouterr().err


def test_benchmark_bad_arguments():
    from iformer_mm.apis import benchmark
    with pytest.raises(ValueError, match='num_images'):
        benchmark(DET, num_images=0)
    with pytest.raises(ValueError, match='data must be'):
        benchmark(DET, data='webcam')


def test_benchmark_detection_fused_and_unfused(capsys):
    _needs(DET)
    tool = load_tool('benchmark')
    out = 'bench.json'
    rc = tool.main([DET, '--fuse', 'both', '--num-images', '2', '--warmup',
                    '1', '--shape', '64', '96', '--data', 'synthetic',
                    '--quiet', '--out', out, '--cfg-options', *DET_LIGHT])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert 'fused speed-up' in text
    unfused, fused = json.load(open(out))
    for r in (unfused, fused):
        assert r['task'] == 'detection' and r['data'] == 'synthetic'
        assert r['input_shape'] == [64, 96]
        assert r['num_images'] == 2 and len(r['times_ms']) == 2
        assert r['ms_per_img'] > 0 and r['imgs_per_s'] > 0
    assert not unfused['fused'] and fused['fused']
    # the iFormer BNs are folded, the backbone output is unchanged
    assert fused['bn_layers'] < unfused['bn_layers']
    assert fused['fuse_max_abs_diff'] < 1e-3
    assert fused['params_m'] == pytest.approx(unfused['params_m'], rel=0.05)


def test_benchmark_detection_real_toy_data():
    _needs(DET)
    from iformer_mm.apis import benchmark
    opts = {k: int(v) for k, v in (o.split('=') for o in DET_LIGHT)}
    # a small toy set, so that generating it costs next to nothing
    opts.update({'test_dataloader.dataset.toy_cfg.num_train': 2,
                 'test_dataloader.dataset.toy_cfg.num_val': 2})
    r = benchmark(DET, num_images=2, num_warmup=0, data='auto',
                  cfg_options=opts)
    assert r.data == 'real'  # the toy data is generated on demand
    assert osp.isdir('data/toy_coco')
    # the toy test pipeline resizes 128 px images into (160, 128)
    assert max(r.input_shape) <= 160 and r.num_images == 2


@pytest.mark.parametrize('config,task', [(SEG, 'segmentation'),
                                         (CLS, 'classification')])
def test_benchmark_seg_and_cls(config, task):
    _needs(config)
    from iformer_mm.apis import benchmark
    r = benchmark(config, num_images=1, num_warmup=1, data='synthetic',
                  fuse=True)
    assert r.task == task and r.fused and r.data == 'synthetic'
    # seg: Resize(256, 128) keep-ratio -> 128x171; cls: crop 64
    assert r.input_shape == ((128, 171) if task == 'segmentation' else
                             (64, 64))
    assert r.fuse_max_abs_diff is not None and r.fuse_max_abs_diff < 1e-3


# --------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------
@pytest.mark.parametrize('config,task', [(DET, 'detection'),
                                         (SEG, 'segmentation'),
                                         (CLS, 'classification')])
def test_demo_writes_drawn_image(config, task, capsys):
    _needs(config)
    import cv2
    tool = load_tool('demo')
    img = _image('in/pic.jpg')
    rc = tool.main([config, img, '--out-dir', 'out', '--device', 'cpu',
                    '--score-thr', '0.0'] +
                   (['--cfg-options', *DET_LIGHT] if config == DET else []))
    text = capsys.readouterr().out
    assert rc == 0, text
    pred_file = osp.join('out', 'predictions.json')
    preds = json.load(open(pred_file))
    assert preds['task'] == task
    (pred, ) = preds['predictions']
    vis = cv2.imread(pred['vis'])
    assert vis is not None and vis.ndim == 3
    if task == 'detection':
        assert pred['vis'] == osp.join('out', 'vis', 'pic.jpg')
        assert vis.shape[:2] == (48, 64)
        assert pred['has_masks']
        assert pred['num_drawn'] == len(pred['detections'])
        names = {d['class_name'] for d in pred['detections']}
        assert names <= {'square', 'triangle', 'circle'}  # toy classes
    elif task == 'segmentation':
        assert vis.shape[:2] == (48, 64)
        assert abs(sum(c['fraction'] for c in pred['classes']) - 1) < 1e-3
        # the overlay changed the picture
        assert np.abs(vis.astype(int) - cv2.imread(img).astype(int)).max() \
            > 0
    else:
        assert pred['vis'] == osp.join('out', 'vis', 'pic.png')
        assert len(pred['topk']) == 5
        scores = [t['score'] for t in pred['topk']]
        assert scores == sorted(scores, reverse=True)
        assert min(vis.shape[:2]) >= 256  # tiny input enlarged for text


def test_demo_folder_input():
    _needs(SEG)
    from iformer_mm.apis import run_demo
    _image('imgs/a.png', seed=1)
    _image('imgs/b.jpg', 40, 40, seed=2)
    open('imgs/notes.txt', 'w').write('not an image')
    res = run_demo(SEG, 'imgs', out_dir='out2', opacity=0.7)
    assert [osp.basename(f) for f in res.vis_files] == ['a.png', 'b.jpg']
    assert all(osp.isfile(f) for f in res.vis_files)
    assert len(res.predictions) == 2


def test_detection_demo_shows_progress_on_a_folder(capsys):
    """mmdet's progress bar over a folder, as mmdet's image_demo shows it;
    --no-progress turns it off."""
    _needs(DET)
    tool = load_tool('demo')
    _image('imgs/a.png', seed=1)
    _image('imgs/b.jpg', seed=2)
    light = ['--cfg-options', *DET_LIGHT]
    assert tool.main([DET, 'imgs', '--out-dir', 'o1'] + light) == 0
    text = capsys.readouterr().out
    assert 'Inference' in text and '━' in text, text
    assert tool.main([DET, 'imgs', '--out-dir', 'o2', '--no-progress'] +
                     light) == 0
    text = capsys.readouterr().out
    assert 'Inference' not in text, text
    assert len(json.load(open('o2/predictions.json'))['predictions']) == 2


def test_checkpoint_weights_and_classes():
    _needs(CLS)
    import torch
    from iformer_mm.apis import benchmark, run_demo
    from iformer_mm.apis.build import build_model
    from iformer_mm.config import load_config
    model = build_model(load_config(CLS))
    names = ['a', 'b', 'c', 'd', 'e', 'f']
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': names}}}, 'cls.pth')
    res = run_demo(CLS, _image('p.png'), checkpoint='cls.pth', out_dir='o')
    assert {t['class_name'] for t in res.predictions[0]['topk']} <= set(names)
    r = benchmark(CLS, checkpoint='cls.pth', num_images=1, num_warmup=0,
                  data='synthetic')
    assert r.ms_per_img > 0
    from iformer_mm.errors import CheckpointError
    with pytest.raises(CheckpointError, match="missing.pth' does not exist"):
        benchmark(CLS, checkpoint='missing.pth')
    with pytest.raises(CheckpointError, match="missing.pth' does not exist"):
        run_demo(CLS, 'p.png', checkpoint='missing.pth')


def test_demo_bad_inputs(capsys):
    tool = load_tool('demo')
    from iformer_mm.apis import collect_images, run_demo
    from iformer_mm.errors import InputError
    with pytest.raises(InputError, match='not found'):
        run_demo(DET, 'no/such.jpg')
    img = _image('x.jpg')
    with pytest.raises(FileNotFoundError, match='config file not found'):
        run_demo('no/such/config.py', img)
    os.makedirs('empty')
    with pytest.raises(InputError, match='No readable image'):
        collect_images('empty')
    open('a.txt', 'w').write('x')
    with pytest.raises(InputError, match='Not an image'):
        collect_images('a.txt')
    assert tool.main([DET, 'missing.png']) == 2
    assert 'not found' in capsys.readouterr().err
    assert tool.main(['no/such/config.py', img]) == 2
    assert 'config file not found' in capsys.readouterr().err
