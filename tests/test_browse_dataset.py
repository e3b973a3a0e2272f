"""tools/browse_dataset.py on the toy configs: the ground truth is drawn on
the image the pipeline delivers, for detection, segmentation and
classification (each library's own visualizer)."""
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(REPO, 'tools'))


def load(path):
    import cv2
    img = cv2.imread(str(path))
    assert img is not None, path
    return img[..., ::-1]  # RGB


@pytest.mark.parametrize('config,scope', [
    ('configs/toy/maskrcnn_iformer_t_toy.py', 'mmdet'),
    ('configs/toy/fpn_iformer_t_toy.py', 'mmseg'),
    ('configs/toy/iformer_t_toy_cls.py', 'mmpretrain'),
])
def test_draws_ground_truth(tmp_path, monkeypatch, config, scope):
    import browse_dataset
    from mmengine.config import Config
    monkeypatch.chdir(tmp_path)  # toy data is generated under ./data
    cfg = Config.fromfile(osp.join(REPO, config))
    # Compare like with like: without the random transforms, the browsed
    # item and the item built again below are the same picture.
    ds_cfg = cfg.train_dataloader.dataset
    while 'pipeline' not in ds_cfg and 'dataset' in ds_cfg:
        ds_cfg = ds_cfg.dataset
    ds_cfg.pipeline = [t for t in ds_cfg.pipeline if not str(
        t['type']).startswith(('Random', 'PhotoMetric'))]
    files = browse_dataset.browse(cfg, str(tmp_path / 'out'), show=False,
                                  number=2)
    assert len(files) == 2 and all(osp.isfile(f) for f in files)

    # the same items, undrawn, through the same (now deterministic)
    # pipeline: compare sizes, and the drawing must change the picture
    import importlib
    from mmengine.registry import init_default_scope
    importlib.import_module(f'{scope}.utils').register_all_modules(
        init_default_scope=False)
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry')
    dataset = registry.DATASETS.build(cfg.train_dataloader.dataset)
    item = dataset[0]
    raw = browse_dataset._to_rgb(item)
    drawn = load(files[0])
    if scope == 'mmpretrain':
        # UniversalVisualizer may rescale small images for the text
        assert drawn.shape[2] == 3 and drawn.size >= raw.size
    else:
        assert drawn.shape == raw.shape
    if scope == 'mmdet':
        # changed pixels lie on and around the ground-truth boxes
        sample = item['data_samples']
        boxes = sample.gt_instances.bboxes.tensor.numpy()
        changed = np.abs(drawn.astype(int) - raw.astype(int)).sum(-1) > 30
        assert changed.mean() > 0.005
        inside = np.zeros_like(changed)
        h, w = changed.shape
        for x1, y1, x2, y2 in boxes:
            inside[max(0, int(y1) - 12):min(h, int(y2) + 12),
                   max(0, int(x1) - 12):min(w, int(x2) + 12)] = True
        assert changed[inside].sum() / changed.sum() > 0.9
    elif scope == 'mmseg':
        # every labelled pixel is blended with its class colour
        gt = item['data_samples'].gt_sem_seg.data.numpy()[0]
        changed = np.abs(drawn.astype(int) - raw.astype(int)).sum(-1) > 10
        labelled = gt != 255
        assert changed[labelled].mean() > 0.5


def run_tool(args, cwd):
    return subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'browse_dataset.py'), *args],
        cwd=str(cwd), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_writes_images_with_progress(tmp_path):
    out = tmp_path / 'browse'
    proc = run_tool([osp.join(REPO, 'configs/toy/fpn_iformer_t_toy.py'),
                     '--not-show', '--output-dir', str(out),
                     '--show-number', '3'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(out.iterdir())) == 3
    assert '3/3' in proc.stdout and 'wrote 3 images' in proc.stdout


@pytest.mark.parametrize('args,needle', [
    (['configs/nope.py', '--not-show', '--output-dir', 'x'],
     'config file not found'),
    (['configs/toy/fpn_iformer_t_toy.py', '--not-show'],
     'add --output-dir'),
    (['configs/toy/fpn_iformer_t_toy.py', '--not-show', '--output-dir',
      'OUT', '--show-number', '0'], 'at least 1'),
])
@pytest.mark.slow
def test_bad_input(tmp_path, args, needle):
    args = [str(tmp_path / 'o') if a == 'OUT' else
            osp.join(REPO, a) if a.startswith('configs/') else a
            for a in args]
    proc = run_tool(args, tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
