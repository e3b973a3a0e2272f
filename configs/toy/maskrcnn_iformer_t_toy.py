# Mask R-CNN iFormer-T on the generated toy COCO dataset (data/toy_coco/,
# created on first use): configs/mask-rcnn_iformer-t_fpn_1x_coco.py with only
# the data and the schedule swapped, sized for a CPU in a few minutes.
#   python tools/train.py configs/toy/maskrcnn_iformer_t_toy.py
# The backbone starts from scratch here (no download). To start from the
# ImageNet weights instead (init_cfg is None here, so `_delete_` replaces it
# whole; without it mmengine refuses to merge a dict into None):
#   python tools/train.py configs/toy/maskrcnn_iformer_t_toy.py --cfg-options \
#       model.backbone.init_cfg._delete_=True \
#       model.backbone.init_cfg.type=Pretrained \
#       model.backbone.init_cfg.checkpoint=/path/to/iFormer_t.pth
_base_ = '../mask-rcnn_iformer-t_fpn_1x_coco.py'

# ---- data: 3 shape classes, 32 train / 8 val images of 128 px ------------
dataset_type = 'ToyCocoDataset'
data_root = 'data/toy_coco/'
classes = ('square', 'triangle', 'circle')
toy_cfg = dict(num_train=32, num_val=8, size=128)
model = dict(
    backbone=dict(init_cfg=None),
    roi_head=dict(
        bbox_head=dict(num_classes=len(classes)),
        mask_head=dict(num_classes=len(classes))),
    # 1-3 objects per image: 128 sampled RoIs per image instead of 512 keep
    # the R-CNN heads (most of the CPU time at this image size) small.
    train_cfg=dict(rcnn=dict(sampler=dict(num=128))))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        toy_cfg=toy_cfg,
        metainfo=dict(classes=classes),
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        toy_cfg=toy_cfg,
        metainfo=dict(classes=classes),
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# ---- schedule: 6 epochs of 16 iterations, evaluate at the end ------------
max_epochs = 6
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=16),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[5],
        gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(
    logger=dict(interval=8),
    checkpoint=dict(interval=2, max_keep_ckpts=2))
log_processor = dict(window_size=8)
randomness = dict(seed=0)
