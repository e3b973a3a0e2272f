"""mmdet's own tools/train.py and ``mim train iformer_mm`` run the toy Mask
R-CNN config exactly as tools/train.py does: the same final weights, bit
for bit, and an interrupted run resumed with ``--resume`` continues from its
newest checkpoint to those same weights instead of replaying the epoch.

(``mim train mmdet`` cannot start with onedl-mim 0.5.1: it looks for mmdet's
tools beside the first file of mmdet's wheel RECORD, the dist-info folder.)

One epoch of 16 iterations, a checkpoint every 8; each run in its own
process, as a user starts them (about a minute each on 2 cores).
"""
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch

from iformer_mm.engine.cli import upstream_tool

from ._tools import ROOT

pytestmark = pytest.mark.slow

TOY = osp.join(ROOT, 'configs', 'toy', 'maskrcnn_iformer_t_toy.py')


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """A config of one epoch that stops before iteration ``STOP_AT_ITER``
    (an environment variable) when it is set, as a crash would."""
    ws = tmp_path_factory.mktemp('upstream')
    (ws / 'stop_hook.py').write_text(textwrap.dedent('''
        import os
        from mmengine.hooks import Hook
        from mmengine.registry import HOOKS

        @HOOKS.register_module()
        class StopAtIter(Hook):
            def before_train_iter(self, runner, batch_idx, data_batch=None):
                if runner.iter == int(os.environ.get('STOP_AT_ITER', -1)):
                    raise RuntimeError(f'stopped at {runner.iter}')
        '''))
    (ws / 'one_epoch.py').write_text(textwrap.dedent(f'''
        _base_ = [{TOY!r}]
        custom_imports = dict(imports=['iformer_mm', 'stop_hook'],
                              allow_failed_imports=False)
        custom_hooks = [dict(type='StopAtIter')]
        train_cfg = dict(max_epochs=1, val_interval=1)
        default_hooks = dict(checkpoint=dict(by_epoch=False, interval=8,
                                             max_keep_ckpts=-1))
        '''))
    return ws


def _run(ws, args, **env):
    # the installed package (mim finds it through its metadata, which a
    # source tree on PYTHONPATH would shadow); the workspace for stop_hook
    full = dict(os.environ, PYTHONPATH=str(ws), **env)
    proc = subprocess.run(args, cwd=ws, env=full, capture_output=True,
                          text=True, timeout=1200)
    return proc.returncode, proc.stdout + proc.stderr


def _weights(work):
    ckpt = torch.load(str(work / 'iter_16.pth'), weights_only=False)
    assert ckpt['meta']['iter'] == 16
    return ckpt['state_dict']


def _assert_same(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def test_upstream_tools_give_the_same_run(workspace):
    ws = workspace
    mmdet_train = [sys.executable, upstream_tool('mmdet', 'train'),
                   'one_epoch.py']
    rc, out = _run(ws, [sys.executable, osp.join(ROOT, 'tools', 'train.py'),
                        'one_epoch.py', '--work-dir', 'ours'])
    assert rc == 0, out[-3000:]
    ours = _weights(ws / 'ours')
    rc, out = _run(ws, mmdet_train + ['--work-dir', 'mmdet'])
    assert rc == 0, out[-3000:]
    _assert_same(ours, _weights(ws / 'mmdet'))
    rc, out = _run(ws, ['mim', 'train', 'iformer_mm', 'one_epoch.py',
                        '--work-dir', 'mim'])
    assert rc == 0, out[-3000:]
    _assert_same(ours, _weights(ws / 'mim'))
    # interrupted after the checkpoint of iteration 8, then --resume
    rc, out = _run(ws, mmdet_train + ['--work-dir', 'resumed'],
                   STOP_AT_ITER='12')
    assert rc != 0 and 'stopped at 12' in out
    assert (ws / 'resumed' / 'iter_8.pth').exists()
    assert not (ws / 'resumed' / 'iter_16.pth').exists()
    rc, out = _run(ws, mmdet_train + ['--work-dir', 'resumed', '--resume'])
    assert rc == 0, out[-3000:]
    assert 'Resuming epoch 1 after its batch 8' in out
    _assert_same(ours, _weights(ws / 'resumed'))
