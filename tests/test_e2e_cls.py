"""iFormer-T classification end to end on generated ImageNet-style class
folders, through tools/train.py and tools/test.py: train (with the paper's
augmentations, mixup/cutmix and label smoothing) + accuracy evaluation, and
test of a saved checkpoint with --out. 24 images of 64 px, 1 epoch."""
import os.path as osp
import pickle
import sys

from iformer_mm.compat import safe_load

from ._tools import ROOT, run_tool

TOY = osp.join(ROOT, 'configs', 'toy', 'iformer_t_toy_cls.py')


def test_train_accuracy_and_test_tool(tmp_path):
    out = run_tool([
        sys.executable, osp.join(ROOT, 'tools', 'train.py'), TOY,
        '--work-dir', 'work', '--cfg-options', 'train_cfg.max_epochs=1',
        'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1',
        'default_hooks.logger.interval=1',
        'train_dataloader.dataset.indices=24',
        'val_dataloader.dataset.indices=12'], cwd=tmp_path)
    assert (tmp_path / 'data' / 'toy_imagenet' / 'train' / 'circle').is_dir()
    assert 'accuracy/top1:' in out and 'accuracy/top5:' in out
    ckpt = safe_load(tmp_path / 'work' / 'epoch_1.pth')
    assert ckpt['meta']['epoch'] == 1

    out = run_tool([
        sys.executable, osp.join(ROOT, 'tools', 'test.py'), TOY,
        str(tmp_path / 'work' / 'epoch_1.pth'), '--work-dir', 'test_work',
        '--out', 'preds.pkl', '--cfg-options',
        'test_dataloader.dataset.indices=12'], cwd=tmp_path)
    assert 'accuracy/top1:' in out
    with open(tmp_path / 'preds.pkl', 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 12
    assert preds[0]['pred_score'].shape[-1] == 6
