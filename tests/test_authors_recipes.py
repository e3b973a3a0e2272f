"""The M/L/L2 COCO and ADE20K configs are the authors' released recipes,
setting by setting.

The authors' values are written here as data, each with the file of their
release it comes from (github.com/ChuanyangZheng/iFormer, read at commit
2a87540 of the nirvanesque/iFormer copy). Their code is not a dependency:
the test compares our configs, and the backbone they build, with that data.
The backbone is built from the root registry (no mmcv ops needed).
"""
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.registry import LOOPS

import iformer_mm  # noqa: F401  (registers IFormer)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ARCHS = ('m', 'l', 'l2')

# --------------------------------------------------------------------------
# The authors' values. (value, source file in their repository)
# --------------------------------------------------------------------------
DET_CFG = 'detection/configs/mask_rcnn_iformer_{arch}_fpn_1x_coco.py'
DET_DATA = 'detection/configs/_base_/datasets/coco_instance.py'
DET_SCHED = 'detection/configs/_base_/schedules/schedule_1x.py'
DET_MODEL = 'detection/configs/_base_/models/mask-rcnn_r50_fpn.py'
SEG_CFG = 'segmentation/configs/sem_fpn/fpn_iformer_{arch}_ade20k_40k.py'
SEG_DATA = 'segmentation/configs/_base_/datasets/ade20k.py'
SEG_MODEL = 'segmentation/configs/_base_/models/fpn_r50.py'
NET = 'detection/iformer.py, segmentation/iformer.py'

# Per arch: the stage channels and depths and the block list of their
# iFormer_{arch}() (detection/iformer.py == segmentation/iformer.py), the
# FPN in_channels and the ImageNet checkpoint of their configs.
AUTHORS_ARCH = {
    'm': dict(
        dims=[48, 96, 192, 384], depths=[2, 2, 22, 6],
        block_types=(
            ['ConvBlock_k7_r4'] * 2 + ['ConvBlock_k7_r4'] * 2 +
            ['ConvBlock_k7_r4'] * 9 +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr2_act0_nh1_ws16_wsp1',
             'FFN2d_r3'] +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr2_act0_nh1', 'FFN2d_r3'] * 2 +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr2_act0_nh1_ws16_wre1',
             'FFN2d_r3'] + ['ConvBlock_k7_r4'] +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr4_act0_nh1', 'FFN2d_r3'] * 2),
        checkpoint='iFormer_m_distill.pth'),
    'l': dict(
        dims=[48, 96, 256, 384], depths=[2, 2, 33, 6],
        block_types=(
            ['ConvBlock_k7_r4'] * 2 + ['ConvBlock_k7_r4'] * 2 +
            ['ConvBlock_k7_r4'] * 8 +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr2_act0_nh1_ws16_wsp1',
             'FFN2d_r3'] * 1 +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr2_act0_nh1', 'FFN2d_r3'] * 5 +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr2_act0_nh1_ws16_wre1',
             'FFN2d_r3'] * 1 +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr2_act0_nh1', 'FFN2d_r3'] * 1 +
            ['ConvBlock_k7_r4'] +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr4_act0_nh1', 'FFN2d_r3'] * 2),
        checkpoint='iFormer_l_distill.pth'),
    'l2': dict(
        dims=[64, 128, 256, 512], depths=[3, 3, 46, 9],
        block_types=(
            ['ConvBlock_k7_r4'] * 3 + ['ConvBlock_k7_r4'] * 3 +
            ['ConvBlock_k7_r4'] * 12 +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr2_act0_nh1_ws16_wsp1',
             'FFN2d_r3'] * 1 +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr2_act0_nh1', 'FFN2d_r3'] * 8 +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr2_act0_nh1_ws16_wre1',
             'FFN2d_r3'] * 1 +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr2_act0_nh1', 'FFN2d_r3'] * 1 +
            ['ConvBlock_k7_r4'] +
            ['RepCPE_k3', 'SHMABlock_r1_hdrr4_act0_nh1', 'FFN2d_r3'] * 3),
        checkpoint='iFormer_l2_distill.pth'),
}

