"""Markdown tables, JSON and the bar chart of a latency run."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from .macos import placement_lines

ONNX_TOLERANCE = 1e-3
#: Column header of the predicted latency: never mistaken for a measurement.
PREDICTED_HEADER = ('predicted {device} (Core ML) ms, not measured '
                    '(the error measured for programs of its kind)')


def _ms(value: Optional[float]) -> str:
    if value is None:
        return '–'
    return f'{value:.2f}' if value < 100 else f'{value:.0f}'


def _timing_cell(timing: Optional[Dict[str, Any]]) -> str:
    if not timing:
        return '–'
    return (f"{_ms(timing['median_ms'])} / {_ms(timing['p90_ms'])} / "
            f"{_ms(timing['min_ms'])}")


def _figure_value(figure: Dict[str, Any]) -> str:
    """A published figure's milliseconds, or the paper's "Failed"."""
    return 'Failed' if figure['failed'] else f"{figure['iphone13_ms']:.2f}"


def _figure_text(figure: Dict[str, Any]) -> str:
    return f"{_figure_value(figure)} ({figure['source']})"


def _paper_cell(paper: Optional[List[Dict[str, Any]]]) -> str:
    """Published figures at this run's size (the caller keeps only those)."""
    if not paper:
        return '–'
    return '; '.join(_figure_text(f) for f in paper)


def predicted_cell(pred: Optional[Dict[str, Any]]) -> str:
    """The prediction with the error measured for programs of its kind,
    e.g. ``4.12 (predicted; held-out err 14% median, 243% max: held-out,
    Table 5 at 512x512)``, or with "not validated for this kind of
    network (why)" when no error was measured for it."""
    if not pred:
        return '–'
    if pred.get('status') != 'predicted':
        return f"no prediction ({pred.get('error', 'not converted')[:60]})"
    val = pred.get('validation') or {}
    if val.get('scope'):
        note = (f"predicted; err {val['median_abs_pct']:.0f}% median, "
                f"{val['max_abs_pct']:.0f}% max ({val['about']})")
    else:
        note = f"predicted; {val.get('reason', 'not validated')}"
    return f"{'Failed' if pred['failed'] else _ms(pred['ms'])} ({note})"


def program_line(results: List[Dict[str, Any]]) -> str:
    """What was converted and timed, per kind of program."""
    kinds: Dict[str, List[str]] = {}
    for r in results:
        program = r.get('program')
        if program:
            text = ('classifier (whole network, head included, one output)'
                    if program['kind'] == 'classifier' else
                    f"dense backbone ({program.get('outputs', '?')} "
                    'feature maps)')
            kinds.setdefault(text, []).append(r['label'])
    return '; '.join(f"{k}: {', '.join(v)}" for k, v in kinds.items())


def _pct(value: Optional[float]) -> str:
    return '–' if value is None else f'{100 * value:.1f}%'


def _failure(result: Dict[str, Any]) -> Optional[str]:
    if result.get('status') == 'failed':
        reason = result.get('error', '').splitlines()[0][:160]
        return f"failed at {result.get('failed_stage')}: {reason}"
    if result.get('status') == 'skipped':
        return f"skipped: {result.get('reason', '')[:160]}"
    return None


def coreml_cell(result: Dict[str, Any]) -> str:
    coreml = result.get('coreml') or {}
    status = coreml.get('status')
    if status == 'timed':
        timing = coreml['timing']
        return (f"{_ms(timing['median_ms'])} median / "
                f"{_ms(timing['mean_ms'])} ± {_ms(timing['std_ms'])} mean "
                f"({timing['predictions']} predictions)")
    if status in ('converted', 'validated'):
        return 'not timed (no Core ML runtime)'
    if status == 'failed':
        return f"conversion failed: {coreml.get('error', '')[:80]}"
    return 'skipped'


def predicted_header(results: List[Dict[str, Any]]) -> str:
    devices = [p['device'] for r in results
               for p in [(r.get('coreml') or {}).get('predicted') or {}]
               if p.get('device')]
    return PREDICTED_HEADER.format(device=devices[0] if devices
                                   else 'iPhone 13')


def executorch_header(results: List[Dict[str, Any]], delegate: str) -> str:
    """The ExecuTorch column's header: what ran, on how many threads (as
    the runtime reports them)."""
    timed = [r['executorch'] for r in results
             if (r.get('executorch') or {}).get('threads')]
    backend = next((r['executorch']['backend'] for r in results
                    if r.get('executorch')), f'ExecuTorch {delegate}')
    threads = f", {timed[0]['threads']} thr" if timed else ''
    return f'{backend}{threads} ms'


