"""iFormer-T classification end to end on generated ImageNet-style class
folders, through tools/train.py and tools/test.py: the toy config's whole
schedule (60 short epochs of 72 images of 64 px, with the paper's
augmentations, mixup/cutmix and label smoothing) learns, and tools/test.py
evaluates a saved checkpoint with --out and beats the same model
untrained."""
import os.path as osp
import pickle
import re
import sys

import torch

from iformer_mm.compat import safe_load

from ._tools import ROOT, run_tool

TOY = osp.join(ROOT, 'configs', 'toy', 'iformer_t_toy_cls.py')
#: 6 classes: chance is 16.7%. Measured at epoch 60: 54% top-1 (Intel
#: Xeon VM); the threshold leaves room for other CPUs' kernels.
MIN_TOP1 = 35.0


def _top1(text):
    found = re.findall(r'accuracy/top1: ([0-9.]+)', text)
    assert found, text[-3000:]
    return float(found[-1])


def test_train_learns_and_test_tool(tmp_path):
    out = run_tool([
        sys.executable, osp.join(ROOT, 'tools', 'train.py'), TOY,
        '--work-dir', 'work', '--cfg-options',
        'default_hooks.logger.interval=5'], cwd=tmp_path, timeout=3600)
    assert (tmp_path / 'data' / 'toy_imagenet' / 'train' / 'circle').is_dir()
    assert 'accuracy/top5:' in out
    trained = _top1(out)
    assert trained >= MIN_TOP1, out[-3000:]
    ckpt = safe_load(tmp_path / 'work' / 'epoch_60.pth')
    assert ckpt['meta']['epoch'] == 60

    out = run_tool([
        sys.executable, osp.join(ROOT, 'tools', 'test.py'), TOY,
        str(tmp_path / 'work' / 'epoch_60.pth'), '--work-dir', 'test_work',
        '--out', 'preds.pkl'], cwd=tmp_path)
    assert abs(_top1(out) - trained) < 0.01
    with open(tmp_path / 'preds.pkl', 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 24
    assert preds[0]['pred_score'].shape[-1] == 6

    from mmengine.runner import set_random_seed

    import iformer_mm
    set_random_seed(0)
    model = iformer_mm.get_model(TOY)
    torch.save(dict(state_dict=model.state_dict(), meta={}),
               tmp_path / 'untrained.pth')
    out = run_tool([
        sys.executable, osp.join(ROOT, 'tools', 'test.py'), TOY,
        str(tmp_path / 'untrained.pth'), '--work-dir', 'blank_work'],
        cwd=tmp_path)
    assert trained >= _top1(out) + 10, (trained, _top1(out))
