# Mask R-CNN + FPN, iFormer-S backbone, COCO 2017, 1x schedule
# (2 images/GPU x 8 GPUs, AdamW lr 2e-4). Backbone initialised from the
# authors' ImageNet-1k release (iFormer_s.pth).
_base_ = [
    './_base_/models/mask-rcnn_iformer_fpn.py',
    './_base_/datasets/coco_instance.py',
    './_base_/schedules/det_adamw_1x.py',
    './_base_/default_runtime_det.py',
]
pretrained = 'https://github.com/ChuanyangZheng/iFormer/releases/download/v0.9/iFormer_s.pth'  # noqa: E501
model = dict(
    backbone=dict(
        arch='s',
        drop_path_rate=0.0,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[32, 64, 176, 320]))
