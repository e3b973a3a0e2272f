# Toy Mask R-CNN with iFormer-M: configs/toy/maskrcnn_iformer_t_toy.py (same
# toy data, pipeline, image size, batch and optimizer) with the backbone and
# the FPN input widths of configs/maskrcnn_iformer_m_coco.py. Random init.
# Used by benchmarks/toy_detection_learning.py for the cost comparison.
_base_ = '../../configs/toy/maskrcnn_iformer_t_toy.py'
model = dict(
    backbone=dict(arch='m', init_cfg=None),
    neck=dict(in_channels=[48, 96, 192, 384]))
