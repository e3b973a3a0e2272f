"""Semantic FPN iFormer-T end to end on a generated ADE20K-style folder,
through tools/train.py and tools/test.py: train + mIoU evaluation, test of a
saved checkpoint with --out (PNG predictions). 4 iterations of 4 crops of
128 px."""
import os
import os.path as osp
import subprocess
import sys

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY = osp.join(ROOT, 'configs', 'toy', 'fpn_iformer_t_toy.py')


def run_tool(args, cwd, timeout=900):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT, env.get('PYTHONPATH', '')])
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


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
    ckpt = torch.load(tmp_path / 'work' / 'iter_4.pth', map_location='cpu',
                      weights_only=False)
    assert ckpt['meta']['iter'] == 4

    out = run_tool([
        sys.executable, osp.join(ROOT, 'tools', 'test.py'), TOY,
        str(tmp_path / 'work' / 'iter_4.pth'), '--work-dir', 'test_work',
        '--out', 'preds', '--cfg-options',
        'test_dataloader.dataset.indices=2'], cwd=tmp_path)
    assert 'mIoU:' in out
    pngs = sorted(p.name for p in (tmp_path / 'preds').glob('*.png'))
    assert len(pngs) == 2