def executorch_cell(result: Dict[str, Any]) -> str:
    pte = result.get('executorch') or {}
    status = pte.get('status')
    if status == 'timed':
        diff, limit = pte['max_abs_diff'], pte['check']['tolerance']
        flag = '' if diff <= limit else f' (diff {diff:.1e} > {limit:.0e}!)'
        return _timing_cell(pte['timing']) + flag
    if status == 'exported':
        return 'not timed (this runtime cannot run the delegate)'
    if status == 'checked':
        return ('not timed: ' + pte['timing_error'][:80]
                if pte.get('timing_error') else 'not timed (--no-timing)')
    if status == 'failed':
        return f"export failed: {pte.get('error', '')[:80]}"
    return 'skipped'


def latency_table(results: List[Dict[str, Any]], env: Dict[str, Any],
                  size: str = '512x512',
                  executorch: Optional[str] = None) -> str:
    """The main table; with ``executorch`` (the delegate) it has an
    ExecuTorch column after ONNX Runtime's."""
    threads = env.get('threads', '?')
    et_head = (f' {executorch_header(results, executorch)} |'
               if executorch else '')
    head = ('| Backbone | Params (M) | GFLOPs | Core ML ms | '
            f'ONNX Runtime CPU, {threads} thr, proxy ms |{et_head} '
            f'PyTorch eager CPU NCHW, {threads} thr, proxy ms | '
            'PyTorch eager CPU channels_last, proxy ms | '
            f'{predicted_header(results)} | BN fold (eager) | '
            'share of measured fp32 GEMM rate (ORT / NCHW / NHWC) | '
            'ONNX vs PyTorch max abs diff | '
            f'Published iPhone 13 Core ML ms at {size} (source) |')
    lines = [head, '|' + '---|' * (13 if executorch else 12)]
    for r in results:
        failure = _failure(r)
        params = f"{r['params_m']:.1f}" if r.get('params_m') else '–'
        flops = f"{r['flops'] / 1e9:.2f}" if r.get('flops') else '–'
        onnx = r.get('onnx') or {}
        torch_rows = r.get('torch') or {}
        diff = onnx.get('max_abs_diff')
        diff_cell = '–' if diff is None else (
            f'{diff:.1e}' + ('' if diff <= ONNX_TOLERANCE else ' (> 1e-3!)'))
        paper = _paper_cell(r.get('paper'))
        if failure and not torch_rows:
            lines.append(f"| {r['label']} | {params} | {flops} | {failure} | "
                         + '– | ' * (8 if executorch else 7) + f'{paper} |')
            continue
        core = coreml_cell(r) if not failure else failure
        shares = r.get('gemm_fraction') or {}
        share_cell = ' / '.join(_pct(shares.get(k)) for k in (
            'onnxruntime', 'torch_nchw', 'torch_channels_last'))
        lines.append(
            f"| {r['label']} | {params} | {flops} | {core} | "
            f"{_timing_cell(onnx.get('timing'))} | "
            + (f'{executorch_cell(r)} | ' if executorch else '') +
            f"{_timing_cell(torch_rows.get('timing'))} | "
            f"{_timing_cell(torch_rows.get('channels_last'))} | "
            f"{predicted_cell((r.get('coreml') or {}).get('predicted'))} | "
            f"{_fold_cell(torch_rows)} | {share_cell} | "
            f"{diff_cell} | {paper} |")
    return '\n'.join(lines)


def _fold_cell(torch_rows: Dict[str, Any]) -> str:
    info = torch_rows.get('fold_info')
    if not info:
        return '–'
    text = torch_rows.get('fold', '–')
    total, left = info.get('batchnorms', 0), info.get('left', 0)
    if total:
        how = ('torch.fx' if info.get('method', '').startswith('torch.fx')
               else 'structural pass')
        text += f' ({total - left}/{total} BN folded, {how})'
    else:
        text += ' (no BatchNorm left to fold)'
    if info.get('error'):
        text += f": {info['error'][:80]}"
    return text


def published_notes(results: List[Dict[str, Any]]) -> List[str]:
    """The notes of the published figures shown (each once)."""
    seen, lines = set(), []
    for r in results:
        for figure in r.get('paper') or []:
            note = figure.get('note')
            if note and (r['label'], note) not in seen:
                seen.add((r['label'], note))
                lines.append(f"- {r['label']}: {note}")
    return lines


