# 40k iterations, AdamW lr 2e-4 / weight decay 1e-4, poly decay (power 0.9,
# down to 1e-6) for a total batch of 32 (4 images/GPU x 8 GPUs), as the
# authors' segmentation/configs/sem_fpn/fpn_iformer_*_ade20k_40k.py.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=0.0002, betas=(0.9, 0.999), weight_decay=0.0001),
    clip_grad=None)
param_scheduler = [
    dict(
        type='PolyLR',
        eta_min=1e-6,
        power=0.9,
        begin=0,
        end=40000,
        by_epoch=False)
]
# Resumable*: mmengine's loops that resume exactly (iformer_mm.engine)
train_cfg = dict(
    type='ResumableIterBasedTrainLoop', max_iters=40000, val_interval=4000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=32)