# Backbone settings shared by their detection and segmentation networks.
AUTHORS_BACKBONE = {
    # iFormer(..., drop_path_rate=0.); iFormer_{arch}(**kwargs) passes no
    # drop_path_rate on, and their configs set none.
    'drop_path_rate': (0.0, NET),
    # iFormer.train(): every _BatchNorm back to eval mode in train mode.
    'norm_eval': (True, NET),
    # No freezing in iFormer; the ResNet base's frozen_stages=1 ends up in
    # iFormer_{arch}'s **kwargs, unused.
    'frozen_stages': (-1, NET),
    # iFormer(..., layer_scale_init_value=0): no layer scale.
    'layer_scale_init_value': (0.0, NET),
    # 'ws16' in the SHMABlock type strings.
    'window_size': (16, NET),
    # SHMABlock.forward: x.chunk(16, dim=1) around window_partition/reverse.
    'window_chunks': (16, NET),
    # SHMABlock.forward: F.pad once at the partition, no attn_mask passed.
    'window_padding': ('zeros', NET),
    'out_indices': ((0, 1, 2, 3), '{cfg}'),  # the arch's config
}

AUTHORS_DET = {
    'optimizer': (dict(type='AdamW', lr=0.0002, weight_decay=0.05), DET_CFG),
    'clip_grad': (None, DET_CFG),  # optimizer_config = dict(grad_clip=None)
    'warmup': (dict(type='LinearLR', start_factor=1e-6, by_epoch=False,
                    begin=0, end=500), DET_CFG),
    'steps': (dict(type='MultiStepLR', begin=0, end=12, by_epoch=True,
                   milestones=[8, 11], gamma=0.1), DET_CFG),
    'max_epochs': (12, DET_SCHED),
    'val_interval': (1, DET_SCHED),
    'batch_per_gpu': (2, DET_DATA),
    # "You can simply train all models using 8 GPUs, which was our paper
    # setting" (detection/README.md); schedule_1x.py: base_batch_size=16.
    'total_batch': (16, DET_SCHED),
    'train_pipeline': ([
        dict(type='LoadImageFromFile', backend_args=None),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='Resize', scale=(1333, 800), keep_ratio=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs')], DET_DATA),
    'test_pipeline': ([
        dict(type='LoadImageFromFile', backend_args=None),
        dict(type='Resize', scale=(1333, 800), keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='PackDetInputs',
             meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                        'scale_factor'))], DET_DATA),
    'data_preprocessor': (dict(
        type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_mask=True,
        pad_size_divisor=32), DET_MODEL),
    'neck': (dict(type='FPN', out_channels=256, num_outs=5), DET_CFG),
    'metric': (['bbox', 'segm'], DET_DATA),
}

AUTHORS_SEG = {
    # lr=0.0001 * gpu_multiples (2)
    'optimizer': (dict(type='AdamW', lr=0.0002, weight_decay=0.0001),
                  SEG_CFG),
    'clip_grad': (None, SEG_CFG),
    'poly': (dict(type='PolyLR', eta_min=1e-6, power=0.9, begin=0,
                  end=40000, by_epoch=False), SEG_CFG),
    'train_cfg': (dict(type='IterBasedTrainLoop', max_iters=40000,
                       val_interval=4000), SEG_CFG),
    'checkpoint_interval': (4000, SEG_CFG),
    'crop_size': ((512, 512), SEG_CFG),
    'batch_per_gpu': (4, SEG_DATA),
    # gpu_multiples = 2: "we use 8 gpu instead of 4 in mmsegmentation"
    'total_batch': (32, SEG_CFG),
    'data_preprocessor': (dict(
        type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
        size=(512, 512), seg_pad_val=255), SEG_CFG),
    'train_pipeline': ([
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0),
             keep_ratio=True),
        dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PhotoMetricDistortion'),
        dict(type='PackSegInputs')], SEG_DATA),
    'test_pipeline': ([
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(2048, 512), keep_ratio=True),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='PackSegInputs')], SEG_DATA),
    'neck': (dict(type='FPN', out_channels=256, num_outs=4), SEG_MODEL),
    'decode_head': (dict(
        type='FPNHead', in_channels=[256, 256, 256, 256],
        in_index=[0, 1, 2, 3], feature_strides=[4, 8, 16, 32], channels=128,
        dropout_ratio=0.1, num_classes=150,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                         loss_weight=1.0)), SEG_MODEL),
    'test_mode': ('whole', SEG_MODEL),
}

RELEASE = 'https://github.com/ChuanyangZheng/iFormer/releases/download/v0.9/'


