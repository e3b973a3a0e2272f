"""Mask R-CNN iFormer-T end to end on generated COCO-format data, through
tools/train.py, tools/test.py and tools/dist_train.sh as a user calls them:
train + COCO evaluation, resume after the first checkpoint, test of a saved
checkpoint with --out, and a 2-process gloo run on CPU.

Small on purpose: 4 training images of 128 px, 2 per batch, 2 epochs."""
import os.path as osp
import pickle
import shutil
import socket
import sys

import pytest
import torch

from iformer_mm.compat import safe_load

from ._tools import ROOT, run_tool

pytestmark = pytest.mark.slow

TOY = osp.join(ROOT, 'configs', 'toy', 'maskrcnn_iformer_t_toy.py')
SMALL = [
    'train_dataloader.dataset.indices=4',
    'val_dataloader.dataset.indices=2',
    'test_dataloader.dataset.indices=2',
    'default_hooks.logger.interval=1',
    'default_hooks.checkpoint.interval=1',
    'default_hooks.checkpoint.max_keep_ckpts=3',
]

PROBE = '''
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class ResumeProbeHook(Hook):
    """Records the state the run starts training from."""

    def __init__(self, out):
        self.out = out

    def before_train(self, runner):
        torch.save(dict(iter=runner.iter, epoch=runner.epoch,
                        optimizer=runner.optim_wrapper.state_dict()),
                   self.out)
'''


def load(path):
    return safe_load(path)  # what Runner checkpoints need, nothing more


def assert_same_optimizer_state(a, b):
    assert a['param_groups'] == b['param_groups']
    assert a['state'].keys() == b['state'].keys() and a['state']
    for key in a['state']:
        for name, value in a['state'][key].items():
            other = b['state'][key][name]
            if torch.is_tensor(value):
                assert torch.equal(value, other), (key, name)
            else:
                assert value == other, (key, name)


def adam_steps(optimizer_state):
    return {float(s['step']) for s in optimizer_state['state'].values()}


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """A user's directory with a config that inherits the toy config and
    adds a hook recording the state training starts from."""
    ws = tmp_path_factory.mktemp('det')
    (ws / 'resume_probe.py').write_text(PROBE)
    # Besides the epoch checkpoints, one mid-epoch: after iteration 3 (the
    # first batch of epoch 2).
    (ws / 'probe_cfg.py').write_text(
        f"_base_ = {TOY!r}\n"
        "custom_imports = dict(imports=['iformer_mm', 'resume_probe'],\n"
        "                      allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='ResumeProbeHook', out='probe.pt'),\n"
        "                dict(type='SafeCheckpointHook', by_epoch=False,\n"
        "                     interval=3, save_last=False)]\n")
    return ws


@pytest.fixture(scope='module')
def trained(workspace):
    """2 epochs of 2 iterations, COCO evaluation at the end."""
    out = run_tool([
        sys.executable, osp.join(ROOT, 'tools', 'train.py'), 'probe_cfg.py',
        '--work-dir', 'work', '--cfg-options', 'train_cfg.max_epochs=2',
        'train_cfg.val_interval=2', *SMALL], cwd=workspace)
    return workspace, out


def test_train_and_coco_evaluation(trained):
    ws, out = trained
    assert (ws / 'data' / 'toy_coco' / 'annotations' /
            'instances_train.json').is_file()
    # COCO bbox and segm AP, as mmdet reports them
    assert 'Evaluating bbox...' in out and 'Evaluating segm...' in out
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95' in out
    assert 'coco/bbox_mAP:' in out and 'coco/segm_mAP:' in out
    for epoch in (1, 2):
        ckpt = load(ws / 'work' / f'epoch_{epoch}.pth')
        assert ckpt['meta']['epoch'] == epoch
        assert ckpt['meta']['iter'] == 2 * epoch
    assert load(ws / 'probe.pt')['iter'] == 0


