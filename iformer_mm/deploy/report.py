"""Markdown tables, JSON and the bar chart of a latency run."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

ONNX_TOLERANCE = 1e-3


def _ms(value: Optional[float]) -> str:
    if value is None:
        return '–'
    return f'{value:.2f}' if value < 100 else f'{value:.0f}'


def _timing_cell(timing: Optional[Dict[str, Any]]) -> str:
    if not timing:
        return '–'
    return (f"{_ms(timing['median_ms'])} / {_ms(timing['p90_ms'])} / "
            f"{_ms(timing['min_ms'])}")


def _paper_cell(paper: Optional[Dict[str, Any]]) -> str:
    if not paper:
        return '–'
    if paper['failed']:
        return f"Failed ({paper['source']})"
    return f"{paper['iphone13_ms']:.2f} ({paper['source']})"


def _failure(result: Dict[str, Any]) -> Optional[str]:
    if result.get('status') == 'failed':
        reason = result.get('error', '').splitlines()[0][:160]
        return f"failed at {result.get('failed_stage')}: {reason}"
    return None


def coreml_cell(result: Dict[str, Any]) -> str:
    coreml = result.get('coreml') or {}
    status = coreml.get('status')
    if status == 'timed':
        return _timing_cell(coreml.get('timing'))
    if status in ('converted', 'validated'):
        return 'not timed (no Core ML runtime)'
    if status == 'failed':
        return f"conversion failed: {coreml.get('error', '')[:80]}"
    return 'skipped'


def latency_table(results: List[Dict[str, Any]], env: Dict[str, Any]
                  ) -> str:
    threads = env.get('threads', '?')
    head = ('| Backbone | Params (M) | Core ML ms (median / p90 / min) | '
            f'ONNX Runtime CPU, {threads} thr, proxy ms | '
            f'PyTorch eager CPU (fused), {threads} thr, proxy ms | '
            'ONNX vs PyTorch max abs diff | Paper: iPhone 13 Core ML ms '
            '(reported by the paper) |')
    lines = [head, '|' + '---|' * 7]
    for r in results:
        failure = _failure(r)
        params = f"{r['params_m']:.1f}" if r.get('params_m') else '–'
        onnx = r.get('onnx') or {}
        diff = onnx.get('max_abs_diff')
        diff_cell = '–' if diff is None else (
            f'{diff:.1e}' + ('' if diff <= ONNX_TOLERANCE else ' (> 1e-3!)'))
        if failure and not r.get('torch'):
            lines.append(f"| {r['label']} | {params} | {failure} | – | – | "
                         f"– | {_paper_cell(r.get('paper'))} |")
            continue
        core = coreml_cell(r) if not failure else failure
        lines.append(
            f"| {r['label']} | {params} | {core} | "
            f"{_timing_cell(onnx.get('timing'))} | "
            f"{_timing_cell((r.get('torch') or {}).get('timing'))} | "
            f"{diff_cell} | {_paper_cell(r.get('paper'))} |")
    return '\n'.join(lines)


def census_table(results: List[Dict[str, Any]]) -> str:
    lines = ['| Backbone | Core ML ops | reshape | transpose | concat | '
             'split | rearranged MiB | largest transpose KiB | weights (MiB) | '
             '.mlpackage |',
             '|' + '---|' * 10]
    for r in results:
        coreml = r.get('coreml') or {}
        census = coreml.get('census')
        if not census:
            why = coreml.get('error') or _failure(r) or 'not converted'
            lines.append(f"| {r['label']} | {why[:100]} | | | | | | | | |")
            continue
        package = coreml.get('package') or '–'
        moved = census.get('rearrange_bytes', 0) / 2**20
        largest = census.get('largest_bytes_by_op', {}).get(
            'transpose', 0) / 2**10
        lines.append(
            f"| {r['label']} | {census['total_ops']} | {census['reshape']} | "
            f"{census['transpose']} | {census['concat']} | {census['split']} "
            f"| {moved:.1f} | {largest:.0f} | {census['weight_mib']:.1f} | "
            f"{os.path.relpath(package, os.path.dirname(os.path.dirname(package)))} |")
    return '\n'.join(lines)


def environment_line(env: Dict[str, Any]) -> str:
    v = env.get('versions', {})
    return (f"{env.get('os')} · {env.get('cpu')} · {env.get('logical_cpus')} "
            f"logical CPUs · {env.get('threads')} threads · torch "
            f"{v.get('torch')} · onnxruntime {v.get('onnxruntime')} · "
            f"coremltools {v.get('coremltools')}")


def markdown_report(run: Dict[str, Any]) -> str:
    env, cfg = run['environment'], run['config']
    h, w = cfg['resolution']
    parts = [
        f"# Backbone latency at {h}x{w}, batch 1",
        '',
        f"**Core ML:** {run['coreml_line']}",
        '',
        f"Machine: {environment_line(env)}. Warm-up {cfg['warmup']}, timed "
        f"runs {cfg['runs']}. Core ML packages: ML program, "
        f"{cfg['precision'].upper()} compute, FP32 input/output, minimum "
        f"deployment target {cfg['ios_target']}"
        + (f", compute unit {cfg['compute_unit']}" if run['coreml_runtime']
           else '') + '.',
        '',
        latency_table(run['results'], env),
        '',
        '## Core ML op census (device-independent)',
        '',
        census_table(run['results']),
        '',
        *[f"Adapted for {h}x{w}: {r['label']}: {r['adapted']}."
          for r in run['results'] if r.get('adapted')],
        '',
        'Proxy columns are CPU numbers from this machine, labelled as such; '
        'they are not Core ML latencies. The paper column is copied from the '
        'paper (iPhone 13), not measured here. Peers run in eval mode with '
        'random weights and BN left to the converters; iFormer runs '
        'switch_to_deploy() (BN folded).',
    ]
    return '\n'.join(parts) + '\n'


def write_json(run: Dict[str, Any], path: str) -> str:
    with open(path, 'w') as f:
        json.dump(run, f, indent=2, default=str)
    return path


def write_chart(run: Dict[str, Any], path: str) -> Optional[str]:
    """Horizontal bars: measured here (left), reported by the paper (right)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    results = run['results']
    labels = [r['label'] for r in results]
    series = []
    if run['coreml_runtime']:
        series.append(('Core ML', lambda r: ((r.get('coreml') or {})
                                             .get('timing'))))
    series += [
        ('ONNX Runtime CPU (proxy)',
         lambda r: (r.get('onnx') or {}).get('timing')),
        ('PyTorch eager CPU, fused (proxy)',
         lambda r: (r.get('torch') or {}).get('timing')),
    ]
    n = len(labels)
    fig, (ax, ax_paper) = plt.subplots(
        1, 2, figsize=(13, 2.4 + 0.3 * n * len(series)),
        gridspec_kw=dict(width_ratios=[3, 2]))
    height = 0.8 / len(series)
    for i, (name, get) in enumerate(series):
        values = [(get(r) or {}).get('median_ms') for r in results]
        ys = [k + (i - (len(series) - 1) / 2) * height for k in range(n)]
        bars = ax.barh(ys, [v or 0 for v in values], height=height,
                       label=name)
        for bar, v in zip(bars, values):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                    ' failed' if v is None else f' {v:.0f}', va='center',
                    fontsize=7)
    env = run['environment']
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel('median latency, ms (this machine)')
    title = (f"Measured here: {env.get('cpu', 'CPU')[:40]}, "
             f"{env.get('threads')} threads")
    if not run['coreml_runtime']:
        title += '\n(no Core ML runtime here: CPU proxies only)'
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.25),
              ncol=len(series), frameon=False)

    paper = [r.get('paper') for r in results]
    values = [p['iphone13_ms'] if p and not p['failed'] else 0
              for p in paper]
    bars = ax_paper.barh(range(n), values, color='tab:gray')
    for bar, p in zip(bars, paper):
        text = ' –' if not p else (' Failed' if p['failed'] else
                                   f" {p['iphone13_ms']:.2f}")
        ax_paper.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                      text, va='center', fontsize=7)
    ax_paper.set_yticks(range(n), [''] * n)
    ax_paper.invert_yaxis()
    ax_paper.set_xlabel('ms, iPhone 13, Core ML')
    ax_paper.set_title('Reported by the paper (not measured here)',
                       fontsize=9)
    h, w = run['config']['resolution']
    fig.suptitle(f'Backbone latency at {h}x{w}, batch 1', fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(fig)
    return path
