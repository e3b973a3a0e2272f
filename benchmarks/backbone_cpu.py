#!/usr/bin/env python
"""iFormer backbone on this CPU at 512x512, batch 1, side by side.

For each arch (default ``m`` and ``l``) it measures, in one run:

* fused (``switch_to_deploy()``) vs unfused latency, hybrid chunked layout;
* global SHMA vs hybrid window SHMA without chunking vs channel-chunked
  hybrid SHMA (Table 17's three settings): latency and peak memory.

Every setting runs in its own fresh subprocess. Latency is timed with
``torch.utils.benchmark`` (``Timer.blocked_autorange``, at least
``--min-run-time`` seconds and ``--runs`` forwards after ``--warmup``
untimed ones); the median and interquartile range are those of its
``Measurement`` (a true median: the mean of the two middle blocks for an
even count). Memory is counted
in one extra, untimed forward by
:class:`iformer_mm.utils.TensorMemoryTracker`: peak activation memory
(tensor storages alive at once) and bytes written (all storages created),
both deterministic, unlike the resident set on a shared machine. Ratios are
printed against the first setting of each group.

    python benchmarks/backbone_cpu.py --archs m l --runs 20 --min-run-time 3
"""
import argparse
import json
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

SETTINGS = {
    'unfused': dict(attention='hybrid', window_chunks=16, fuse=False),
    'fused': dict(attention='hybrid', window_chunks=16, fuse=True),
    'global': dict(attention='global', window_chunks=1, fuse=True),
    'hybrid': dict(attention='hybrid', window_chunks=1, fuse=True),
    'hybrid+chunks16': dict(attention='hybrid', window_chunks=16, fuse=True),
}
GROUPS = [('BN folding', ['unfused', 'fused']),
          ('attention (Table 17)', ['global', 'hybrid', 'hybrid+chunks16'])]


def time_forward(net, x, warmup, runs, min_run_time, threads, label=''):
    """A ``torch.utils.benchmark.Measurement`` of ``net(x)``: blocks of
    ``blocked_autorange`` until at least ``runs`` forwards were timed."""
    import torch
    from torch.utils import benchmark
    timer = benchmark.Timer(stmt='net(x)', globals={'net': net, 'x': x},
                            num_threads=threads, label=label)
    with torch.inference_mode():
        for _ in range(warmup):
            net(x)
        parts = []
        while sum(len(m.raw_times) * m.number_per_run
                  for m in parts) < max(runs, 1):
            parts.append(timer.blocked_autorange(min_run_time=min_run_time))
    return benchmark.Measurement.merge(parts)[0]


def measure(arch, setting, size, warmup, runs, threads, min_run_time):
    """Runs in the child process: prints one JSON line."""
    import torch
    sys.path.insert(0, ROOT)
    from iformer_mm.models.backbones import IFormer
    from iformer_mm.utils import TensorMemoryTracker
    torch.set_num_threads(threads)
    cfg = dict(SETTINGS[setting])
    fuse = cfg.pop('fuse')
    torch.manual_seed(0)
    net = IFormer(arch, **cfg).eval()
    if fuse:
        net.switch_to_deploy()
    x = torch.randn(1, 3, size, size)
    m = time_forward(net, x, warmup, runs, min_run_time, threads,
                     f'iFormer-{arch} {setting}')
    with torch.inference_mode():
        with TensorMemoryTracker() as mem:
            net(x)
    print(json.dumps(dict(median_ms=m.median * 1e3, iqr_ms=m.iqr * 1e3,
                          min_ms=min(m.times) * 1e3, blocks=len(m.times),
                          peak_mem_mb=mem.peak_bytes / 2**20,
                          written_mb=mem.allocated_bytes / 2**20)))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--archs', nargs='+', default=['m', 'l'])
    p.add_argument('--size', type=int, default=512)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--runs', type=int, default=10,
                   help='time at least this many forwards')
    p.add_argument('--min-run-time', type=float, default=2.0,
                   help='seconds per blocked_autorange call')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', default=None, help='write the results as JSON')
    p.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return measure(*args.child, args.size, args.warmup, args.runs,
                       args.threads, args.min_run_time)

    import platform
    import torch
    print(f'iFormer backbones at {args.size}x{args.size}, batch 1, '
          f'{args.threads} threads, torch {torch.__version__}, '
          f'{platform.processor() or platform.machine()}; '
          'torch.utils.benchmark median (IQR) of blocked_autorange blocks, '
          f'>= {args.runs} forwards and >= {args.min_run_time} s, after '
          f'{args.warmup} warm-up')
    results = {}
    for arch in args.archs:
        results[arch] = {}
        for name in SETTINGS:
            out = subprocess.run(
                [sys.executable, __file__, '--child', arch, name, '--size',
                 str(args.size), '--warmup', str(args.warmup), '--runs',
                 str(args.runs), '--threads', str(args.threads),
                 '--min-run-time', str(args.min_run_time)],
                capture_output=True, text=True)
            if out.returncode:
                sys.exit(f'{arch}/{name} failed:\n{out.stderr}')
            results[arch][name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f'  measured iFormer-{arch.upper()} {name}', flush=True)
    print()
    print('| arch | comparison | setting | median ms (IQR) | ratio | min ms | '
          'peak activations MiB | MiB written | ratio |')
    print('|---|---|---|---|---|---|---|---|---|')
    for arch, res in results.items():
        for title, names in GROUPS:
            ref = res[names[0]]
            for name in names:
                r = res[name]
                print(f'| {arch.upper()} | {title} | {name} | '
                      f'{r["median_ms"]:.1f} ({r["iqr_ms"]:.1f}) | '
                      f'{r["median_ms"] / ref["median_ms"]:.2f} | '
                      f'{r["min_ms"]:.1f} | {r["peak_mem_mb"]:.1f} | '
                      f'{r["written_mb"]:.0f} | '
                      f'{r["written_mb"] / ref["written_mb"]:.2f} |')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(size=args.size, threads=args.threads,
                           runs=args.runs, min_run_time=args.min_run_time,
                           results=results), f, indent=2)


if __name__ == '__main__':
    main()
