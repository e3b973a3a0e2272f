"""Whole-model inference speed of a detection, segmentation or
classification config: ``model.test_step(batch)``, one image at a time.

Timed: the data preprocessor, the network and the task's post-processing
(NMS, mask pasting, the logits resized back, softmax); not timed: loading
and the test pipeline's transforms. ``num_warmup`` images run first,
untimed. The inputs come from the config's test dataloader
(``data='real'``, or ``'auto'`` when its files exist) or are one random
image pushed through the test pipeline (``data='synthetic'``), of the size
:func:`test_input_shape` gives, or of exactly ``shape=(H, W)`` with the
pipeline's resizes and crops left out.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, \
    Union

import numpy as np
import torch
from mmengine.config import Config

from ..config import task_of
from ..errors import ConfigError
from .build import build_model, load_checked

DATA = ('auto', 'real', 'synthetic')
#: Transforms that read files; dropped for synthetic input.
_LOADING = ('LoadImageFromFile', 'LoadAnnotations', 'LoadPanopticAnnotations',
            'InferencerLoader', 'LoadImageFromNDArray', 'LoadImageFromWebcam')
#: Transforms that change the image size; dropped when ``shape`` is given.
_SIZING = ('Resize', 'ResizeEdge', 'RandomResize', 'RandomChoiceResize',
           'CenterCrop', 'RandomCrop', 'RandomResizedCrop', 'Pad',
           'FixShapeResize', 'ResizeShortestEdge')


@dataclass
class BenchmarkResult:
    """Timings of one benchmark run (milliseconds per image)."""
    config: str
    task: str
    device: str
    fused: bool
    data: str                      # 'synthetic' or 'real'
    input_shape: Optional[Tuple[int, int]]  # network input (H, W), 1st image
    num_images: int
    num_warmup: int
    threads: int
    ms_per_img: float              # mean
    ms_median: float
    ms_std: float
    ms_min: float
    imgs_per_s: float              # num_images / total timed seconds
    params_m: float
    bn_layers: int                 # BatchNorm layers left in the model
    cpu_ms_per_img: float = 0.     # process CPU time (all threads), mean
    fuse_max_abs_diff: Optional[float] = None  # backbone, fused vs unfused
    notes: List[str] = field(default_factory=list)
    times_ms: List[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f'config      : {self.config}',
            f'task        : {self.task}   device: {self.device}   threads: '
            f'{self.threads}',
            f'weights     : '
            f'{"fused (switch_to_deploy)" if self.fused else "unfused"}'
            f'   params: {self.params_m:.2f} M   BN layers: {self.bn_layers}',
            f'input       : {self.data}, network input {_hxw(self)} (HxW), '
            f'batch 1',
            f'images      : {self.num_images} timed after {self.num_warmup} '
            f'warm-up',
            f'latency     : {self.ms_per_img:.2f} ms/img mean, '
            f'{self.ms_median:.2f} median, {self.ms_std:.2f} std, '
            f'{self.ms_min:.2f} min',
            f'throughput  : {self.imgs_per_s:.2f} img/s',
            f'CPU time    : {self.cpu_ms_per_img:.2f} ms/img (process CPU '
            f'time, all threads; wall time above)',
        ]
        if self.fuse_max_abs_diff is not None:
            lines.append(f'fuse check  : backbone max |fused - unfused| = '
                         f'{self.fuse_max_abs_diff:.2e}')
        lines += [f'note        : {n}' for n in self.notes]
        return '\n'.join(lines)


def _hxw(result: BenchmarkResult) -> str:
    shape = result.input_shape
    return 'x'.join(map(str, shape)) if shape else '?'


# --------------------------------------------------------------------------
# The test pipeline and its input size
# --------------------------------------------------------------------------
def _test_loader(cfg: Config):
    return cfg.get('test_dataloader', None) or cfg.get('val_dataloader',
                                                       None)


def _test_pipeline(cfg: Config) -> List[dict]:
    loader = _test_loader(cfg)
    if not loader:
        raise ConfigError('Config has no test_dataloader/val_dataloader, so '
                          'there is no test pipeline to read the input size '
                          'from; pass shape=(H, W).')
    ds = loader['dataset']
    while 'pipeline' not in ds and isinstance(ds.get('dataset'), dict):
        ds = ds['dataset']
    pipeline = ds.get('pipeline', None)
    if pipeline is None:
        raise ConfigError('Config test dataset has no pipeline.')
    return [dict(t) for t in pipeline]


def _type_name(transform: dict) -> str:
    kind = transform.get('type', '')
    if not isinstance(kind, str):
        kind = getattr(kind, '__name__', '')
    return kind.split('.')[-1]


def _pair(value) -> Tuple[int, int]:
    if isinstance(value, (int, float)):
        return int(value), int(value)
    return int(value[0]), int(value[1])


def test_input_shape(cfg: Config) -> Tuple[int, int]:
    """The (H, W) of the synthetic image for a config's test pipeline.

    * ``Resize(scale=(w, h), keep_ratio=False)``: ``h x w``.
    * ``Resize(scale=(long, short), keep_ratio=True)``: a 4:3 landscape image
      whose short side is ``short`` (capped by ``long``), the typical
      COCO/ADE20K photo after the test resize: 800x1067 for COCO's
      (1333, 800), 512x683 for ADE20K's (2048, 512). The resize leaves it
      unchanged.
    * ``ResizeEdge(scale=s)`` (classification): ``s x s`` (a following
      ``CenterCrop`` then gives the network its crop size).
    * no resize: 224x224 for classification, 512x512 otherwise.
    """
    for t in _test_pipeline(cfg):
        kind, scale = _type_name(t), t.get('scale')
        if kind in ('Resize', 'FixShapeResize') and scale is not None:
            w, h = _pair(scale)
            if not t.get('keep_ratio', False):
                return h, w
            long_side, short_side = max(w, h), min(w, h)
            return short_side, min(long_side, int(round(short_side * 4 / 3)))
        if kind == 'Resize' and t.get('scale_factor') is not None:
            break
        if kind in ('ResizeEdge', 'ResizeShortestEdge') and \
                scale is not None:
            side = scale if isinstance(scale, (int, float)) else min(scale)
            return int(side), int(side)
    return (224, 224) if task_of(cfg) == 'classification' else (512, 512)


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------
def _synthetic_batch(cfg: Config, shape: Optional[Sequence[int]],
                     seed: int) -> dict:
    """One random image through the test pipeline, collated (batch 1)."""
    from mmengine.dataset import Compose, pseudo_collate

    pipeline = [t for t in _test_pipeline(cfg)
                if _type_name(t) not in _LOADING]
    if shape is not None:
        pipeline = [t for t in pipeline if _type_name(t) not in _SIZING]
        h, w = _pair(shape)
    else:
        h, w = test_input_shape(cfg)
    img = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3),
                                               dtype=np.uint8)
    results = dict(img=img, img_shape=(h, w), ori_shape=(h, w),
                   img_path='synthetic.jpg', img_id=0, sample_idx=0,
                   seg_fields=[], reduce_zero_label=False,
                   scale_factor=(1.0, 1.0))
    return pseudo_collate([Compose(pipeline)(results)])


def _why_no_test_data(cfg: Config) -> Optional[str]:
    """Why the config's test dataset cannot be used (its files are
    missing, ...), or None when it builds and is not empty."""
    from mmengine.registry import DATASETS
    loader = _test_loader(cfg)
    if not loader:
        return 'config has no test dataloader'
    try:
        if len(DATASETS.build(copy.deepcopy(loader['dataset']))) == 0:
            return 'test dataset is empty'
    except Exception as e:  # noqa: BLE001 - any failure means "not usable"
        return f'{type(e).__name__}: {str(e)[:200]}'
    return None


def _real_batches(cfg: Config, num_workers: int):
    """Endless batches (batch size 1) of the config's test dataloader."""
    from mmengine.runner import Runner

    loader_cfg = copy.deepcopy(_test_loader(cfg))
    loader_cfg.update(batch_size=1, num_workers=num_workers,
                      persistent_workers=False)
    if num_workers == 0:
        loader_cfg.pop('prefetch_factor', None)
    loader = Runner.build_dataloader(loader_cfg)
    if len(loader) == 0:
        raise ConfigError('The test dataloader is empty.')
    while True:
        yield from loader


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------
def _count_bn(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
               for m in model.modules())


