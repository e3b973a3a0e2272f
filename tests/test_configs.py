"""Every config parses and builds its model; dense configs build their data
pipelines; the real configs carry the issue's recipe; missing data and
machines without CUDA are handled."""
import glob
import os
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import iformer_mm  # noqa: F401  (registers IFormer, toy datasets, wrapper)
from iformer_mm.config import scope_of
from iformer_mm.engine import adapt_to_machine

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ARCHS = ('t', 's', 'm', 'l', 'l2')
# The pre-OpenMMLab-2.0 names: one-line aliases of the new files (their
# equality is tested in test_authors_recipes.py), so not built twice here.
ALIASES = {f'maskrcnn_iformer_{a}_coco.py' for a in ARCHS} | \
    {f'fpn_iformer_{a}_ade20k_40k.py' for a in ARCHS}
CONFIGS = sorted(
    [p for p in glob.glob(osp.join(ROOT, 'configs', '*.py'))
     if osp.basename(p) not in ALIASES] +
    glob.glob(osp.join(ROOT, 'configs', 'toy', '*.py')))
DIMS = dict(t=(32, 64, 128, 256), s=(32, 64, 176, 320), m=(48, 96, 192, 384),
            l=(48, 96, 256, 384), l2=(64, 128, 256, 512),
            h=(96, 192, 384, 768))
RELEASE = 'https://github.com/ChuanyangZheng/iFormer/releases/download/v0.9/'


def _name(path):
    return osp.relpath(path, osp.join(ROOT, 'configs'))


def _load(name):
    return Config.fromfile(osp.join(ROOT, 'configs', name))


def _scope_modules(scope):
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS, TRANSFORMS
        from mmdet.utils import register_all_modules
    elif scope == 'mmseg':
        from mmseg.registry import MODELS, TRANSFORMS
        from mmseg.utils import register_all_modules
    else:
        from mmpretrain.registry import MODELS, TRANSFORMS
        from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return MODELS, TRANSFORMS


def det_config(arch):
    return f'mask-rcnn_iformer-{arch}_fpn_1x_coco.py'


def seg_config(arch):
    return f'fpn_iformer-{arch}_8xb4-40k_ade20k-512x512.py'


def _zoo_model_params():
    """docs/model_zoo.md: config file name -> 'Model params (M)' cell."""
    import re
    out, header = {}, None
    with open(osp.join(ROOT, 'docs', 'model_zoo.md'), encoding='utf-8') as f:
        for line in f:
            if not line.startswith('|'):
                header = None
                continue
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if header is None:
                header = cells
                continue
            row = dict(zip(header, cells))
            config = re.search(r'\(\.\./configs/([^)]+)\)',
                               row.get('Config', ''))
            if 'Model params (M)' in row and config:
                out[config.group(1)] = float(row['Model params (M)'])
    return out


def test_model_zoo_lists_every_dense_model_size():
    documented = _zoo_model_params()
    assert set(documented) == {det_config(a) for a in ARCHS} | \
        {seg_config(a) for a in ARCHS}


def test_every_variant_has_its_configs():
    names = {_name(p) for p in CONFIGS}
    for arch in ARCHS:
        assert det_config(arch) in names and seg_config(arch) in names
        assert osp.isfile(osp.join(ROOT, 'configs',
                                   f'maskrcnn_iformer_{arch}_coco.py'))
        assert osp.isfile(osp.join(ROOT, 'configs',
                                   f'fpn_iformer_{arch}_ade20k_40k.py'))
    for arch in ('m', 'l', 'l2'):
        assert f'mask-rcnn_iformer-{arch}-cc-hybrid_fpn_1x_coco.py' in names
        assert f'fpn_iformer-{arch}-cc-hybrid_8xb4-40k_ade20k-512x512.py' \
            in names
    for arch in ('t', 's', 'm', 'l', 'l2', 'h'):
        assert f'iformer_{arch}_in1k.py' in names
    for toy in ('maskrcnn_iformer_t_toy.py', 'fpn_iformer_t_toy.py',
                'iformer_t_toy_cls.py'):
        assert osp.join('toy', toy) in names


