# 1x schedule (12 epochs) with AdamW, as the authors' Mask R-CNN configs
# (detection/configs/mask_rcnn_iformer_*_fpn_1x_coco.py): LinearLR warmup from
# lr x 1e-6 over the first 500 iterations, then x0.1 at epochs 8 and 11.
# lr 2e-4, weight decay 0.05 for a total batch of 16.
# Resumable*: mmengine's loops that resume mid-epoch exactly (iformer_mm.engine)
train_cfg = dict(
    type='ResumableEpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=12,
        by_epoch=True,
        milestones=[8, 11],
        gamma=0.1)
]

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=0.0002, betas=(0.9, 0.999), weight_decay=0.05))

# lr above is for 2 images/GPU x 8 GPUs; `--auto-scale-lr` rescales it
# linearly to the batch of the run.
auto_scale_lr = dict(enable=False, base_batch_size=16)
