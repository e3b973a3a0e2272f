# Mask R-CNN + FPN, iFormer-M backbone, COCO 2017, 1x schedule: the authors'
# released network and recipe, setting by setting (github.com/ChuanyangZheng/
# iFormer, detection/configs/mask_rcnn_iformer_m_fpn_1x_coco.py and
# detection/iformer.py; compared in docs/model_zoo.md). Their COCO checkpoint
# evaluates as trained:
#   python tools/test.py configs/mask-rcnn_iformer-m_fpn_1x_coco.py \
#       iFormer_m_epoch_12.pth
# 2 images/GPU x 8 GPUs, AdamW lr 2e-4, weight decay 0.05, 1333x800.
# Backbone initialised from the authors' ImageNet-1k release
# (iFormer_m_distill.pth). The paper's Table 16 layout instead:
# mask-rcnn_iformer-m-cc-hybrid_fpn_1x_coco.py
_base_ = [
    './_base_/models/mask-rcnn_iformer_fpn.py',
    './_base_/datasets/coco_instance.py',
    './_base_/schedules/det_adamw_1x.py',
    './_base_/default_runtime_det.py',
]
pretrained = 'https://github.com/ChuanyangZheng/iFormer/releases/download/v0.9/iFormer_m_distill.pth'  # noqa: E501
model = dict(
    backbone=dict(
        arch='m',
        # The authors' dense layout: all four stage-3 SHMA blocks
        # attend within 16x16 windows (partition right before the first
        # windowed SHMA, reverse right after the last one), stage 4 global;
        # window partition in 16 channel chunks, as their code does.
        attention='authors',
        window_size=16,
        window_chunks=16,
        # Maps that are not a multiple of 16 are zero-padded once at the
        # partition and the padded zeros take part in attention, CPE and FFN,
        # as in their code (the released weights were trained that way).
        window_padding='zeros',
        norm_eval=True,  # their iFormer.train() keeps every BN in eval mode
        drop_path_rate=0.0,  # their iFormer_m() does not pass it on: 0
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[48, 96, 192, 384]))