def test_resume_after_first_checkpoint(trained):
    ws, _ = trained
    # The same run stopped right after its first checkpoint.
    work = ws / 'stopped'
    work.mkdir()
    shutil.copy(ws / 'work' / 'epoch_1.pth', work / 'epoch_1.pth')
    (work / 'last_checkpoint').write_text(str(work / 'epoch_1.pth'))
    (ws / 'probe.pt').unlink()
    out = run_tool([
        sys.executable, osp.join(ROOT, 'tools', 'train.py'), 'probe_cfg.py',
        '--work-dir', str(work), '--resume', '--cfg-options',
        'train_cfg.max_epochs=2', 'train_cfg.val_interval=2', *SMALL],
        cwd=ws)
    assert 'resumed epoch: 1, iter: 2' in out
    ckpt = load(work / 'epoch_1.pth')
    probe = load(ws / 'probe.pt')
    assert (probe['epoch'], probe['iter']) == (1, 2)
    assert_same_optimizer_state(probe['optimizer'], ckpt['optimizer'])
    assert adam_steps(ckpt['optimizer']) == {2.0}
    final = load(work / 'epoch_2.pth')
    assert (final['meta']['epoch'], final['meta']['iter']) == (2, 4)
    # AdamW kept counting from the restored state: 2 + 2 steps.
    assert adam_steps(final['optimizer']) == {4.0}
    assert 'coco/segm_mAP:' in out


def test_resume_mid_epoch_skips_trained_batches(trained):
    """Resumed from the checkpoint after the first batch of epoch 2, the
    run trains only the second batch (mmengine alone replays the epoch)
    and ends with the uninterrupted run's weights, bitwise."""
    ws, _ = trained
    work = ws / 'mid_epoch'
    work.mkdir()
    shutil.copy(ws / 'work' / 'iter_3.pth', work / 'iter_3.pth')
    out = run_tool([
        sys.executable, osp.join(ROOT, 'tools', 'train.py'), 'probe_cfg.py',
        '--work-dir', str(work), '--resume', str(work / 'iter_3.pth'),
        '--no-validate', '--cfg-options', 'train_cfg.max_epochs=2', *SMALL],
        cwd=ws)
    assert 'resumed epoch: 1, iter: 3' in out
    assert 'skipping the 1 batches already trained' in out
    trained_iters = [ln for ln in out.splitlines() if 'Epoch(train)' in ln]
    assert len(trained_iters) == 1 and '[2][2/2]' in trained_iters[0]
    final = load(work / 'epoch_2.pth')
    reference = load(ws / 'work' / 'epoch_2.pth')
    assert final['meta']['iter'] == 4 and adam_steps(final['optimizer']) \
        == {4.0}
    for key, value in reference['state_dict'].items():
        assert torch.equal(final['state_dict'][key], value), key


def test_test_tool_evaluates_saved_checkpoint(trained):
    ws, _ = trained
    out = run_tool([
        sys.executable, osp.join(ROOT, 'tools', 'test.py'), TOY,
        str(ws / 'work' / 'epoch_2.pth'), '--work-dir', 'test_work',
        '--out', 'preds.pkl', '--cfg-options',
        'test_dataloader.dataset.indices=2'], cwd=ws)
    assert 'coco/bbox_mAP:' in out and 'coco/segm_mAP:' in out
    with open(ws / 'preds.pkl', 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 2
    assert {'bboxes', 'scores', 'labels', 'masks'} <= set(
        preds[0]['pred_instances'])


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_gloo_training(workspace):
    out = run_tool([
        'bash', osp.join(ROOT, 'tools', 'dist_train.sh'), TOY, '2',
        '--work-dir', 'dist_work', '--cfg-options', 'train_cfg.max_epochs=1',
        'train_cfg.val_interval=1', *SMALL],
        cwd=workspace, env=dict(PORT=str(_free_port()),
                                MASTER_ADDR='127.0.0.1',
                                # No interpreter with torch on PATH: the
                                # script must run $PYTHON.
                                PATH='/usr/bin:/bin', PYTHON=sys.executable))
    assert 'Distributed training: True' in out
    assert 'GPU number: 2' in out  # mmengine's name for the world size
    assert 'coco/segm_mAP:' in out
    ckpt = load(workspace / 'dist_work' / 'epoch_1.pth')
    # 4 images over 2 processes x 2 per batch: 1 iteration per epoch.
    assert ckpt['meta']['iter'] == 1