@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_config_builds_model_and_pipelines(path):
    cfg = Config.fromfile(path)
    scope = scope_of(cfg)
    models, transforms = _scope_modules(scope)
    model_cfg = cfg.model.copy()
    if cfg.get('data_preprocessor') and 'data_preprocessor' not in model_cfg:
        model_cfg.data_preprocessor = cfg.data_preprocessor
    model = models.build(model_cfg)
    backbone = model.backbone
    assert type(backbone).__name__ == 'IFormer'
    assert backbone.dims == DIMS[cfg.model.backbone.arch]
    documented = _zoo_model_params().get(_name(path))
    if documented is not None:  # docs/model_zoo.md, whole-model column
        count = sum(p.numel() for p in model.parameters())
        assert documented == round(count / 1e6, 1), (documented, count)
    if scope in ('mmdet', 'mmseg'):
        assert list(cfg.model.neck.in_channels) == list(backbone.dims)
        from mmengine.dataset import Compose
        for split in ('train', 'val', 'test'):
            ds = cfg[f'{split}_dataloader'].dataset
            pipeline = Compose(ds.pipeline)
            assert len(pipeline.transforms) == len(ds.pipeline)
    else:
        assert cfg.model.head.in_channels == backbone.dims[-1]
    del model


def _check_layout(bb, arch):
    # M, L, L2: the authors' released network (their COCO/ADE20K weights
    # need it); T, S (no released dense weights): the paper's Table 16.
    if arch in ('m', 'l', 'l2'):
        assert (bb.attention, bb.window_padding) == ('authors', 'zeros')
    else:
        assert bb.attention == 'hybrid'
        assert bb.get('window_padding', 'mask') == 'mask'
    assert (bb.window_size, bb.window_chunks) == (16, 16)
    assert bb.norm_eval is True
    assert bb.drop_path_rate == 0.0


@pytest.mark.parametrize('arch', ARCHS)
def test_maskrcnn_recipe(arch):
    cfg = _load(det_config(arch))
    bb = cfg.model.backbone
    _check_layout(bb, arch)
    expected = f'iFormer_{arch}_distill.pth' if arch in ('m', 'l', 'l2') \
        else f'iFormer_{arch}.pth'
    assert bb.init_cfg == dict(type='Pretrained',
                               checkpoint=RELEASE + expected)
    assert cfg.train_cfg.max_epochs == 12
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.by_epoch, warmup.end,
            warmup.start_factor) == ('LinearLR', False, 500, 1e-6)
    assert (steps.type, steps.milestones) == ('MultiStepLR', [8, 11])
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 2e-4, 0.05)
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.train_dataloader.dataset.pipeline[2].scale == (1333, 800)
    assert set(cfg.val_evaluator.metric) == {'bbox', 'segm'}


@pytest.mark.parametrize('arch', ARCHS)
def test_semantic_fpn_recipe(arch):
    cfg = _load(seg_config(arch))
    _check_layout(cfg.model.backbone, arch)
    assert cfg.train_cfg.max_iters == 40000
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 2e-4, 1e-4)
    (poly, ) = cfg.param_scheduler
    assert (poly.type, poly.power, poly.end, poly.eta_min) == \
        ('PolyLR', 0.9, 40000, 1e-6)
    assert cfg.train_dataloader.batch_size == 4
    assert cfg.model.decode_head.num_classes == 150
    assert tuple(cfg.crop_size) == (512, 512)
    assert cfg.model.backbone.init_cfg.checkpoint.startswith(RELEASE)


