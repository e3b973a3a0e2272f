#!/usr/bin/env python
"""Core ML program size: this project's iFormer against the authors' own
network, converted the same way in the same run.

    python benchmarks/coreml_vs_authors.py --authors-repo /path/to/iFormer
    python benchmarks/coreml_vs_authors.py --authors-repo ... --archs m
    python benchmarks/coreml_vs_authors.py --sweep     # ours only, T-H x layouts

Nothing is downloaded: ``--authors-repo`` is a checkout of the authors'
code (github.com/nirvanesque/iFormer) that you made. From it the script
imports ``detection/iformer.py`` (the Mask R-CNN backbones ``iFormer_m``,
``iFormer_l``, ``iFormer_l2`` and their ``_faster`` SDPA twins), folds
their BatchNorms with their own ``replace_batchnorm`` (read from
``detection/utils.py``), and converts both networks through this project's
pipeline: ``torch.export`` -> ``coremltools`` ML program (FP16, iOS17) ->
op census. It prints total ops, reshape/transpose/concat/split counts and
bytes rearranged side by side, and checks that our ``authors`` layout is the
same function as theirs (their weights loaded into ours, outputs compared).
It also checks that the released-code latency comments the tool cites are
where the tool says they are.

``--sweep`` converts every arch T-H in every layout of ours and checks each
against the op-count budgets pinned in :data:`iformer_mm.deploy.census.
OP_BUDGETS` (the test suite pins a subset; this is the full check). Exit
code 1 when a budget is exceeded or a target is missed.
"""
import argparse
import ast
import contextlib
import importlib.util
import io
import os
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from iformer_mm.deploy.backbones import (IFORMER_ARCHS,  # noqa: E402
                                         IFORMER_LAYOUTS,
                                         PUBLISHED_LATENCIES,
                                         resolve_backbone)
from iformer_mm.deploy.census import (OP_BUDGETS,  # noqa: E402
                                      census_of_module)

THEIRS = {'m': ('iFormer_m', 'iFormer_m_faster'),
          'l': ('iFormer_l', 'iFormer_l_faster'),
          'l2': ('iFormer_l2', 'iFormer_l2_faster')}


def fail(message: str) -> None:
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


# --------------------------------------------------------------------------
# The authors' code, loaded from the user's checkout.
# --------------------------------------------------------------------------
def load_authors_module(repo: str):
    """Import ``detection/iformer.py`` of the checkout. Its imports of
    mmdet / mmengine are used for a registry decorator, a logger and a
    checkpoint loader only; where mmdet is not importable, a stand-in
    registry with the same ``register_module()`` decorator is used."""
    path = os.path.join(repo, 'detection', 'iformer.py')
    if not os.path.isfile(path):
        fail(f'{path} not found: --authors-repo must be a checkout of the '
             "authors' iFormer code (it has detection/iformer.py).")
    try:
        import mmdet.registry  # noqa: F401
        note = 'mmdet.registry.MODELS'
    except Exception:  # noqa: BLE001  (no or broken mmdet: stand in)
        registry = types.ModuleType('mmdet.registry')

        class _Models:
            @staticmethod
            def register_module(*args, **kwargs):
                return lambda obj: obj
        registry.MODELS = _Models()
        package = sys.modules.setdefault('mmdet', types.ModuleType('mmdet'))
        package.registry = registry
        sys.modules['mmdet.registry'] = registry
        note = 'a stand-in for mmdet.registry.MODELS (mmdet not importable)'
    import logging

    from mmengine.logging import MMLogger
    # Their constructor logs every key it did not load at INFO.
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    spec = importlib.util.spec_from_file_location('authors_det_iformer',
                                                  path)
    module = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(io.StringIO()):
        spec.loader.exec_module(module)
    return module, note


def load_replace_batchnorm(repo: str):
    """The authors' ``replace_batchnorm`` from ``detection/utils.py``, read
    with ``ast`` (importing the whole file needs tensorboardX)."""
    path = os.path.join(repo, 'detection', 'utils.py')
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and \
                node.name == 'replace_batchnorm':
            namespace = {'torch': torch}
            exec(compile(ast.Module([node], []), path, 'exec'), namespace)
            return namespace['replace_batchnorm']
    fail(f'No replace_batchnorm in {path}.')


def build_theirs(module, name: str, empty_ckpt: str) -> torch.nn.Module:
    """Their backbone with random weights: their constructor insists on a
    checkpoint, so it gets an empty one (nothing is loaded)."""
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        model = getattr(module, name)(
            init_cfg=dict(checkpoint=empty_ckpt), out_indices=[0, 1, 2, 3])
    # Random BN statistics so that folding is not the identity.
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()  # their train() override returns None, not the module
    return model