def det_config(arch):
    return f'mask-rcnn_iformer-{arch}_fpn_1x_coco.py'


def seg_config(arch):
    return f'fpn_iformer-{arch}_8xb4-40k_ade20k-512x512.py'


def _load(name):
    return Config.fromfile(osp.join(ROOT, 'configs', name))


def _plain(obj):
    """ConfigDict/tuple trees -> plain dicts and lists, for comparison."""
    if hasattr(obj, 'to_dict'):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _check(name, ours, theirs, source, arch, cfg=''):
    src = source.format(arch=arch, cfg=cfg.format(arch=arch))
    assert _plain(ours) == _plain(theirs), (
        f'{name}: ours {ours!r} != the authors\' {theirs!r} ({src})')


def _subset(ours, keys):
    return {k: ours.get(k) for k in keys}


# --------------------------------------------------------------------------
# Config level, setting by setting.
# --------------------------------------------------------------------------
@pytest.mark.parametrize('task', ['det', 'seg'])
@pytest.mark.parametrize('arch', ARCHS)
def test_backbone_settings_are_the_authors(arch, task):
    cfg = _load(det_config(arch) if task == 'det' else seg_config(arch))
    bb = cfg.model.backbone
    assert (bb.type, bb.arch, bb.attention) == ('IFormer', arch, 'authors')
    for key, (value, source) in AUTHORS_BACKBONE.items():
        if key == 'layer_scale_init_value':
            # Not set in our config: the arch's own value is used.
            from iformer_mm.models.backbones.iformer import ARCH_ZOO
            ours = bb.get(key, ARCH_ZOO[arch]['layer_scale_init_value'])
        else:
            ours = bb[key]
        _check(key, ours, value, source, arch,
               cfg=DET_CFG if task == 'det' else SEG_CFG)
    info = AUTHORS_ARCH[arch]
    assert bb.init_cfg == dict(type='Pretrained',
                               checkpoint=RELEASE + info['checkpoint'])
    _check('neck.in_channels', cfg.model.neck.in_channels, info['dims'],
           DET_CFG if task == 'det' else SEG_CFG, arch)


@pytest.mark.parametrize('arch', ARCHS)
def test_detection_recipe_is_the_authors(arch):
    cfg = _load(det_config(arch))
    a = AUTHORS_DET
    opt = cfg.optim_wrapper.optimizer
    _check('optimizer', _subset(opt, ('type', 'lr', 'weight_decay')),
           *a['optimizer'], arch)
    # Their AdamW sets no betas: torch's default.
    assert tuple(opt.get('betas', (0.9, 0.999))) == (0.9, 0.999)
    _check('clip_grad', cfg.optim_wrapper.get('clip_grad'), *a['clip_grad'],
           arch)
    warmup, steps = cfg.param_scheduler
    _check('warmup', warmup, *a['warmup'], arch)
    _check('steps', steps, *a['steps'], arch)
    _check('max_epochs', cfg.train_cfg.max_epochs, *a['max_epochs'], arch)
    _check('val_interval', cfg.train_cfg.val_interval, *a['val_interval'],
           arch)
    _check('batch_per_gpu', cfg.train_dataloader.batch_size,
           *a['batch_per_gpu'], arch)
    _check('total_batch', cfg.auto_scale_lr.base_batch_size,
           *a['total_batch'], arch)
    _check('train_pipeline', cfg.train_dataloader.dataset.pipeline,
           *a['train_pipeline'], arch)
    for split in ('val', 'test'):
        pipeline = cfg[f'{split}_dataloader'].dataset.pipeline
        _check(f'{split}_pipeline', pipeline, *a['test_pipeline'], arch)
    _check('data_preprocessor', cfg.model.data_preprocessor,
           *a['data_preprocessor'], arch)
    _check('neck', _subset(cfg.model.neck, ('type', 'out_channels',
                                            'num_outs')), *a['neck'], arch)
    _check('metric', cfg.val_evaluator.metric, *a['metric'], arch)