@pytest.mark.parametrize('arch', ['t', 's', 'm', 'l', 'l2', 'h'])
def test_imagenet_recipe(arch):
    cfg = _load(f'iformer_{arch}_in1k.py')
    opt = cfg.optim_wrapper.optimizer
    lr, batch = (8e-3, 8192) if arch == 'h' else (4e-3, 4096)
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', lr, 0.05)
    assert cfg.auto_scale_lr.base_batch_size == batch
    assert cfg.train_cfg.max_epochs == 300
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.end) == ('LinearLR', 20)
    assert cosine.type == 'CosineAnnealingLR'
    assert cfg.model.train_cfg.augments == [
        dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]
    assert cfg.model.head.loss == dict(
        type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')
    randaug = [t for t in cfg.train_pipeline if t.type == 'RandAugment'][0]
    assert (randaug.magnitude_level, randaug.magnitude_std) == (9, 0.5)
    erasing = [t for t in cfg.train_pipeline if t.type == 'RandomErasing'][0]
    assert erasing.erase_prob == 0.25
    drop_path = dict(t=0.0, s=0.0, m=0.0, l=0.1, l2=0.1, h=0.6)[arch]
    assert cfg.model.backbone.drop_path_rate == drop_path


def test_syncbn_falls_back_to_bn_without_cuda():
    cfg = _load('fpn_iformer_t_ade20k_40k.py')
    cfg.launcher = 'pytorch'
    notes = adapt_to_machine(cfg, cuda=False)
    assert notes
    models, _ = _scope_modules('mmseg')
    model = models.build(cfg.model)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm)
                   for m in model.modules())
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == 'DeviceAwareDDP'
    assert cfg.get('sync_bn') is None
    # On a GPU machine the multi-GPU config is left as written.
    gpu_cfg = _load('fpn_iformer_t_ade20k_40k.py')
    assert adapt_to_machine(gpu_cfg, cuda=True) == []
    assert gpu_cfg.model.decode_head.norm_cfg.type == 'SyncBN'


@pytest.mark.parametrize('name,anchor', [
    ('maskrcnn_iformer_t_coco.py', '#coco-data-layout'),
    ('fpn_iformer_t_ade20k_40k.py', '#ade20k-data-layout'),
    ('iformer_t_in1k.py', '#imagenet-data-layout'),
])
def test_missing_dataset_is_a_clear_error(name, anchor, tmp_path, capsys,
                                          monkeypatch):
    from iformer_mm.engine.cli import train_main
    from iformer_mm.engine.errors_cli import run_tool
    monkeypatch.chdir(tmp_path)  # no data/ here
    code = run_tool(train_main, [osp.join(ROOT, 'configs', name),
                                 '--work-dir', str(tmp_path / 'work')],
                    prog='train.py')
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert 'docs/getting_started.md' + anchor in err
    assert 'Expected layout' in err and 'Traceback' not in err
    heading = anchor[1:].replace('-', ' ')
    with open(osp.join(ROOT, 'docs', 'getting_started.md')) as f:
        assert heading in f.read().lower()
    assert not os.path.exists(tmp_path / 'work' / 'epoch_1.pth')


def test_cpu_ddp_wrapper_keeps_the_users_settings():
    from iformer_mm.engine import adapt_to_machine
    cfg = Config(dict(
        model=dict(type='X'), launcher='pytorch',
        model_wrapper_cfg=dict(type='MMDistributedDataParallel',
                               find_unused_parameters=True,
                               broadcast_buffers=True,
                               bucket_cap_mb=7)))
    adapt_to_machine(cfg, cuda=False)
    wrapper = cfg.model_wrapper_cfg
    assert wrapper.type == 'DeviceAwareDDP'
    assert wrapper.find_unused_parameters is True
    assert wrapper.broadcast_buffers is True and wrapper.bucket_cap_mb == 7


@pytest.mark.parametrize('launcher', ['pytorch', 'slurm', 'mpi'])
def test_every_distributed_launcher_gets_the_cpu_ddp_wrapper(launcher):
    """mmengine's launchers are 'none', 'pytorch', 'slurm' and 'mpi': each
    distributed one needs DDP without device ids on a CPU machine."""
    from iformer_mm.engine import adapt_to_machine
    cfg = Config(dict(model=dict(type='X'), launcher=launcher))
    notes = adapt_to_machine(cfg, cuda=False)
    assert cfg.model_wrapper_cfg.type == 'DeviceAwareDDP'
    # mmengine's own defaults for the DDP wrapper it would have built
    assert cfg.model_wrapper_cfg.broadcast_buffers is False
    assert cfg.model_wrapper_cfg.find_unused_parameters is False
    assert any('DDP' in n for n in notes)
    single = Config(dict(model=dict(type='X'), launcher='none'))
    adapt_to_machine(single, cuda=False)
    assert single.get('model_wrapper_cfg') is None


