# Mask R-CNN + FPN, iFormer-L backbone, COCO 2017, 1x schedule
# (2 images/GPU x 8 GPUs, AdamW lr 2e-4). Backbone initialised from the
# authors' ImageNet-1k release (iFormer_l_distill.pth).
_base_ = [
    './_base_/models/mask-rcnn_iformer_fpn.py',
    './_base_/datasets/coco_instance.py',
    './_base_/schedules/det_adamw_1x.py',
    './_base_/default_runtime_det.py',
]
pretrained = 'https://github.com/ChuanyangZheng/iFormer/releases/download/v0.9/iFormer_l_distill.pth'  # noqa: E501
model = dict(
    backbone=dict(
        arch='l',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[48, 96, 256, 384]))