@pytest.mark.parametrize('arch', ARCHS)
def test_segmentation_recipe_is_the_authors(arch):
    cfg = _load(seg_config(arch))
    a = AUTHORS_SEG
    opt = cfg.optim_wrapper.optimizer
    _check('optimizer', _subset(opt, ('type', 'lr', 'weight_decay')),
           *a['optimizer'], arch)
    assert tuple(opt.get('betas', (0.9, 0.999))) == (0.9, 0.999)
    _check('clip_grad', cfg.optim_wrapper.get('clip_grad'), *a['clip_grad'],
           arch)
    (poly, ) = cfg.param_scheduler
    _check('poly', poly, *a['poly'], arch)
    # our loop is the authors' (mmengine's), resuming exactly
    loop = LOOPS.get(cfg.train_cfg.type)
    assert issubclass(loop, LOOPS.get(a['train_cfg'][0]['type']))
    upstream = next(c for c in loop.__mro__
                    if c.__module__.startswith('mmengine.'))
    _check('train_cfg', dict(cfg.train_cfg, type=upstream.__name__),
           *a['train_cfg'], arch)
    _check('checkpoint_interval', cfg.default_hooks.checkpoint.interval,
           *a['checkpoint_interval'], arch)
    _check('crop_size', cfg.crop_size, *a['crop_size'], arch)
    _check('batch_per_gpu', cfg.train_dataloader.batch_size,
           *a['batch_per_gpu'], arch)
    _check('total_batch', cfg.auto_scale_lr.base_batch_size,
           *a['total_batch'], arch)
    _check('data_preprocessor', cfg.model.data_preprocessor,
           *a['data_preprocessor'], arch)
    _check('train_pipeline', cfg.train_dataloader.dataset.pipeline,
           *a['train_pipeline'], arch)
    for split in ('val', 'test'):
        pipeline = cfg[f'{split}_dataloader'].dataset.pipeline
        _check(f'{split}_pipeline', pipeline, *a['test_pipeline'], arch)
    _check('neck', _subset(cfg.model.neck, ('type', 'out_channels',
                                            'num_outs')), *a['neck'], arch)
    _check('decode_head', cfg.model.decode_head, *a['decode_head'], arch)
    _check('test_mode', cfg.model.test_cfg.mode, *a['test_mode'], arch)


# --------------------------------------------------------------------------
# The backbone the config builds has the authors' block structure and
# window layout, derived here from their block-type strings.
# --------------------------------------------------------------------------
ROLE = {'ConvBlock': 'conv', 'RepCPE': 'cpe', 'SHMABlock': 'attn',
        'FFN2d': 'ffn'}


def _stage_types(arch):
    info = AUTHORS_ARCH[arch]
    types, out, start = info['block_types'], [], 0
    assert len(types) == sum(info['depths'])
    for depth in info['depths']:
        out.append(types[start:start + depth])
        start += depth
    return out


def _args(block_type):
    """'SHMABlock_r1_hdrr2_ws16_wsp1' -> {'r': 1, 'hdrr': 2, ...}."""
    import re
    out = {}
    for part in block_type.split('_')[1:]:
        key, value = re.match(r'([a-z]+)(\d+)', part).groups()
        out[key] = int(value)
    return out