def test_make_resumable_understands_registry_scoped_names():
    """``mmengine.EpochBasedTrainLoop`` and ``mmengine.CheckpointHook`` are
    the same classes as the plain names: they get the atomic hook and the
    exactly-resuming loop too; other types are left alone."""
    from iformer_mm.engine import make_resumable
    cfg = Config(dict(
        train_cfg=dict(type='mmengine.EpochBasedTrainLoop', max_epochs=2),
        default_hooks=dict(
            checkpoint=dict(type='mmengine.CheckpointHook', interval=1),
            logger=dict(type='mmengine.LoggerHook')),
        custom_hooks=[dict(type='CheckpointHook', interval=3)]))
    notes = make_resumable(cfg)
    assert cfg.train_cfg.type == 'ResumableEpochBasedTrainLoop'
    assert cfg.train_cfg.max_epochs == 2
    assert cfg.default_hooks.checkpoint.type == 'SafeCheckpointHook'
    assert cfg.default_hooks.checkpoint.interval == 1
    assert cfg.default_hooks.logger.type == 'mmengine.LoggerHook'
    assert cfg.custom_hooks[0].type == 'SafeCheckpointHook'
    assert notes
    other = Config(dict(train_cfg=dict(type='mmpretrain.MyLoop')))
    make_resumable(other)
    assert other.train_cfg.type == 'mmpretrain.MyLoop'


