# Runtime for mmpretrain configs (as mmpretrain's default_runtime.py).
default_scope = 'mmpretrain'
custom_imports = dict(imports=['iformer_mm'], allow_failed_imports=False)
# mmengine's Runner with a work-dir lock, resume from the newest intact
# checkpoint, config and dataset checks, and CPU-only distributed runs;
# upstream tools (mmdet's, mmseg's, mmpretrain's train.py, mim) build it too.
runner_type = 'IFormerRunner'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=3),
    # load_from through the project's strict loader (tools/test.py
    # --allow-partial: strict=False)
    strict_load=dict(type='StrictLoadFromHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # gloo on a machine without CUDA
)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)

log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