@pytest.mark.parametrize('task', ['det', 'seg'])
@pytest.mark.parametrize('arch', ARCHS)
def test_built_backbone_has_the_authors_blocks_and_windows(arch, task):
    from mmengine.registry import MODELS
    cfg = _load(det_config(arch) if task == 'det' else seg_config(arch))
    bb_cfg = cfg.model.backbone.copy()
    bb_cfg.init_cfg = None  # no download
    backbone = MODELS.build(bb_cfg)
    info = AUTHORS_ARCH[arch]
    assert list(backbone.dims) == info['dims']
    assert backbone.norm_eval is True
    assert backbone.window_padding == AUTHORS_BACKBONE['window_padding'][0]
    backbone.train()
    bns = [m for m in backbone.modules()
           if isinstance(m, __import__('torch').nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert all(p.requires_grad for p in backbone.parameters())
    for i, (stage, types) in enumerate(zip(backbone.stages,
                                           _stage_types(arch))):
        dim = info['dims'][i]
        assert list(stage.roles) == [ROLE[t.split('_')[0]] for t in types]
        for block, t in zip(stage.blocks, types):
            kind, args = t.split('_')[0], _args(t)
            if kind == 'SHMABlock':
                shma = block.mixer.module
                assert shma.q.c.out_channels == dim // args['hdrr']
                assert shma.proj.c.in_channels == dim * args['r']
            elif kind == 'FFN2d':
                assert block.mixer.module[0].c.out_channels == \
                    dim * args['r']
            elif kind == 'ConvBlock':
                dw, pw = block.mixer.module[0], block.mixer.module[1]
                assert dw.c.kernel_size == (args['k'], args['k'])
                assert pw.c.out_channels == dim * args['r']
            else:
                assert block.cpe.module.c.kernel_size == \
                    (args['k'], args['k'])
        # Windows: partition right before the SHMA marked wsp1, reverse
        # right after the SHMA marked wre1; no window elsewhere.
        split = [j for j, t in enumerate(types) if 'wsp1' in t.split('_')]
        rev = [j for j, t in enumerate(types) if 'wre1' in t.split('_')]
        if split:
            assert _args(types[split[0]])['ws'] == stage.window_size == 16
            assert stage.layout.partition_before == split[0]
            assert stage.layout.reverse_before == rev[0] + 1
            assert stage.window_chunks == 16
        else:
            assert not stage.layout.windowed


# --------------------------------------------------------------------------
# The named options: the Table 16 layout and the old file names.
# --------------------------------------------------------------------------
def _without_backbone_layout(cfg):
    d = _plain(cfg._cfg_dict)
    for key in ('attention', 'window_padding', 'window_chunks'):
        d['model']['backbone'].pop(key, None)
    return d


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('task', ['det', 'seg'])
def test_cc_hybrid_option_differs_only_in_layout(arch, task):
    if task == 'det':
        main = _load(det_config(arch))
        option = _load(f'mask-rcnn_iformer-{arch}-cc-hybrid_fpn_1x_coco.py')
    else:
        main = _load(seg_config(arch))
        option = _load(
            f'fpn_iformer-{arch}-cc-hybrid_8xb4-40k_ade20k-512x512.py')
    bb = option.model.backbone
    assert (bb.attention, bb.window_chunks, bb.window_padding) == \
        ('hybrid', 16, 'mask')
    assert _without_backbone_layout(main) == _without_backbone_layout(option)


ALIASES = [(f'maskrcnn_iformer_{a}_coco.py',
            f'mask-rcnn_iformer-{a}_fpn_1x_coco.py')
           for a in ('t', 's', 'm', 'l', 'l2')] + \
    [(f'fpn_iformer_{a}_ade20k_40k.py',
      f'fpn_iformer-{a}_8xb4-40k_ade20k-512x512.py')
     for a in ('t', 's', 'm', 'l', 'l2')]


@pytest.mark.parametrize('old,new', ALIASES)
def test_old_names_are_aliases(old, new):
    assert _plain(_load(old)._cfg_dict) == _plain(_load(new)._cfg_dict)


# --------------------------------------------------------------------------
# The heads. The authors' detection/configs/_base_/models/mask-rcnn_r50_fpn.py
# and segmentation/configs/_base_/models/fpn_r50.py are mmdet 3.3.0's and
# mmseg 1.2.2's files unchanged, so our heads are compared with the copies
# that ship inside the installed mmdet / mmseg packages (.mim/configs).
# --------------------------------------------------------------------------
def _upstream(package, rel):
    module = __import__(package)
    path = osp.join(osp.dirname(module.__file__), '.mim', 'configs', rel)
    assert osp.isfile(path), f'{package} ships no {rel}'
    return Config.fromfile(path)


@pytest.mark.parametrize('arch', ARCHS)
def test_detection_heads_are_mmdet_mask_rcnn(arch):
    theirs = _upstream('mmdet', '_base_/models/mask-rcnn_r50_fpn.py').model
    ours = _load(det_config(arch)).model
    for key in ('type', 'data_preprocessor', 'rpn_head', 'roi_head',
                'train_cfg', 'test_cfg'):
        _check(key, ours[key], theirs[key], DET_MODEL, arch)
    for key in ('type', 'out_channels', 'num_outs'):
        _check(f'neck.{key}', ours.neck[key], theirs.neck[key], DET_MODEL,
               arch)


@pytest.mark.parametrize('arch', ARCHS)
def test_segmentation_head_is_mmseg_semantic_fpn(arch):
    theirs = _upstream('mmseg', '_base_/models/fpn_r50.py').model
    ours = _load(seg_config(arch)).model
    for key in ('type', 'decode_head', 'train_cfg', 'test_cfg'):
        expected = theirs[key]
        if key == 'decode_head':  # their config sets num_classes=150
            expected = dict(expected, num_classes=150)
        _check(key, ours[key], expected, SEG_MODEL, arch)