def test_cpu_adaptation_counts_syncbn_and_keeps_a_chosen_backend():
    """The note counts the SyncBN layers it replaced (nested dicts and
    lists, both spellings); a backend the user chose is theirs, only the
    nccl default (no CPU support) becomes gloo."""
    from iformer_mm.engine import adapt_to_machine
    cfg = Config(dict(
        model=dict(type='X', backbone=dict(norm_cfg=dict(type='SyncBN')),
                   heads=[dict(norm_cfg=dict(type='MMSyncBN')),
                          dict(norm_cfg=dict(type='mmcv.SyncBN')),
                          dict(norm_cfg=dict(type='BN'))]),
        env_cfg=dict(dist_cfg=dict(backend='mpi'))))
    notes = adapt_to_machine(cfg, cuda=False)
    assert '3 SyncBN layer config(s) -> BN (no CUDA)' in notes
    assert [h.norm_cfg.type for h in cfg.model.heads] == ['BN'] * 3
    assert cfg.env_cfg.dist_cfg.backend == 'mpi'
    ucc = Config(dict(model=dict(type='X'),
                      env_cfg=dict(dist_cfg=dict(backend='ucc'))))
    adapt_to_machine(ucc, cuda=False)
    assert ucc.env_cfg.dist_cfg.backend == 'ucc'
    default = Config(dict(model=dict(type='X')))
    assert adapt_to_machine(default, cuda=False) == []
    assert default.env_cfg.dist_cfg.backend == 'gloo'
    nccl = Config(dict(model=dict(type='X'),
                       env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    adapt_to_machine(nccl, cuda=False)
    assert nccl.env_cfg.dist_cfg.backend == 'gloo'


def test_scope_of_names_the_codebases_it_runs():
    from iformer_mm.errors import ConfigError
    assert scope_of(Config(dict(default_scope='mmseg'))) == 'mmseg'
    for scope in (None, 'mmocr'):
        with pytest.raises(ConfigError) as err:
            scope_of(Config(dict(default_scope=scope)))
        assert repr(scope) in str(err.value)
        assert 'mmdet, mmseg, mmpretrain' in str(err.value)


def test_amp_falls_back_to_fp32_without_cuda():
    from iformer_mm.engine import adapt_to_machine
    cfg = Config(dict(model=dict(type='X'), optim_wrapper=dict(
        type='AmpOptimWrapper', loss_scale='dynamic', dtype='float16',
        optimizer=dict(type='SGD', lr=0.1), clip_grad=dict(max_norm=1.0))))
    notes = adapt_to_machine(cfg, cuda=False)
    assert cfg.optim_wrapper == dict(
        type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1),
        clip_grad=dict(max_norm=1.0))
    assert any('--amp ignored' in n for n in notes)
    gpu = Config(dict(model=dict(type='X'), optim_wrapper=dict(
        type='AmpOptimWrapper', loss_scale='dynamic')))
    adapt_to_machine(gpu, cuda=True)
    assert gpu.optim_wrapper.type == 'AmpOptimWrapper'


@pytest.mark.parametrize('by_epoch,loop', [
    (True, 'ResumableEpochBasedTrainLoop'),
    (False, 'ResumableIterBasedTrainLoop')])
def test_make_resumable_reads_mmengine_by_epoch_shorthand(by_epoch, loop):
    """``train_cfg=dict(by_epoch=..., max_...)`` without a type is
    mmengine's shorthand for its epoch / iteration loop."""
    from iformer_mm.engine import make_resumable
    cfg = Config(dict(train_cfg=dict(by_epoch=by_epoch, max_iters=6,
                                     val_interval=2)))
    make_resumable(cfg)
    assert cfg.train_cfg.type == loop
    assert 'by_epoch' not in cfg.train_cfg
    assert cfg.train_cfg.max_iters == 6 and cfg.train_cfg.val_interval == 2


def test_the_runner_logs_what_it_changed(tmp_path):
    """What the runner changed in the config (adapt_to_machine,
    make_resumable) is said in the run's log, one line each, so a user sees
    why the run differs from the config."""
    from mmengine.registry import RUNNERS
    path = osp.join(ROOT, 'configs', 'toy', 'iformer_t_toy_cls.py')
    cfg = Config.fromfile(path)
    cfg.merge_from_dict({'default_hooks.checkpoint.type': 'CheckpointHook',
                         'work_dir': str(tmp_path / 'w')})
    runner = RUNNERS.build(cfg)
    assert type(runner).__name__ == 'IFormerRunner'
    with open(runner.logger.log_file) as f:
        text = f.read()
    assert '[iformer_mm] CheckpointHook -> SafeCheckpointHook (atomic ' \
        'saves)' in text


def test_cpu_adaptation_of_settings_given_on_the_command_line():
    """``--cfg-options`` values are strings built at run time, not the
    config file's constants: nccl and AMP given there are adapted too."""
    import argparse

    from mmengine.config import DictAction

    from iformer_mm.engine import adapt_to_machine
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args([
        '--cfg-options', 'env_cfg.dist_cfg.backend=nccl',
        'optim_wrapper.type=AmpOptimWrapper', 'optim_wrapper.loss_scale=512'])
    cfg = Config(dict(model=dict(type='X'),
                      optim_wrapper=dict(optimizer=dict(type='SGD'))))
    cfg.merge_from_dict(args.cfg_options)
    notes = adapt_to_machine(cfg, cuda=False)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert 'loss_scale' not in cfg.optim_wrapper and any(
        'fp32' in n for n in notes)


def test_runner_logs_the_config_warnings(tmp_path, capfd):
    """Whatever tool builds the runner from a config, the warnings of the
    config check reach its log."""
    import uuid

    from mmengine.registry import RUNNERS

    from ._tiny import tiny_cfg
    cfg = Config(tiny_cfg(str(tmp_path / 'work')))
    cfg.trian_cfg = dict(max_epochs=1)
    cfg.experiment_name = f'warn_{uuid.uuid4().hex[:8]}'
    RUNNERS.build(cfg)
    out = ''.join(capfd.readouterr())
    assert "'trian_cfg'" in out and "did you mean 'train_cfg'" in out


def test_strip_pretrained_drops_only_what_would_download():
    """Every ``Pretrained`` init (a dict, or an entry of a list) and the
    ``pretrained=`` shortcut go, at any depth; other inits stay."""
    from iformer_mm.config import strip_pretrained
    kaiming = dict(type='Kaiming', layer='Conv2d')
    model = Config(dict(model=dict(
        type='X', pretrained='open-mmlab://x',
        backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='a.pth')),
        heads=[dict(init_cfg=[dict(type='Pretrained', checkpoint='b.pth'),
                              kaiming]),
               dict(init_cfg=[dict(type='Pretrained', checkpoint='c.pth')])],
        neck=dict(init_cfg=kaiming)))).model  # a model config
    strip_pretrained(model)
    assert 'Pretrained' not in str(model.to_dict())
    assert model.pretrained is None and model.backbone.init_cfg is None
    assert model.heads[0].init_cfg == [kaiming]
    assert model.heads[1].init_cfg is None
    assert model.neck.init_cfg == kaiming
