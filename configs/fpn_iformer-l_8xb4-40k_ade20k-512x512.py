# Semantic FPN, iFormer-L backbone, ADE20K, 512x512 crops, 40k iterations:
# the authors' released network and recipe, setting by setting
# (github.com/ChuanyangZheng/iFormer, segmentation/configs/sem_fpn/
# fpn_iformer_l_ade20k_40k.py and segmentation/iformer.py; compared in
# docs/model_zoo.md). Their ADE20K checkpoint evaluates as trained:
#   python tools/test.py configs/fpn_iformer-l_8xb4-40k_ade20k-512x512.py \
#       iFormer_l_iter_40000.pth
# 4 images/GPU x 8 GPUs, AdamW lr 2e-4, weight decay 1e-4, poly decay.
# Backbone initialised from the authors' ImageNet-1k release
# (iFormer_l_distill.pth). The paper's Table 16 layout instead:
#   fpn_iformer-l-cc-hybrid_8xb4-40k_ade20k-512x512.py
_base_ = [
    './_base_/models/fpn_iformer.py',
    './_base_/datasets/ade20k.py',
    './_base_/schedules/seg_adamw_40k.py',
    './_base_/default_runtime_seg.py',
]
pretrained = 'https://github.com/ChuanyangZheng/iFormer/releases/download/v0.9/iFormer_l_distill.pth'  # noqa: E501
model = dict(
    backbone=dict(
        arch='l',
        # The authors' dense layout: stage-3 SHMA blocks 1-7 of 8
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
        drop_path_rate=0.0,  # their iFormer_l() does not pass it on: 0
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[48, 96, 256, 384]))
