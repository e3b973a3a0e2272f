"""tools/test.py behaves as the upstream tools/test.py of the config's
codebase: --tta, --show-dir with --interval, --out with --out-item,
--no-pin-memory and --amp, on the toy configs.

The flags' effect on the config is checked in this process (fast); the
slow subprocess runs (random-init checkpoints, nothing trained) combine
flags so that each codebase runs once or twice."""
import json
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest
import torch

from ._tools import config_the_runner_gets

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY = {
    'det': osp.join(ROOT, 'configs', 'toy', 'maskrcnn_iformer_t_toy.py'),
    'seg': osp.join(ROOT, 'configs', 'toy', 'fpn_iformer_t_toy.py'),
    'cls': osp.join(ROOT, 'configs', 'toy', 'iformer_t_toy_cls.py'),
}
LIBS = {'det': 'mmdet', 'seg': 'mmseg', 'cls': 'mmpretrain'}


def _need(kind):
    pytest.importorskip(LIBS[kind], reason='needs the OpenMMLab stack')


@pytest.fixture
def _cfg(tmp_path):
    """``_cfg(kind, *flags)``: the config the test runner is built from."""
    ckpt = str(tmp_path / 'unused.pth')
    torch.save(dict(state_dict={}), ckpt)

    def cfg(kind, *flags):
        _need(kind)
        return config_the_runner_gets(
            'test', [TOY[kind], ckpt, '--work-dir', str(tmp_path / 'w'),
                     *flags])
    return cfg


def make_checkpoint(kind, path):
    """A random-init whole-model checkpoint of a toy config."""
    from mmengine.config import Config
    from mmengine.registry import MODELS

    from iformer_mm.config import init_scope
    cfg = Config.fromfile(TOY[kind])
    cfg.model.backbone.init_cfg = None
    init_scope(cfg)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return str(path)


def run_test_tool(kind, ckpt, flags, cwd):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT, env.get('PYTHONPATH', '')])
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'test.py'), TOY[kind], ckpt,
         '--work-dir', 'work', *flags],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert 'Traceback' not in out
    return out


def images_in(folder):
    return sorted(f for f in os.listdir(folder)
                  if f.endswith(('.png', '.jpg')))


# --------------------------------------------------------------------------
# What each flag does to the config (in process)
# --------------------------------------------------------------------------
@pytest.mark.parametrize('kind', ['det', 'seg', 'cls'])
def test_show_dir_paints_every_image_by_default(kind, _cfg):
    vis = _cfg(kind, '--show-dir', 'v').default_hooks.visualization
    # The configs' hooks paint one image in 50 (mmdet/mmseg) or 5000
    # (mmpretrain); upstream's --interval defaults to 1.
    assert vis.interval == 1
    assert vis.get('draw', vis.get('enable')) is True
    vis = _cfg(kind, '--show-dir', 'v', '--interval', '3'
               ).default_hooks.visualization
    assert vis.interval == 3


def test_interval_without_show_changes_nothing(_cfg):
    cfg = _cfg('seg', '--interval', '3')
    assert cfg.default_hooks.visualization.get('draw', False) is False


@pytest.mark.parametrize('kind', ['det', 'seg', 'cls'])
def test_amp_and_no_pin_memory(kind, _cfg):
    cfg = _cfg(kind, '--cfg-options', 'test_dataloader.pin_memory=True')
    assert cfg.test_dataloader.pin_memory is True
    assert not cfg.get('test_cfg', {}).get('fp16', False)
    cfg = _cfg(kind, '--amp', '--no-pin-memory')
    assert cfg.test_dataloader.pin_memory is False
    assert cfg.test_cfg.fp16 is True


def test_cls_defaults_as_mmpretrain(_cfg):
    cfg = _cfg('cls', '--cfg-options', 'test_dataloader.pin_memory=None')
    assert cfg.test_dataloader.pin_memory is None  # the user's value stays
    cfg = _cfg('cls')
    assert cfg.test_dataloader.collate_fn.type in ('default_collate',
                                                   'pseudo_collate')


