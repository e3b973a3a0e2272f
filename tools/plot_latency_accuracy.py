#!/usr/bin/env python
"""Latency versus accuracy: the paper's Table 5 beside this machine's proxies.

    python tools/benchmark_latency.py iformer-m iformer-l --peers \\
        --no-coreml --out work_dirs/latency          # measure (CPU proxies)
    python tools/plot_latency_accuracy.py work_dirs/latency/latency.json \\
        --out work_dirs/latency/latency_vs_accuracy.png

Left: Table 5 of the paper (Mask R-CNN box AP on COCO against the
backbone's iPhone 13 Core ML latency at 512x512), every backbone of the
table. Right: the same accuracy against the latency measured here by
``tools/benchmark_latency.py`` (ONNX Runtime CPU median, or Core ML on a
Mac), for the backbones that run measured. The accuracy on the right is the
paper's as well: nothing is trained here.
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from iformer_mm.deploy.predictor.data import load_measurements  # noqa: E402

#: The accuracy columns of the paper's Table 5, by the latency tool's key
#: (the ``key`` column of the published latencies):
#: key -> (name, COCO box AP, mask AP (Mask R-CNN 1x), ADE20K mIoU).
ACCURACY = {
    'efficientnet-b0': ('EfficientNet-B0', 31.9, 29.4, None),
    'resnet18': ('ResNet-18', 34.0, 31.2, 32.9),
    'poolformer-s12': ('PoolFormer-S12', 37.3, 34.6, 37.2),
    'efficientformer-l1': ('EfficientFormer-L1', 37.9, 35.4, 38.9),
    'fastvit-sa12': ('FastViT-SA12', 38.9, 35.9, 38.0),
    'repvit-m1-1': ('RepViT-M1.1', 39.8, 37.2, 40.6),
    'iformer-m': ('iFormer-M', 40.8, 37.9, 42.4),
    'resnet50': ('ResNet-50', 38.0, 34.4, 36.7),
    'poolformer-s24': ('PoolFormer-S24', 40.1, 37.0, 40.3),
    'convnext-t': ('ConvNeXt-T', 41.0, 37.7, 41.4),
    'efficientformer-l3': ('EfficientFormer-L3', 41.4, 38.1, 43.5),
    'repvit-m1-5': ('RepViT-M1.5', 41.6, 38.6, 43.6),
    'pvtv2-b1': ('PVTv2-B1', 41.8, 38.8, 42.5),
    'fastvit-sa24': ('FastViT-SA24', 42.0, 38.0, 41.0),
    'efficientmod-s': ('EfficientMod-S', 42.1, 38.5, 43.5),
    'swin-t': ('Swin-T', 42.2, 39.1, 41.5),
    'iformer-l': ('iFormer-L', 42.2, 39.1, 44.5),
}
#: Table 5 of the paper (Mask R-CNN 1x on COCO; backbone latency on an
#: iPhone 13 at 512x512, Core ML; "Failed": too slow to report):
#: name -> (params M, latency ms or None, box AP, mask AP, ADE20K mIoU).
#: Parameters and latencies are the published ones the latency tools use
#: (iformer_mm/deploy/data/iphone13_coreml.csv), the accuracy is ACCURACY.
TABLE5 = {ACCURACY[r['key']][0]: (r['params_m'], r['latency_ms'],
                                  *ACCURACY[r['key']][1:])
          for r in load_measurements() if r['source'] == 'Table 5'}
METRICS = {'box': (2, 'COCO box AP (Mask R-CNN 1x)'),
           'mask': (3, 'COCO mask AP (Mask R-CNN 1x)'),
           'miou': (4, 'ADE20K mIoU (Semantic FPN)')}


class InputError(Exception):
    pass


def table5_name(key: str):
    """Table 5 row of a latency-tool key (``iformer-m:cc-hybrid`` is the
    layout the paper times for iFormer-M at 512x512)."""
    base, _, layout = key.partition(':')
    if base.startswith('iformer') and layout not in ('', 'cc-hybrid'):
        return None
    return ACCURACY[base][0] if base in ACCURACY else None


def measured_points(run: dict, source: str):
    """``[(Table 5 name, ms)]`` from a latency.json, best source first."""
    out = []
    for r in run.get('results', []):
        name = table5_name(r.get('key', ''))
        if name is None or r.get('status') != 'ok':
            continue
        if source == 'coreml':
            timing = ((r.get('coreml') or {}).get('timing') or {})
        else:
            timing = ((r.get(source) or {}).get('timing') or {})
        ms = timing.get('median_ms')
        if ms:
            out.append((name, float(ms)))
    return out


def pick_source(run: dict) -> str:
    if run.get('coreml_runtime'):
        return 'coreml'
    for source in ('onnx', 'torch'):
        if measured_points(run, source):
            return source
    raise InputError('the latency run has no timed backbone of Table 5 '
                     '(run tools/benchmark_latency.py with --peers and '
                     'without --no-timing)')


SOURCE_LABEL = {'coreml': 'Core ML', 'onnx': 'ONNX Runtime CPU (proxy)',
                'torch': 'PyTorch eager CPU (proxy)'}


def plot(run: dict, out: str, metric: str = 'box', source: str = None,
         dpi: int = 110):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    col, ylabel = METRICS[metric]
    source = source or pick_source(run)
    points = measured_points(run, source)
    if not points:
        raise InputError(f'no backbone of Table 5 was timed with {source}')
    env = run.get('environment', {})
    size = (run.get('config') or {}).get('resolution')
    fig, (ax_p, ax_m) = plt.subplots(1, 2, figsize=(12, 4.6))

    def scatter(ax, pts):
        for name, ms in pts:
            acc = TABLE5[name][col]
            if acc is None:
                continue
            ours = name.startswith('iFormer')
            ax.scatter([ms], [acc], s=60 if ours else 30,
                       color='tab:red' if ours else 'tab:blue',
                       marker='*' if ours else 'o', zorder=3)
            ax.annotate(name, (ms, acc), textcoords='offset points',
                        xytext=(4, 3), fontsize=7)
        ax.grid(alpha=0.3)
        ax.set_ylabel(ylabel)

    paper = [(n, v[1]) for n, v in TABLE5.items() if v[1] is not None]
    scatter(ax_p, paper)
    ax_p.set_xscale('log')
    ax_p.set_xlabel('backbone latency, ms (iPhone 13, Core ML, 512x512)')
    ax_p.set_title('Reported by the paper (Table 5)', fontsize=10)
    scatter(ax_m, points)
    ax_m.set_xscale('log')
    res = f'{size[0]}x{size[1]}' if size else ''
    ax_m.set_xlabel(f'backbone latency, ms ({SOURCE_LABEL[source]}, '
                    f'{res})')
    ax_m.set_title(f'Measured here: {env.get("cpu", "?")[:40]}, '
                   f'{env.get("threads", "?")} threads\n(accuracy: the '
                   'paper\'s, Table 5)', fontsize=9)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return fig, points


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('latency_json', help='latency.json written by '
                   'tools/benchmark_latency.py')
    p.add_argument('--out', default='latency_vs_accuracy.png')
    p.add_argument('--metric', choices=sorted(METRICS), default='box')
    p.add_argument('--source', choices=sorted(SOURCE_LABEL), default=None,
                   help='which measured latency (default: Core ML if it '
                   'ran, else ONNX Runtime)')
    args = p.parse_args(argv)
    try:
        if not osp.isfile(args.latency_json):
            raise InputError(f'{args.latency_json}: no such file (run '
                             'tools/benchmark_latency.py first)')
        try:
            with open(args.latency_json) as fh:
                run = json.load(fh)
        except json.JSONDecodeError as e:
            raise InputError(f'{args.latency_json}: not JSON ({e.msg})')
        _, points = plot(run, args.out, args.metric, args.source)
    except InputError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'saved {args.out} ({len(points)} measured backbones: '
          + ', '.join(f'{n} {ms:.1f} ms' for n, ms in points) + ')')
    return 0


if __name__ == '__main__':
    sys.exit(main())