def _timing_line(label: str, coreml: Dict[str, Any]) -> str:
    """One backbone's Core ML statistics: per prediction, as Core ML's
    MLModelBenchmarker and Xcode give them."""
    t = coreml['timing']
    diff = coreml.get('max_abs_diff')
    return (f"- {label} on {t['device']} ({t['compute_unit']}), "
            f"{t['predictions']} predictions: median {t['median_ms']:.2f} ms, "
            f"mean {t['mean_ms']:.2f} ± {t['std_ms']:.2f} ms, min "
            f"{t['min_ms']:.2f}, max {t['max_ms']:.2f}, trimmed mean "
            f"{t['trimmed_mean_ms']:.2f} ms; first load in this run "
            f"{t['first_load_ms']:.0f} ms (not a cold load)"
            + ('' if diff is None else
               f'; max abs diff vs PyTorch {diff:.1e}') + '.')


def coreml_timing_lines(results: List[Dict[str, Any]]) -> List[str]:
    """Per-backbone Core ML statistics and op placement (macOS); the raw
    samples are in the JSON."""
    lines = []
    for r in results:
        coreml = r.get('coreml') or {}
        if coreml.get('timing_error'):
            lines.append(f"- {r['label']}: Core ML timing failed: "
                         f"{coreml['timing_error'][:160]}")
        if not coreml.get('timing'):
            continue
        lines.append(_timing_line(r['label'], coreml))
        if coreml.get('placement'):
            lines += ['  ' + line for line in
                      placement_lines(coreml['placement'])]
        elif coreml.get('placement_error'):
            lines.append('  Op placement not read: '
                         f"{coreml['placement_error'][:200]}.")
        if coreml['timing'].get('unload_error'):
            lines.append('  The model could not be unloaded: '
                         f"{coreml['timing']['unload_error'][:200]}.")
    return lines


def executorch_table(results: List[Dict[str, Any]]) -> str:
    """Per backbone: the .pte, its size, export and lowering times, the
    ops left to ExecuTorch's portable kernels and the check against
    PyTorch."""
    lines = ['| Backbone | delegate | .pte MiB | torch.export s | '
             'lowering s | ops outside the delegate | max abs diff vs '
             'PyTorch (tolerance) | runtime threads |', '|' + '---|' * 8]
    for r in results:
        pte = r.get('executorch')
        if not pte:
            continue
        if pte.get('status') == 'failed' and not pte.get('path'):
            lines.append(f"| {r['label']} | {pte['delegate']} | "
                         f"{pte.get('error', '')[:160]} | | | | | |")
            continue
        check = pte.get('check')
        diff = ('not run here' if not check else
                f"{pte.get('max_abs_diff', check['max_abs_diff']):.1e} "
                f"({check['tolerance']:.0e})")
        ops = ', '.join(o.split('::')[-1] for o in pte.get('portable_ops', []))
        threads = (f"{pte['threads']} ({pte['threads_note']})"
                   if pte.get('threads') else '–')
        lines.append(
            f"| {r['label']} | {pte['delegate']} | "
            f"{pte['size_bytes'] / 2**20:.1f} | {pte['torch_export_s']:.1f} | "
            f"{pte['lower_s']:.1f} | {ops or 'none'} | {diff} | {threads} |")
    return '\n'.join(lines)


def census_table(results: List[Dict[str, Any]]) -> str:
    lines = ['| Backbone | Core ML ops | reshape | transpose | concat | '
             'split | rearranged MiB | largest transpose KiB | weights (MiB) '
             '| .mlpackage |',
             '|' + '---|' * 10]
    for r in results:
        coreml = r.get('coreml') or {}
        census = coreml.get('census')
        if not census:
            why = coreml.get('error') or _failure(r) or 'not converted'
            lines.append(f"| {r['label']} | {why[:100]} | | | | | | | | |")
            continue
        package = coreml.get('package') or '–'
        # the package as <backbone folder>/model.mlpackage
        where = os.path.relpath(package,
                                os.path.dirname(os.path.dirname(package)))
        moved = census.get('rearrange_bytes', 0) / 2**20
        largest = census.get('largest_bytes_by_op', {}).get(
            'transpose', 0) / 2**10
        lines.append(
            f"| {r['label']} | {census['total_ops']} | {census['reshape']} | "
            f"{census['transpose']} | {census['concat']} | {census['split']} "
            f"| {moved:.1f} | {largest:.0f} | {census['weight_mib']:.1f} | "
            f'{where} |')
    return '\n'.join(lines)


def environment_line(env: Dict[str, Any]) -> str:
    v = env.get('versions', {})
    return (f"{env.get('os')} · {env.get('cpu')} · {env.get('logical_cpus')} "
            f"logical CPUs · {env.get('threads')} threads · torch "
            f"{v.get('torch')} · onnxruntime {v.get('onnxruntime')} · "
            f"coremltools {v.get('coremltools')}"
            + (f" · executorch {v['executorch']}" if v.get('executorch')
               else ''))


