"""Semantic FPN iFormer-T end to end on a generated ADE20K-style folder,
through tools/train.py and tools/test.py: train + mIoU evaluation, test of a
saved checkpoint with --out (PNG predictions). 4 iterations of 4 crops of
128 px."""
import os.path as osp
import sys

from iformer_mm.compat import safe_load

from ._tools import ROOT, run_tool

TOY = osp.join(ROOT, 'configs', 'toy', 'fpn_iformer_t_toy.py')


def test_train_miou_and_test_tool(tmp_path):
    out = run_tool([
        sys.executable, osp.join(ROOT, 'tools', 'train.py'), TOY,
        '--work-dir', 'work', '--cfg-options', 'train_cfg.max_iters=4',
        'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=2',
        'default_hooks.logger.interval=1',
        'val_dataloader.dataset.indices=2'], cwd=tmp_path)
    assert (tmp_path / 'data' / 'toy_ade' / 'images' / 'training').is_dir()
    # mmseg's per-class IoU table and the summary metrics
    assert 'per class results:' in out
    assert 'mIoU:' in out and 'aAcc:' in out
    ckpt = safe_load(tmp_path / 'work' / 'iter_4.pth')
    assert ckpt['meta']['iter'] == 4

    out = run_tool([
        sys.executable, osp.join(ROOT, 'tools', 'test.py'), TOY,
        str(tmp_path / 'work' / 'iter_4.pth'), '--work-dir', 'test_work',
        '--out', 'preds', '--cfg-options',
        'test_dataloader.dataset.indices=2'], cwd=tmp_path)
    assert 'mIoU:' in out
    pngs = sorted(p.name for p in (tmp_path / 'preds').glob('*.png'))
    assert len(pngs) == 2
