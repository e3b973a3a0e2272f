# Semantic FPN (Kirillov et al., 2019) on an iFormer backbone: mmseg's
# fpn_r50.py with the ResNet replaced. The variant files set ``arch``, the
# FPN ``in_channels`` and the ImageNet weights.
norm_cfg = dict(type='SyncBN', requires_grad=True)  # BN without CUDA
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='IFormer',
        arch='t',
        out_indices=(0, 1, 2, 3),
        # The variant files set the layout: 'authors' (M, L, L2, the released
        # weights) or 'hybrid' (the paper's Table 16; T, S).
        attention='hybrid',
        window_size=16,
        window_chunks=16,
        drop_path_rate=0.0,
        frozen_stages=-1,
        # BN statistics frozen while training, as the authors' iFormer.train()
        # does for their segmentation backbone.
        norm_eval=True,
        with_cp=False),
    neck=dict(
        type='FPN',
        in_channels=[32, 64, 128, 256],
        out_channels=256,
        num_outs=4),
    decode_head=dict(
        type='FPNHead',
        in_channels=[256, 256, 256, 256],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=128,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
# In a multi-GPU run the backbone's BatchNorms become SyncBatchNorm too
# (mmengine's sync_bn conversion); single-process and CPU runs keep BN.
sync_bn = 'torch'
