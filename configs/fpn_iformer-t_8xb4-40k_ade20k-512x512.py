# Semantic FPN, iFormer-T backbone, ADE20K, 512x512 crops, 40k iterations
# (4 images/GPU x 8 GPUs, AdamW lr 2e-4, weight decay 1e-4, poly decay), the
# recipe of the authors' M/L/L2 configs. The authors released no dense model
# for T: the backbone uses the paper's Table 16 layout (channel-chunked
# hybrid windows; padded tokens masked, window_padding defaults to 'mask').
# Backbone initialised from the authors' ImageNet-1k release (iFormer_t.pth).
_base_ = [
    './_base_/models/fpn_iformer.py',
    './_base_/datasets/ade20k.py',
    './_base_/schedules/seg_adamw_40k.py',
    './_base_/default_runtime_seg.py',
]
pretrained = 'https://github.com/ChuanyangZheng/iFormer/releases/download/v0.9/iFormer_t.pth'  # noqa: E501
model = dict(
    backbone=dict(
        arch='t',
        attention='hybrid',
        window_size=16,
        window_chunks=16,
        norm_eval=True,
        drop_path_rate=0.0,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[32, 64, 128, 256]))
