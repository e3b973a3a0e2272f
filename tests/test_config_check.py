"""Config mistakes fail at build time, naming the key and the closest valid
one (iformer_mm.engine.config_check), and valid configs pass untouched."""
import glob
import os.path as osp

import pytest

from iformer_mm.errors import ConfigError

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY = {
    'det': osp.join(ROOT, 'configs', 'toy', 'maskrcnn_iformer_t_toy.py'),
    'seg': osp.join(ROOT, 'configs', 'toy', 'fpn_iformer_t_toy.py'),
    'cls': osp.join(ROOT, 'configs', 'toy', 'iformer_t_toy_cls.py'),
}
ALL_CONFIGS = sorted(
    p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                         recursive=True)
    if '_base_' not in p)

pytest.importorskip('mmdet', reason='needs the OpenMMLab stack')
pytest.importorskip('mmseg', reason='needs the OpenMMLab stack')
pytest.importorskip('mmpretrain', reason='needs the OpenMMLab stack')

from mmengine.config import Config  # noqa: E402

from iformer_mm.engine.config_check import (accepted_keys,  # noqa: E402
                                            check_config, check_iformer)


def load(kind, **options):
    cfg = Config.fromfile(TOY[kind])
    if options:
        cfg.merge_from_dict(options)
    return cfg


def fails(cfg, *needles):
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    msg = str(info.value)
    assert '\n' not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# --------------------------------------------------------------------------
# Valid configs: no error, no warning (no false positives)
# --------------------------------------------------------------------------
@pytest.mark.parametrize('path', ALL_CONFIGS,
                         ids=[osp.relpath(p, ROOT) for p in ALL_CONFIGS])
def test_shipped_configs_pass(path):
    assert check_config(Config.fromfile(path)) == []


def test_kwargs_that_go_elsewhere_are_not_judged():
    from mmengine.hooks import EMAHook
    # EMAHook keeps **kwargs for the EMA model it builds later: unknown.
    assert accepted_keys(EMAHook) is None
    cfg = load('det', custom_hooks=[dict(type='EMAHook', momentum=1e-4)])
    assert check_config(cfg) == []


# --------------------------------------------------------------------------
# Hooks, loops, model: unknown keys and types
# --------------------------------------------------------------------------
def test_checkpoint_hook_kwargs_followed_to_save_checkpoint():
    from mmengine.hooks import CheckpointHook
    keys = accepted_keys(CheckpointHook)
    assert {'interval', 'max_keep_ckpts', 'save_best'} <= keys
    # Runner.save_checkpoint takes nothing the hook does not pass itself.
    assert 'intervall' not in keys and 'filename' not in keys


def test_hook_key_typo():
    fails(load('det', **{'default_hooks.checkpoint.intervall': 1}),
          'default_hooks.checkpoint', "'intervall'", 'CheckpointHook',
          "did you mean 'interval'")


def test_cls_visualization_hook_kwargs_are_draw_arguments():
    assert check_config(load('cls', **{
        'default_hooks.visualization.rescale_factor': 2.0})) == []
    fails(load('cls', **{'default_hooks.visualization.rescale_facter': 2.}),
          "'rescale_facter'", "did you mean 'rescale_factor'")


def test_custom_hook_unknown_type():
    fails(load('seg', custom_hooks=[dict(type='EMAHok')]),
          'custom_hooks[0]', "'EMAHok'", "did you mean 'EMAHook'")


@pytest.mark.parametrize('kind,key,typo,right', [
    ('det', 'train_cfg', 'max_epoch', 'max_epochs'),
    ('seg', 'train_cfg', 'val_intervall', 'val_interval'),
    ('cls', 'test_cfg', 'fp61', 'fp16'),
])
def test_loop_key_typo(kind, key, typo, right):
    fails(load(kind, **{f'{key}.{typo}': 1}), key, repr(typo),
          f'did you mean {right!r}')


def test_backbone_key_typo():
    fails(load('seg', **{'model.backbone.atention': 'hybrid'}),
          'model.backbone', "'atention'", 'IFormer',
          "did you mean 'attention'")


def test_model_and_neck_key_typos_and_types():
    fails(load('det', **{'model.nek': None}), "'nek'", "did you mean 'neck'")
    fails(load('det', **{'model.neck.type': 'FPNN'}), 'model.neck',
          "'FPNN'", "did you mean 'FPN'")
    fails(load('det', **{'model.backbone.type': 'IFormr'}),
          "did you mean 'IFormer'")


# --------------------------------------------------------------------------
# Top-level keys: a warning, not an error
# --------------------------------------------------------------------------
def test_misspelt_top_level_key_is_a_warning():
    cfg = load('det')
    cfg.trian_cfg = dict(max_epochs=1)
    cfg.my_own_variable = 3  # configs may define their own variables
    warnings = check_config(cfg)
    assert len(warnings) == 1
    assert "'trian_cfg'" in warnings[0] and \
        "did you mean 'train_cfg'" in warnings[0]


# --------------------------------------------------------------------------
# The iFormer backbone
# --------------------------------------------------------------------------
def test_attention_names():
    for ok in ('global', 'window', 'hybrid', 'authors'):
        check_iformer(dict(arch='m', attention=ok))
    check_iformer(dict(arch='m', attention=['global', 'global', 'hybrid',
                                            'global']))
    with pytest.raises(ConfigError) as info:
        check_iformer(dict(arch='m', attention='hybird'))
    for name in ('global', 'window', 'hybrid', 'authors'):
        assert repr(name) in str(info.value)
    assert "did you mean 'hybrid'" in str(info.value)
    with pytest.raises(ConfigError, match='names a whole network'):
        check_iformer(dict(arch='m', attention=['authors'] * 4))


@pytest.mark.parametrize('bad', [(3, 1), (0, 1, 1, 2), (2, -3)])
def test_out_indices_not_reordered(bad):
    with pytest.raises(ConfigError, match='increasing order') as info:
        check_iformer(dict(arch='t', out_indices=bad))
    fixed = tuple(sorted({i % 4 for i in bad}))
    assert f'write {fixed}' in str(info.value)


def test_out_indices_channels():
    from iformer_mm.models.backbones.iformer import ARCH_ZOO
    dims = ARCH_ZOO['s']['dims']
    assert check_iformer(dict(arch='s', out_indices=(1, -1))) == \
        (dims[1], dims[3])
    with pytest.raises(ConfigError, match='subset'):
        check_iformer(dict(arch='s', out_indices=(4, )))
    with pytest.raises(ConfigError, match="did you mean 'l2'"):
        check_iformer(dict(arch='l22'))


def test_out_indices_that_do_not_fit_the_neck():
    from iformer_mm.models.backbones.iformer import ARCH_ZOO
    dims = ARCH_ZOO['t']['dims']
    msg = fails(load('det', **{'model.backbone.out_indices': [1, 2, 3]}),
                'model.neck.in_channels', str(list(dims[1:])))
    assert 'AssertionError' not in msg
    # ... and fixed together, it passes.
    assert check_config(load('det', **{
        'model.backbone.out_indices': [1, 2, 3],
        'model.neck.in_channels': list(dims[1:]),
        'model.neck.num_outs': 5})) == []


def test_cls_head_channels():
    fails(load('cls', **{'model.head.in_channels': 17}),
          'model.head.in_channels=17')