def test_cls_tta_is_mmpretrain_flip_average(_cfg):
    cfg = _cfg('cls', '--tta')
    assert cfg.model.type == 'mmpretrain.AverageClsScoreTTA'
    assert cfg.model.module.type == 'ImageClassifier'
    tta = cfg.test_dataloader.dataset.pipeline[-1]
    assert tta.type == 'TestTimeAug'
    assert [t['prob'] for t in tta.transforms[0]] == [1., 0.]
    assert tta.transforms[1][0]['type'] == 'PackInputs'


def test_seg_tta_uses_the_config(_cfg):
    cfg = _cfg('seg', '--tta')
    assert cfg.model.type == 'SegTTAModel'
    assert cfg.test_dataloader.dataset.pipeline[-1].type == 'TestTimeAug'


# --------------------------------------------------------------------------
# Real runs
# --------------------------------------------------------------------------
@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    return tmp_path_factory.mktemp('ckpts')


@pytest.mark.slow
def test_cls_show_dir_out_metrics_then_tta_amp(ckpts, tmp_path):
    _need('cls')
    ckpt = make_checkpoint('cls', ckpts / 'cls.pth')
    run_test_tool('cls', ckpt, ['--show-dir', 'vis', '--out', 'm.json',
                                '--out-item', 'metrics', '--no-pin-memory'],
                  tmp_path)
    val = osp.join(tmp_path, 'data', 'toy_imagenet', 'val')
    names = sorted(f for _, _, fs in os.walk(val) for f in fs)
    # Every test image, under <show_dir>/ as mmpretrain writes them.
    assert images_in(tmp_path / 'vis') == [f'{n}_0.png' for n in names]
    with open(tmp_path / 'm.json') as f:
        assert 'accuracy/top1' in json.load(f)
    out = run_test_tool('cls', ckpt, ['--tta', '--amp', '--out', 'p.pkl'],
                        tmp_path)
    with open(tmp_path / 'p.pkl', 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == len(names)
    # Merged from the flipped and unflipped views.
    assert 'flip' in preds[0] and 'pred_score' in preds[0]
    assert 'accuracy/top1' in out


@pytest.mark.slow
def test_seg_show_dir_all_images(ckpts, tmp_path):
    _need('seg')
    ckpt = make_checkpoint('seg', ckpts / 'seg.pth')
    run_test_tool('seg', ckpt, ['--show-dir', 'vis', '--out', 'pred_png'],
                  tmp_path)
    val = osp.join(tmp_path, 'data', 'toy_ade', 'images', 'validation')
    names = sorted(os.listdir(val))
    # mmseg writes through its visualizer's LocalVisBackend.
    painted = images_in(tmp_path / 'vis' / 'vis_data' / 'vis_image')
    assert len(painted) == len(names) and len(names) > 1
    assert painted == sorted(f'test_{n}_0.png' for n in names)
    assert len(images_in(tmp_path / 'pred_png')) == len(names)


@pytest.mark.slow
def test_det_show_dir_interval(ckpts, tmp_path):
    _need('det')
    ckpt = make_checkpoint('det', ckpts / 'det.pth')
    out = run_test_tool('det', ckpt, [
        '--show-dir', 'vis', '--interval', '2', '--cfg-options',
        'test_dataloader.dataset.indices=5'], tmp_path)
    # mmdet writes to <work_dir>/<timestamp>/<show_dir>.
    (stamp, ) = [d for d in os.listdir(tmp_path / 'work')
                 if osp.isdir(tmp_path / 'work' / d)]
    painted = images_in(tmp_path / 'work' / stamp / 'vis')
    with open(tmp_path / 'data' / 'toy_coco' / 'annotations' /
              'instances_val.json') as f:
        names = [im['file_name'] for im in json.load(f)['images']][:5]
    assert painted == sorted(names[0::2])  # images 0, 2, 4 of 5
    assert '--show-dir: 3 painted image(s)' in out