def markdown_report(run: Dict[str, Any]) -> str:
    env, cfg = run['environment'], run['config']
    h, w = cfg['resolution']
    gemm = run.get('gemm')
    notes = published_notes(run['results'])
    timing_lines = coreml_timing_lines(run['results'])
    parts = [
        f"# Backbone latency at {h}x{w}, batch 1",
        '',
        f"**Core ML:** {run['coreml_line']}",
        *([f"**ExecuTorch ({cfg['executorch_delegate']}):** "
           f"{run['executorch_line']}"] if run.get('executorch_line')
          else []),
        *[f'- {line}' for line in run.get('macos_notes') or []],
        '',
        f"Machine: {environment_line(env)}. Proxies: warm-up {cfg['warmup']}"
        f", timed runs {cfg['runs']}, ms as median / p90 / min. Core ML "
        f"packages: ML program, {cfg['precision'].upper()} compute, input "
        f"{cfg.get('input_type', 'tensor')}, FP32 outputs, minimum "
        f"deployment target {cfg['ios_target']}"
        + (f", compute units {cfg['compute_unit']}" if run['coreml_runtime']
           else '') + '.',
        '',
        latency_table(run['results'], env, f'{h}x{w}',
                      cfg['executorch_delegate'] if cfg.get('executorch')
                      else None),
        '',
        f"Programs: {program_line(run['results'])}.",
        '',
    ]
    verdict = (run.get('predictor') or {}).get('verdict')
    if verdict:
        parts += [f'**Predicted column vs the CPU proxies** (each proxy with '
                  f'one fitted scale; benchmarks/latency_predictor.py, stored '
                  f'with the fit): {verdict}', '']
    if run['coreml_runtime']:
        parts += [f"Core ML timing protocol: "
                  f"{cfg['protocol']['description']}.", '', *timing_lines,
                  '']
    if gemm:
        parts += [f"fp32 GEMM rate measured in this run: "
                  f"{gemm['flops_per_s'] / 1e9:.1f} GFLOP/s "
                  f"({gemm['size']}x{gemm['size']} torch.mm, best of "
                  f"{gemm['repeats']}, {gemm['threads']} threads). GFLOPs "
                  'count a multiply-add as 2 (torch FlopCounterMode: '
                  'convolutions and matmuls).', '']
    if cfg.get('executorch'):
        parts += ['## ExecuTorch programs (.pte)', '',
                  executorch_table(run['results']), '',
                  'Ops outside the delegate run on ExecuTorch\'s portable '
                  '(reference) kernels. The XNNPACK column times the same '
                  'kernels an Android phone runs, on this x86 CPU: a proxy, '
                  'not a phone latency.', '']
    parts += [
        '## Core ML op census (device-independent)',
        '',
        census_table(run['results']),
        '',
        *[f"Adapted for {h}x{w}: {r['label']}: {r['adapted']}."
          for r in run['results'] if r.get('adapted')],
        '',
        'Proxy columns are CPU numbers from this machine, labelled as such; '
        'they are not Core ML latencies. Published figures are copied from '
        'the paper or the authors\' released code (not measured here) and '
        f'are shown only beside the network and input size ({h}x{w}) they '
        'were measured for. "fused" means that no BatchNorm is left in the '
        'timed PyTorch module: iFormer runs switch_to_deploy(), every '
        'network then goes through the same torch.fx Conv-BN folding pass; '
        'a network that pass cannot trace is labelled "unfused".',
    ]
    if notes:
        parts += ['', 'Notes on the published figures:', *notes]
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
    series.append(('ONNX Runtime CPU (proxy)',
                   lambda r: (r.get('onnx') or {}).get('timing')))
    timed = [r['executorch'] for r in results
             if (r.get('executorch') or {}).get('timing')]
    if timed:
        series.append((timed[0]['backend'], lambda r: (
            r.get('executorch') or {}).get('timing')))
    series += [
        ('PyTorch eager CPU, NCHW (proxy)',
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

    # The first published figure at this size of each network.
    paper = [(r.get('paper') or [None])[0] for r in results]
    values = [p['iphone13_ms'] if p and not p['failed'] else 0
              for p in paper]
    bars = ax_paper.barh(range(n), values, color='tab:gray')
    for bar, p in zip(bars, paper):
        text = ' ' + (_figure_value(p) if p else '–')
        ax_paper.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                      text, va='center', fontsize=7)
    ax_paper.set_yticks(range(n), [''] * n)
    ax_paper.invert_yaxis()
    ax_paper.set_xlabel('ms, iPhone 13, Core ML')
    ax_paper.set_title('Published (paper / released code; not measured here)',
                       fontsize=9)
    h, w = run['config']['resolution']
    fig.suptitle(f'Backbone latency at {h}x{w}, batch 1', fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(fig)
    return path
