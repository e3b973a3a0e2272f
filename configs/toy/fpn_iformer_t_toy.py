# Semantic FPN iFormer-T on the generated ADE20K-style toy folder
# (data/toy_ade/, created on first use):
# configs/fpn_iformer-t_8xb4-40k_ade20k-512x512.py
# with only the data and the schedule swapped, sized for a CPU.
#   python tools/train.py configs/toy/fpn_iformer_t_toy.py
_base_ = '../fpn_iformer-t_8xb4-40k_ade20k-512x512.py'

# ---- data: 4 classes (ground + 3 shapes), 128 px images, 128 px crops ----
dataset_type = 'ToyADE20KDataset'
data_root = 'data/toy_ade'
crop_size = (128, 128)
model = dict(
    # From scratch, so the backbone's BN statistics must be learned: BN in
    # train mode (the real config freezes them, as for ImageNet weights).
    backbone=dict(init_cfg=None, norm_eval=False),
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=4))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomResize',
        scale=(256, 128),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type, data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type, data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

# ---- schedule: 60 iterations, evaluate at the end ------------------------
max_iters = 60
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=0.9,
        begin=0,
        end=max_iters,
        by_epoch=False)
]
# From scratch in 60 iterations: at lr 1e-3 the model still predicted only
# "ground" at iteration 60 (mIoU 21.2, the ground class alone); at 4e-3 the
# shapes appear (mIoU 29.1 at iteration 30, 40.8 at 60, on a 2-core AMD
# EPYC VM).
optim_wrapper = dict(optimizer=dict(lr=4e-3))
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=20, max_keep_ckpts=2))
randomness = dict(seed=0)
