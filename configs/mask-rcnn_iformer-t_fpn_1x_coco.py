# Mask R-CNN + FPN, iFormer-T backbone, COCO 2017, 1x schedule
# (2 images/GPU x 8 GPUs, AdamW lr 2e-4, weight decay 0.05, 1333x800), the
# recipe of the authors' M/L/L2 configs. The authors released no dense model
# for T: the backbone uses the paper's Table 16 layout (channel-chunked
# hybrid windows; padded tokens masked, window_padding defaults to 'mask').
# Backbone initialised from the authors' ImageNet-1k release (iFormer_t.pth).
_base_ = [
    './_base_/models/mask-rcnn_iformer_fpn.py',
    './_base_/datasets/coco_instance.py',
    './_base_/schedules/det_adamw_1x.py',
    './_base_/default_runtime_det.py',
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