def check_released_comments(repo: str) -> list:
    """Each released-code figure the tool cites: is its comment right above
    that function in that file?"""
    lines = []
    for figure in PUBLISHED_LATENCIES:
        if figure.table is not None:
            continue
        path = os.path.join(repo, figure.file)
        with open(path) as f:
            text = f.read().splitlines()
        index = next((i for i, line in enumerate(text)
                      if line.startswith(f'def {figure.function}(')), None)
        above = [t.strip() for t in text[max(0, (index or 0) - 3):index or 0]]
        ok = index is not None and figure.quote in above
        lines.append(f'| {figure.key} | {figure.ms} ms | {figure.file}, '
                     f'{figure.function} | "{figure.quote}" | '
                     f'{"found above the function" if ok else "NOT FOUND"} |')
    return lines


# --------------------------------------------------------------------------
# Conversion and the table.
# --------------------------------------------------------------------------
def row(label: str, census: dict, seconds: float) -> str:
    return (f"| {label} | {census['total_ops']} | {census['reshape']} | "
            f"{census['transpose']} | {census['concat']} | "
            f"{census['split']} | {census['rearrange_bytes'] / 1e6:.1f} | "
            f'{seconds:.0f} |')


HEADER = ('| program | ops | reshape | transpose | concat | split | '
          'rearranged MB | convert s |\n|---|---|---|---|---|---|---|---|')


def ours(key: str):
    from iformer_mm.deploy.export import prepare_for_deploy
    torch.manual_seed(0)
    model, _ = prepare_for_deploy(resolve_backbone(key).build())
    return model


def compare_function(module, name: str, key: str, replace_batchnorm,
                     empty_ckpt: str, size: int) -> str:
    """Their weights in our network: max |difference| of the 4 outputs
    (both BN-folded, FP32, eager)."""
    from iformer_mm.models.checkpoint import convert_to_ours
    theirs = build_theirs(module, name, empty_ckpt)
    state = convert_to_ours(theirs.state_dict())
    torch.manual_seed(0)
    mine = resolve_backbone(key).build().eval()
    missing, unexpected = mine.load_state_dict(state, strict=False)
    if missing or unexpected:
        return (f'keys differ ({len(missing)} missing, {len(unexpected)} '
                'unexpected)')
    replace_batchnorm(theirs)
    mine.switch_to_deploy()
    x = torch.randn(1, 3, size, size, generator=torch.Generator()
                    .manual_seed(1))
    theirs.eval()
    mine.eval()
    with torch.no_grad():
        a, b = theirs(x), mine(x)
    diff = max(float((p - q).abs().max()) for p, q in zip(a, b))
    return f'max |diff| {diff:.1e}'


def compare_authors(args) -> int:
    module, note = load_authors_module(args.authors_repo)
    replace_batchnorm = load_replace_batchnorm(args.authors_repo)
    print(f"Authors' code: {args.authors_repo} (detection/iformer.py, BN "
          'folded by their detection/utils.py replace_batchnorm; loaded '
          f'with {note}).')
    print(f'Pipeline: torch.export -> coremltools ML program, FP16, iOS17, '
          f'{args.size}x{args.size}, op census (this project). Machine: '
          f'{os.cpu_count()} CPUs, torch {torch.__version__}.\n')
    empty = os.path.join(tempfile.mkdtemp(prefix='iformer_authors_'),
                         'empty.pth')
    torch.save({}, empty)
    missed = []
    summary = ['| arch | ops ours / theirs | rearranged bytes ours / theirs |'
               ' target (<=) |', '|---|---|---|---|']
    for arch in args.archs:
        print(f'### iFormer-{arch.upper()}\n')
        print(HEADER)
        pairs = [('authors', THEIRS[arch][0])]
        if args.faster:
            pairs.append(('authors-fa', THEIRS[arch][1]))
        results = {}
        for layout, name in pairs:
            key = f'iformer-{arch}:{layout}'
            if not hasattr(module, name):
                # detection/iformer.py has no iFormer_l2_faster (the one in
                # models/iformer.py is another network: other widths).
                print(f'| theirs: {name} | not in detection/iformer.py | '
                      '| | | | | |')
            builds = [(f'ours: {key}', lambda: ours(key))]
            if hasattr(module, name):
                builds.insert(0, (f'theirs: {name}', lambda: _folded_theirs(
                    module, name, replace_batchnorm, empty)))
            for who, build in builds:
                t0 = time.perf_counter()
                try:
                    census = census_of_module(build(), args.size)
                except Exception as exc:  # noqa: BLE001  (reported)
                    print(f'| {who} | failed: {type(exc).__name__}: '
                          f'{str(exc).splitlines()[0][:120]} | | | | | | |')
                    continue
                results[who] = census
                print(row(who, census, time.perf_counter() - t0), flush=True)
            if args.check_function and hasattr(module, name):
                print(f'\nSame function ({key} vs {name}, their weights in '
                      'ours): ' + compare_function(
                          module, name, key, replace_batchnorm, empty,
                          args.size))
        print()
        a = results.get(f'ours: iformer-{arch}:authors')
        b = results.get(f'theirs: {THEIRS[arch][0]}')
        if a and b:
            ok = (a['total_ops'] <= b['total_ops'] and
                  a['rearrange_bytes'] <= b['rearrange_bytes'])
            summary.append(
                f"| {arch.upper()} | {a['total_ops']} / {b['total_ops']} | "
                f"{a['rearrange_bytes']} / {b['rearrange_bytes']} | "
                f"{'met' if ok else 'MISSED'} |")
            if not ok:
                missed.append(arch)
    print('\n'.join(summary))
    print('\nReleased-code latency comments cited by the tool:\n')
    print('| backbone | figure | where | comment | check |\n'
          '|---|---|---|---|---|')
    comments = check_released_comments(args.authors_repo)
    print('\n'.join(comments))
    bad = [c for c in comments if 'NOT FOUND' in c]
    return 1 if missed or bad else 0