def _max_abs_diff(a, b) -> float:
    if isinstance(a, torch.Tensor):
        return float((a.float() - b.float()).abs().max())
    return max(_max_abs_diff(x, y) for x, y in zip(a, b))


def _fuse(model, batch) -> Tuple[int, Optional[float]]:
    """Fold the BatchNorms of every iFormer part (``switch_to_deploy_all``);
    returns how many were folded and the largest change of the backbone's
    output on ``batch`` (None without a backbone or an image tensor)."""
    from iformer_mm.models.backbones import switch_to_deploy_all
    backbone = getattr(model, 'backbone', None)
    with torch.no_grad():
        data = model.data_preprocessor(copy.deepcopy(batch), False)
        x = data['inputs'] if isinstance(data, dict) else data[0]
        ref = backbone(x) if isinstance(x, torch.Tensor) and \
            backbone is not None else None
    bn_before = _count_bn(model)
    switch_to_deploy_all(model)
    diff = None
    if ref is not None:
        with torch.no_grad():
            diff = _max_abs_diff(backbone(x), ref)
    return bn_before - _count_bn(model), diff


def _network_input_shape(out, batch) -> Optional[Tuple[int, int]]:
    """(H, W) the network saw: ``batch_input_shape`` or ``img_shape``."""
    samples = out if isinstance(out, (list, tuple)) else []
    for sample in samples[:1]:
        meta = getattr(sample, 'metainfo', {}) or {}
        for key in ('batch_input_shape', 'img_shape'):
            if key in meta:
                return tuple(int(v) for v in meta[key][:2])
    inputs = batch.get('inputs') if isinstance(batch, dict) else None
    if inputs:
        return tuple(int(v) for v in inputs[0].shape[-2:])
    return None


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------
def benchmark(config: Union[str, Config], checkpoint: Optional[str] = None,
              device: str = 'cpu', num_images: int = 20,
              num_warmup: int = 3, fuse: bool = False,
              shape: Optional[Sequence[int]] = None, data: str = 'auto',
              threads: Optional[int] = None,
              cfg_options: Optional[dict] = None, num_workers: int = 0,
              seed: int = 0,
              log: Optional[Callable[[str], None]] = None,
              allow_partial: bool = False) -> BenchmarkResult:
    """Measure whole-model inference speed of a config (batch size 1).

    Args:
        config: Config path or :class:`~mmengine.config.Config`.
        checkpoint: Optional checkpoint; random-init weights otherwise.
            Pretrained ``init_cfg`` entries of the config are ignored.
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'`` ...
        num_images: Timed images.
        num_warmup: Untimed images first.
        fuse: Fold BN of every iFormer part with ``switch_to_deploy_all``
            (after loading the weights).
        shape: ``(H, W)`` network input; skips the pipeline's resizes.
        data: ``'auto'`` (test dataloader if its data exists, else
            synthetic), ``'real'`` or ``'synthetic'``.
        threads: ``torch.set_num_threads`` for CPU runs.
        cfg_options: Overrides merged into the config.
        num_workers: Dataloader workers for ``data='real'``.
        seed: Seed of the synthetic image and of the random init.
        log: Progress callback (e.g. ``print``).
        allow_partial: Load a checkpoint that does not fit the model as far
            as it fits (with a warning); by default that raises
            :class:`~iformer_mm.errors.CheckpointMismatchError`.
    """
    if num_images < 1 or num_warmup < 0:
        raise ConfigError('num_images must be >= 1 and num_warmup >= 0.')
    if data not in DATA:
        raise ConfigError(f"data must be 'auto', 'real' or 'synthetic', got "
                          f'{data!r}.')
    if shape is not None and data == 'real':
        raise ConfigError('shape only applies to synthetic input.')
    log = log or (lambda msg: None)
    cfg, task = load_checked(config, cfg_options, checkpoint, device)
    dev = torch.device(device)
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    notes: List[str] = []

    model = build_model(cfg, checkpoint, device=str(dev),
                        allow_partial=allow_partial)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6

    use_real = False
    if data != 'synthetic' and shape is None:
        why = _why_no_test_data(cfg)
        use_real = why is None
        if not use_real and data == 'real':
            raise FileNotFoundError(
                f'data="real" but the test dataset cannot be built: {why}')
        if not use_real:
            notes.append(f'test data not available ({why}); synthetic input')
    if use_real:
        batches = _real_batches(cfg, num_workers)
        next_batch = lambda: next(batches)  # noqa: E731
    else:
        synthetic = _synthetic_batch(cfg, shape, seed)
        next_batch = lambda: copy.deepcopy(synthetic)  # noqa: E731

    fuse_diff = None
    if fuse:
        folded, fuse_diff = _fuse(model, next_batch())
        notes.append(f'fuse: folded {folded} BatchNorm layers' if folded else
                     'fuse: no BatchNorm was folded (no iFormer part?)')

    times: List[float] = []
    cpu_times: List[float] = []
    input_shape = None
    with torch.no_grad():
        for i in range(num_warmup + num_images):
            batch = next_batch()
            _sync(dev)
            start, cpu_start = time.perf_counter(), time.process_time()
            out = model.test_step(batch)
            _sync(dev)
            elapsed = (time.perf_counter() - start) * 1000.
            cpu = (time.process_time() - cpu_start) * 1000.
            if input_shape is None:
                input_shape = _network_input_shape(out, batch)
            if i >= num_warmup:
                times.append(elapsed)
                cpu_times.append(cpu)
                n = len(times)
                if n == num_images or n % max(1, num_images // 5) == 0:
                    log(f'[{n}/{num_images}] {elapsed:.1f} ms '
                        f'(mean {statistics.fmean(times):.1f} ms)')
    return BenchmarkResult(
        config=cfg.filename or '<Config>', task=task, device=str(dev),
        fused=fuse, data='real' if use_real else 'synthetic',
        input_shape=input_shape, num_images=num_images,
        num_warmup=num_warmup, threads=torch.get_num_threads(),
        ms_per_img=statistics.fmean(times),
        ms_median=statistics.median(times),
        ms_std=statistics.pstdev(times) if len(times) > 1 else 0.,
        ms_min=min(times), imgs_per_s=1000. * len(times) / sum(times),
        params_m=params_m, bn_layers=_count_bn(model),
        cpu_ms_per_img=statistics.fmean(cpu_times),
        fuse_max_abs_diff=fuse_diff, notes=notes, times_ms=times)


def format_results(results: Sequence[BenchmarkResult]) -> str:
    """A small table comparing several runs (e.g. unfused vs fused)."""
    head = f'{"weights":<9} {"data":<10} {"input":>10} {"ms/img":>9} ' \
           f'{"median":>9} {"img/s":>8} {"BN":>5}'
    rows = [head, '-' * len(head)]
    for r in results:
        rows.append(f'{"fused" if r.fused else "unfused":<9} {r.data:<10} '
                    f'{_hxw(r):>10} {r.ms_per_img:>9.2f} {r.ms_median:>9.2f} '
                    f'{r.imgs_per_s:>8.2f} {r.bn_layers:>5}')
    if len(results) == 2 and results[0].fused != results[1].fused:
        unfused, fused = sorted(results, key=lambda r: r.fused)
        rows.append(
            f'fused speed-up: '
            f'{unfused.ms_per_img / fused.ms_per_img:.2f}x wall, '
            f'{unfused.cpu_ms_per_img / max(fused.cpu_ms_per_img, 1e-9):.2f}x '
            f'CPU time')
    return '\n'.join(rows)


__all__ = ['BenchmarkResult', 'benchmark', 'test_input_shape',
           'format_results']
