#!/usr/bin/env python
"""Does the toy Mask R-CNN iFormer-T run learn? And what does a training
iteration cost next to ResNet-50?

A benchmark, not a test: it takes ~10 CPU-minutes and prints numbers.

Part 1, learning. Trains ``configs/toy/maskrcnn_iformer_t_toy.py`` as it
is (random-init backbone: ``init_cfg=None``, nothing downloaded; its data,
model, batch size and AdamW lr) with mmengine's Runner, by iteration instead
of by epoch: warm-up over 16 iterations like the toy schedule, x0.1 at 80% of
``--iters``. COCO bbox/segm AP on the toy val split is evaluated before the
first iteration and every ``--val-interval`` iterations; training stops
early once ``--budget`` CPU seconds of training are spent (process CPU time
of the training iterations, evaluations excluded, so that the budget means
the same on a busy shared machine). It reports the AP curve and whether bbox
AP rose clearly above its initial value (criterion: best bbox mAP >=
initial + ``--min-gain``, 0.05 by default).

Part 2, cost. For Mask R-CNN with iFormer-T, iFormer-M and ResNet-50 (same
toy train data, pipeline, image size, batch size and optimizer; only the
backbone and the FPN input widths differ, see ``benchmarks/configs/``) it
runs ``--speed-iters`` training iterations after ``--speed-warmup`` untimed
ones, each model in a fresh Python subprocess, and reports:

* ms per training iteration (``model.train_step``: data preprocessor,
  forward, loss, backward, optimizer step; the batch is fetched before the
  clock starts), as CPU time (``time.process_time``) and wall time, median
  and mean;
* peak memory: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of that
  subprocess (peak resident set size over its whole life, which the
  training iterations dominate), and the training delta: that peak minus
  the RSS (``/proc/self/statm``) just before the first iteration, i.e. what
  activations, gradients and optimizer state add on top of the built model
  and the loaded data. tracemalloc is not used: it does not see PyTorch's
  CPU allocator.

Both parts run torch with ``--threads`` (1 by default): on a machine shared
with other jobs, idle OpenMP threads spin and bill CPU time, so one thread
gives the most repeatable CPU times.

Usage::

    python benchmarks/toy_detection_learning.py            # both parts
    python benchmarks/toy_detection_learning.py --part speed
    python benchmarks/toy_detection_learning.py --budget 300 --iters 400

``os.getloadavg()`` is printed with the timings so a busy machine shows.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import os.path as osp
import resource
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

TOY_CONFIG = osp.join(ROOT, 'configs/toy/maskrcnn_iformer_t_toy.py')
SPEED_CONFIGS = {
    'iFormer-T': osp.join(ROOT, 'configs/toy/maskrcnn_iformer_t_toy.py'),
    'iFormer-M': osp.join(ROOT,
                          'benchmarks/configs/maskrcnn_iformer_m_toy.py'),
    'ResNet-50': osp.join(ROOT, 'benchmarks/configs/maskrcnn_r50_toy.py'),
}


def _rss_mib() -> float:
    with open('/proc/self/statm') as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf('SC_PAGE_SIZE') / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.


def _load(config: str, work_dir: str, threads: int):
    import torch
    from mmengine.config import Config

    import iformer_mm  # noqa: F401
    from iformer_mm.config import init_scope, strip_pretrained
    torch.set_num_threads(threads)
    cfg = Config.fromfile(config)
    init_scope(cfg)
    strip_pretrained(cfg.model)
    cfg.work_dir = work_dir
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(key):
            cfg[key].update(num_workers=0, persistent_workers=False)
            cfg[key].pop('prefetch_factor', None)
    cfg.launcher = 'none'
    cfg.env_cfg = dict(cfg.get('env_cfg', {}),
                       dist_cfg=dict(backend='gloo'),
                       mp_cfg=dict(mp_start_method='fork'))
    return cfg


# --------------------------------------------------------------------------
# Part 2: one model's training iteration time and memory (in a subprocess)
# --------------------------------------------------------------------------
def measure_speed(config: str, iters: int, warmup: int, threads: int,
                  seed: int = 0) -> dict:
    import torch
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS
    from mmengine.runner import Runner

    cfg = _load(config, tempfile.mkdtemp(prefix='toyspeed_'), threads)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    loader = Runner.build_dataloader(copy.deepcopy(cfg.train_dataloader),
                                     seed=seed)
    batches, it = [], iter(loader)
    for _ in range(warmup + iters):
        try:
            batches.append(next(it))
        except StopIteration:
            it = iter(loader)
            batches.append(next(it))
    shape = tuple(batches[0]['inputs'][0].shape[-2:])
    batch_size = len(batches[0]['inputs'])
    rss_before = _rss_mib()
    times, cpu_times = [], []
    for i, batch in enumerate(batches):
        start, cpu_start = time.perf_counter(), time.process_time()
        model.train_step(batch, optim)
        elapsed = (time.perf_counter() - start) * 1000.
        cpu = (time.process_time() - cpu_start) * 1000.
        if i >= warmup:
            times.append(elapsed)
            cpu_times.append(cpu)
    peak = _peak_rss_mib()
    times_sorted = sorted(times)
    cpu_sorted = sorted(cpu_times)
    return dict(
        config=osp.relpath(config, ROOT),
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        backbone_params_m=sum(p.numel()
                              for p in model.backbone.parameters()) / 1e6,
        batch_size=batch_size, input_shape=list(shape), iters=iters,
        warmup=warmup, threads=threads,
        ms_mean=sum(times) / len(times),
        ms_median=times_sorted[len(times) // 2],
        ms_min=times_sorted[0],
        cpu_ms_mean=sum(cpu_times) / len(cpu_times),
        cpu_ms_median=cpu_sorted[len(cpu_times) // 2],
        rss_before_mib=rss_before, peak_rss_mib=peak,
        train_delta_mib=peak - rss_before,
        loadavg=os.getloadavg())


def run_speed(args) -> list:
    rows = []
    for name, config in SPEED_CONFIGS.items():
        cmd = [sys.executable, osp.abspath(__file__), '--measure', config,
               '--speed-iters', str(args.speed_iters), '--speed-warmup',
               str(args.speed_warmup), '--threads', str(args.threads)]
        print(f'[speed] {name}: {" ".join(cmd[1:])}', flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = [ln for ln in proc.stdout.splitlines()
                if ln.startswith('RESULT ')]
        if proc.returncode != 0 or not line:
            print(proc.stdout[-2000:], proc.stderr[-4000:], sep='\n')
            rows.append(dict(name=name, error=f'exit {proc.returncode}'))
            continue
        rows.append(dict(name=name, **json.loads(line[-1][len('RESULT '):])))
    return rows


def format_speed(rows: list) -> str:
    out = ['| Mask R-CNN backbone | params (M) total / backbone | input | '
           'batch | CPU ms/iter median (mean) | wall ms/iter median | '
           'peak RSS (MiB) | train delta (MiB) |',
           '|---|---|---|---|---|---|---|---|']
    for r in rows:
        if 'error' in r:
            out.append(f'| {r["name"]} | failed: {r["error"]} | | | | | | |')
            continue
        out.append(
            f'| {r["name"]} | {r["params_m"]:.1f} / '
            f'{r["backbone_params_m"]:.1f} | '
            f'{r["input_shape"][0]}x{r["input_shape"][1]} | '
            f'{r["batch_size"]} | {r["cpu_ms_median"]:.0f} '
            f'({r["cpu_ms_mean"]:.0f}) | {r["ms_median"]:.0f} | '
            f'{r["peak_rss_mib"]:.0f} | '
            f'{r["train_delta_mib"]:.0f} |')
    if rows and 'error' not in rows[0]:
        r = rows[0]
        out.append(f'\n{r["iters"]} timed iterations after {r["warmup"]} '
                   f'warm-up, torch threads {r["threads"]}, load average at '
                   f'the end of each run: ' + ', '.join(
                       f'{x["name"]} {x["loadavg"][0]:.1f}' for x in rows
                       if 'loadavg' in x))
    return '\n'.join(out)


# --------------------------------------------------------------------------
# Part 1: learning curve
# --------------------------------------------------------------------------
def run_learning(args) -> dict:
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS
    from mmengine.runner import Runner

    work_dir = args.work_dir or tempfile.mkdtemp(prefix='toylearn_')
    cfg = _load(args.config, work_dir, args.threads)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=args.iters,
                         val_interval=args.val_interval)
    # the toy config's schedule (warm-up over 16 iterations, x0.1 at 5/6)
    # by iteration: x0.1 at 80% of --iters
    if args.lr is not None:
        cfg.optim_wrapper.optimizer.lr = args.lr
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
             end=max(1, min(16, args.iters // 4))),
        dict(type='MultiStepLR', by_epoch=False, begin=0, end=args.iters,
             milestones=[max(1, int(args.iters * 0.8))], gamma=0.1)]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook',
                                        interval=10**9, save_last=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=20)
    cfg.log_processor = dict(type='LogProcessor', window_size=20,
                             by_epoch=False)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.pop('load_from', None)
    cfg.resume = False
    cfg.randomness = dict(seed=args.seed)

    curve = []
    # training-only clocks (evaluations excluded): CPU seconds of this
    # process (all threads) and wall seconds
    clock = dict(cpu=0., wall=0., cpu0=0., wall0=0.)

    @HOOKS.register_module(force=True)
    class _LearningCurve(Hook):
        priority = 'VERY_LOW'

        def before_train(self, runner):
            runner.val_loop.run()          # AP of the untrained model

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            clock['cpu0'] = time.process_time()
            clock['wall0'] = time.perf_counter()

        def after_val_epoch(self, runner, metrics=None):
            metrics = metrics or {}
            curve.append(dict(
                iter=runner.iter, train_cpu_s=round(clock['cpu'], 1),
                train_wall_s=round(clock['wall'], 1),
                bbox_mAP=metrics.get('coco/bbox_mAP'),
                bbox_mAP_50=metrics.get('coco/bbox_mAP_50'),
                segm_mAP=metrics.get('coco/segm_mAP')))
            print(f'[learning] iter {runner.iter:5d}  train CPU '
                  f'{clock["cpu"]:6.0f} s  wall {clock["wall"]:6.0f} s  '
                  f'bbox mAP {metrics.get("coco/bbox_mAP")}  '
                  f'mAP50 {metrics.get("coco/bbox_mAP_50")}  '
                  f'segm mAP {metrics.get("coco/segm_mAP")}', flush=True)

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            clock['cpu'] += time.process_time() - clock['cpu0']
            clock['wall'] += time.perf_counter() - clock['wall0']
            if clock['cpu'] > args.budget:
                # out of budget: make this the last iteration; the loop
                # then validates (iter == max_iters) and ends
                runner.train_loop._max_iters = runner.iter + 1

    cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
        dict(type='_LearningCurve')]
    runner = Runner.from_cfg(cfg)
    start = time.perf_counter()
    runner.train()
    wall = time.perf_counter() - start
    initial = curve[0]['bbox_mAP'] or 0.
    best = max((c['bbox_mAP'] or 0.) for c in curve)
    final = curve[-1]['bbox_mAP'] or 0.
    return dict(config=osp.relpath(args.config, ROOT), curve=curve,
                initial=initial, best=best, final=final,
                iters_done=curve[-1]['iter'], wall_s=wall,
                train_cpu_s=clock['cpu'], train_wall_s=clock['wall'],
                threads=args.threads,
                learns=best >= initial + args.min_gain,
                min_gain=args.min_gain, budget_s=args.budget,
                batch_size=cfg.train_dataloader.batch_size)


def format_learning(res: dict) -> str:
    out = [f'Toy detection learning: {res["config"]} (random-init backbone, '
           f'batch {res["batch_size"]})',
           '| iter | train CPU s | train wall s | bbox mAP | bbox mAP50 | '
           'segm mAP |',
           '|---|---|---|---|---|---|']
    for c in res['curve']:
        out.append(f'| {c["iter"]} | {c["train_cpu_s"]:.0f} | '
                   f'{c["train_wall_s"]:.0f} | '
                   f'{c["bbox_mAP"]} | {c["bbox_mAP_50"]} | '
                   f'{c["segm_mAP"]} |')
    out.append(
        f'\nbbox mAP: initial {res["initial"]:.3f} -> final '
        f'{res["final"]:.3f} (best {res["best"]:.3f}) after '
        f'{res["iters_done"]} iterations: {res["train_cpu_s"]:.0f} CPU s of '
        f'training (torch threads {res["threads"]}, budget '
        f'{res["budget_s"]:.0f}), {res["wall_s"]:.0f} s wall including '
        f'evaluations; criterion best >= initial + '
        f'{res["min_gain"]}: {"MET" if res["learns"] else "NOT MET"}')
    return '\n'.join(out)


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--part', choices=['all', 'learning', 'speed'],
                   default='all')
    p.add_argument('--config', default=TOY_CONFIG,
                   help='detection config for the learning part')
    p.add_argument('--iters', type=int, default=400,
                   help='max training iterations (learning part)')
    p.add_argument('--val-interval', type=int, default=40)
    p.add_argument('--budget', type=float, default=600.,
                   help='CPU seconds of training (process time, all '
                   'threads, evaluations excluded) before stopping early')
    p.add_argument('--lr', type=float, default=None,
                   help="override the toy config's learning rate")
    p.add_argument('--min-gain', type=float, default=0.05,
                   help='required rise of best bbox mAP over the initial')
    p.add_argument('--speed-iters', type=int, default=5)
    p.add_argument('--speed-warmup', type=int, default=2)
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads; 1 keeps CPU time honest on a busy '
                   'machine (idle OpenMP threads spin and bill CPU)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--work-dir', default=None)
    p.add_argument('--out', default=None, help='also write results as JSON')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='overrides for the learning config, key=value')
    p.add_argument('--measure', default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.measure:  # subprocess of the speed part
        res = measure_speed(args.measure, args.speed_iters,
                            args.speed_warmup, args.threads, args.seed)
        print('RESULT ' + json.dumps(res), flush=True)
        return 0
    for path in [args.config] + list(SPEED_CONFIGS.values()):
        if not osp.isfile(path):
            print(f'error: config not found: {path}', file=sys.stderr)
            return 2
    results = {}
    print(f'load average at start: {os.getloadavg()}', flush=True)
    if args.part in ('all', 'speed'):
        results['speed'] = run_speed(args)
    if args.part in ('all', 'learning'):
        results['learning'] = run_learning(args)
    print('\n' + '=' * 72)
    if 'learning' in results:
        print(format_learning(results['learning']))
        print()
    if 'speed' in results:
        print('Training iteration cost, Mask R-CNN on the toy set:')
        print(format_speed(results['speed']))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
