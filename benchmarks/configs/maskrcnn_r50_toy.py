# Toy Mask R-CNN with ResNet-50: configs/toy/maskrcnn_iformer_t_toy.py (same
# toy data, pipeline, image size, batch and optimizer) with the backbone of
# mmdet's mask-rcnn_r50_fpn (frozen stem + stage 1, frozen BN statistics)
# and the FPN input widths of ResNet-50. Random init (no torchvision
# download). Used by benchmarks/toy_detection_learning.py.
_base_ = '../../configs/toy/maskrcnn_iformer_t_toy.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        style='pytorch',
        init_cfg=None),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