def _folded_theirs(module, name, replace_batchnorm, empty):
    model = build_theirs(module, name, empty)
    replace_batchnorm(model)
    model.eval()
    return model


def sweep(args) -> int:
    print(f'Our layouts at {args.size}x{args.size} against OP_BUDGETS '
          '(iformer_mm/deploy/census.py).\n')
    print('| backbone | ops | budget | reshape | transpose | concat | split |'
          ' rearranged MB | convert s | check |\n|' + '---|' * 10)
    over = 0
    for arch in args.archs_sweep:
        for layout in args.layouts:
            key = f'iformer-{arch}:{layout}'
            t0 = time.perf_counter()
            try:
                census = census_of_module(ours(key), args.size)
            except Exception as exc:  # noqa: BLE001  (reported)
                print(f'| {key} | failed: {type(exc).__name__}: '
                      f'{str(exc).splitlines()[0][:100]} |')
                over += 1
                continue
            budget = OP_BUDGETS.get(key) if args.size == 512 else None
            check = '–' if budget is None else (
                'ok' if census['total_ops'] <= budget else 'OVER')
            over += check == 'OVER'
            print(f"| {key} | {census['total_ops']} | {budget or '–'} | "
                  f"{census['reshape']} | {census['transpose']} | "
                  f"{census['concat']} | {census['split']} | "
                  f"{census['rearrange_bytes'] / 1e6:.1f} | "
                  f'{time.perf_counter() - t0:.0f} | {check} |', flush=True)
    return 1 if over else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--authors-repo', metavar='PATH',
                   help="a checkout of the authors' iFormer code")
    p.add_argument('--archs', nargs='+', default=['m', 'l', 'l2'],
                   choices=sorted(THEIRS))
    p.add_argument('--size', type=int, default=512)
    p.add_argument('--no-faster', dest='faster', action='store_false',
                   help="skip the SDPA twins (iFormer_*_faster vs "
                   'authors-fa)')
    p.add_argument('--no-check-function', dest='check_function',
                   action='store_false',
                   help='skip loading their weights into ours')
    p.add_argument('--sweep', action='store_true',
                   help='convert every arch x layout of ours and check the '
                   'op budgets')
    p.add_argument('--archs-sweep', nargs='+', default=list(IFORMER_ARCHS),
                   choices=IFORMER_ARCHS)
    p.add_argument('--layouts', nargs='+', default=list(IFORMER_LAYOUTS),
                   choices=sorted(IFORMER_LAYOUTS))
    args = p.parse_args(argv)
    if args.size < 32 or args.size % 32:
        fail(f'--size must be a multiple of 32, got {args.size}.')
    if not args.authors_repo and not args.sweep:
        fail("pass --authors-repo PATH (a checkout of the authors' code) "
             'and/or --sweep.')
    rc = 0
    if args.authors_repo:
        if not os.path.isdir(args.authors_repo):
            fail(f'--authors-repo {args.authors_repo!r} is not a folder.')
        rc |= compare_authors(args)
    if args.sweep:
        rc |= sweep(args)
    return rc


if __name__ == '__main__':
    sys.exit(main())
