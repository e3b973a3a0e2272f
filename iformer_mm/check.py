"""Check that the iformer-mm stack is installed and works.

    python -m iformer_mm.check            # the whole stack (exit 1 if not)
    python -m iformer_mm.check --deploy   # the light install
    python -m iformer_mm.check --json     # machine-readable

The optional extras (``executorch``) are reported too, as installed and
working or not, without counting against the stack.

Each part is imported in this interpreter; torchvision's and mmcv's compiled
ops (NMS, RoIAlign) run against hand-computed values, and the installed
versions are compared with ``constraints.txt``. ``tools/install.py`` runs
this file as its probe before anything is installed, and loads it for the
version helpers: standard library only at import time.
"""
from __future__ import annotations

import os
import os.path as osp
import sys

if __name__ == '__main__' and sys.path and sys.path[0] and \
        osp.abspath(sys.path[0]) == osp.dirname(osp.abspath(__file__)):
    # run as a file (python iformer_mm/check.py): do not let this package's
    # folders (datasets, models, utils ...) shadow top-level packages
    sys.path.pop(0)

import argparse  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402

PKG_DIR = osp.dirname(osp.abspath(__file__))
DIST_NAME = 'iformer-mm'

#: distributions whose versions are reported
DISTS = ['pip', 'setuptools', 'wheel', 'ninja', 'torch', 'torchvision', 'mmcv',
         'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain', 'numpy',
         'opencv-python', 'opencv-python-headless', 'coremltools', 'onnx',
         'onnxruntime', 'pytest', 'timm', 'matplotlib', 'onedl-mim', 'scipy',
         'ftfy', 'regex', 'executorch', 'torchao', 'ruamel.yaml', DIST_NAME]

#: the checks of the whole stack and of the light install, in order
FULL = ['build-tools', 'torch', 'torchvision', 'mmcv', 'openmmlab', 'tools',
        'package', 'pins']
DEPLOY = ['torch', 'mmengine', 'backbone', 'export', 'pins']
#: optional extras (a distribution each): reported, never required; the
#: installer adds one with ``--with NAME``
EXTRAS = ['executorch']

#: pins that matter only for building mmcv (not checked by ``--deploy``)
BUILD_ONLY = ('setuptools', 'mmcv')


# ---------------------------------------------------------------------------
# Versions and constraints.txt
# ---------------------------------------------------------------------------
def find_constraints() -> str | None:
    """``constraints.txt`` of a source checkout, or the packaged copy."""
    for path in (osp.join(osp.dirname(PKG_DIR), 'constraints.txt'),
                 osp.join(PKG_DIR, '.mim', 'constraints.txt')):
        if osp.isfile(path):
            return path
    return None


def read_constraints(path: str | None = None) -> dict:
    """``{distribution: specifier}`` from a pip constraints or requirements
    file (``''`` for a name without a version)."""
    path = path or find_constraints()
    if path is None:
        raise FileNotFoundError('constraints.txt not found next to the '
                                'iformer_mm package nor in iformer_mm/.mim')
    out = {}
    with open(path) as fh:
        for line in fh:
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            m = re.match(r'^([A-Za-z0-9_.\-]+)\s*(.*)$', line)
            out[m.group(1).lower()] = m.group(2).replace(' ', '')
    return out


def vtuple(v: str | None) -> tuple:
    """``'2.13.0+cu130'`` -> ``(2, 13, 0)`` (release part, local dropped)."""
    if not v:
        return ()
    release = re.match(r'^\s*v?(\d+(?:\.\d+)*)', v.split('+')[0])
    return tuple(int(n) for n in release.group(1).split('.')) if release \
        else ()


def _cmp(a: tuple, b: tuple) -> int:
    n = max(len(a), len(b))
    a, b = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return (a > b) - (a < b)


def spec_ok(version: str | None, spec: str) -> bool:
    """Whether ``version`` is installed and satisfies a specifier such as
    ``>=1.26,<2.4`` (``''``: any version).

    Handles ``== != >= <= > < ~=`` on release numbers (what constraints.txt
    uses); ``==X`` ignores a local suffix such as ``+cpu``.
    """
    if version is None:
        return False
    have = vtuple(version)
    for part in filter(None, spec.split(',')):
        m = re.match(r'^(===|==|!=|>=|<=|>|<|~=)(.+)$', part)
        if not m:
            raise ValueError(f'unsupported specifier {part!r}')
        op, want = m.group(1), vtuple(m.group(2))
        c = _cmp(have, want)
        ok = {'==': c == 0, '===': c == 0, '!=': c != 0, '>=': c >= 0,
              '<=': c <= 0, '>': c > 0, '<': c < 0,
              '~=': c >= 0 and have[:len(want) - 1] == want[:-1]}[op]
        if not ok:
            return False
    return True


def outside_constraints(versions: dict, constraints: dict) -> list:
    """The installed distributions that violate ``constraints``."""
    return [d for d, spec in constraints.items()
            if versions.get(d) is not None and not spec_ok(versions[d], spec)]


def pin_problems(versions: dict, constraints: dict) -> list:
    """``'<dist> <version> (wants <spec>)'`` for each violated pin."""
    return [f'{d} {versions[d]} (wants {constraints[d]})'
            for d in outside_constraints(versions, constraints)]


def torchvision_for(torch_version: str) -> tuple:
    """The torchvision (major, minor) released with a torch version."""
    major, minor = vtuple(torch_version)[:2]
    return (0, minor + 1) if major == 1 else (0, minor + 15)


# ---------------------------------------------------------------------------
# The checks: each imports what it needs and raises if a part fails
# ---------------------------------------------------------------------------
def _ver(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


#: the parts that are checked by importing them
IMPORTS = {
    'openmmlab': ['mmdet', 'mmpretrain', 'mmpretrain.models', 'mmseg',
                  'mmseg.models'],
    'tools': ['coremltools', 'onnx', 'onnxruntime', 'pytest', 'timm'],
    'mmengine': ['mmengine', 'mmengine.model'],
    'export': ['coremltools', 'onnx', 'onnxruntime'],
}


def check_imports(modules, out):
    for name in modules:
        importlib.import_module(name)


def _boxes():
    import torch
    return (torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.],
                          [50., 50., 60., 60.]]),
            torch.tensor([0.9, 0.8, 0.7]))


def check_build_tools(out):
    import pkg_resources  # noqa: F401  (mmcv 2.1's setup.py needs it)
    import setuptools  # noqa: F401
    # installed in this environment (setuptools also puts a vendored wheel
    # on sys.path, and a ninja elsewhere on PATH may be gone tomorrow)
    assert _ver('wheel') and _ver('ninja'), 'wheel or ninja missing'


def check_torch(out):
    import torch
    out['torch_version'] = torch.__version__
    out['torch_cuda'] = torch.version.cuda
    out['cuda_available'] = bool(torch.cuda.is_available())


def check_torchvision(out):
    import torch
    import torchvision
    from torchvision.ops import nms
    out['torchvision_version'] = torchvision.__version__
    want = torchvision_for(torch.__version__)
    have = vtuple(torchvision.__version__)[:2]
    assert have == want, (
        f'torchvision {torchvision.__version__} is for another torch (torch '
        f'{torch.__version__} needs torchvision {want[0]}.{want[1]}.x)')
    boxes, scores = _boxes()
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [0, 2], keep


def check_mmcv(out):
    import mmcv
    import torch
    from mmcv.ops import RoIAlign, nms
    want = out['constraints'].get('mmcv')
    assert want is None or spec_ok(mmcv.__version__, want), \
        f'mmcv {mmcv.__version__} (wants {want})'
    boxes, scores = _boxes()
    _, keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [0, 2], keep
    # f(y, x) = 4y + x is linear, so an aligned RoIAlign bin is f at its
    # centre: (0.5, 0.5) -> 2.5, (0.5, 2.5) -> 4.5, ...
    feat = torch.arange(16.).view(1, 1, 4, 4)
    rois = torch.tensor([[0., 0., 0., 4., 4.]])
    y = RoIAlign((2, 2), 1.0, 1, aligned=True)(feat, rois)
    assert torch.allclose(y.flatten(), torch.tensor([2.5, 4.5, 10.5, 12.5])), y


def check_backbone(out):
    import torch

    from iformer_mm.models import IFormer
    model = IFormer(arch='t').eval()
    with torch.no_grad():
        feats = model(torch.zeros(1, 3, 64, 64))
    assert feats[-1].shape[-1] == 2, [tuple(f.shape) for f in feats]


def check_package(out):
    import iformer_mm
    origin = osp.realpath(iformer_mm.__file__)
    repo = out.get('repo')
    if repo:
        repo = osp.realpath(repo)
        assert origin.startswith(repo + os.sep), (
            f'iformer_mm is imported from {origin}, not from {repo}')
    assert _ver(DIST_NAME) is not None, DIST_NAME + ' is not installed'
    mim = osp.join(osp.dirname(origin), '.mim')
    missing = [n for n in ('configs', 'tools', 'model-index.yml')
               if not osp.exists(osp.join(mim, n))]
    assert not missing, (
        f'{mim} lacks {", ".join(missing)} (what mim and get_model read): '
        'pip install -e . (or python tools/install.py) puts them there')


def check_executorch(out):
    import executorch.exir  # noqa: F401  (the exporter)
    from executorch.runtime import Runtime
    backends = Runtime.get().backend_registry.registered_backend_names
    assert 'XnnpackBackend' in backends, \
        f'the runtime has no XnnpackBackend ({backends})'


def check_pins(out):
    cons = out['constraints']
    if out.get('deploy'):
        cons = {d: s for d, s in cons.items() if d not in BUILD_ONLY}
    bad = pin_problems(out['versions'], cons)
    assert not bad, 'outside constraints.txt: ' + '; '.join(bad)


CHECKS = {
    'build-tools': check_build_tools, 'torch': check_torch,
    'torchvision': check_torchvision, 'mmcv': check_mmcv,
    'package': check_package, 'pins': check_pins, 'backbone': check_backbone,
    'executorch': check_executorch,
    **{key: functools.partial(check_imports, modules)
       for key, modules in IMPORTS.items()},
}


def probe(keys=FULL, repo: str | None = None,
          constraints: str | None = None) -> dict:
    """Run the checks ``keys`` here; the result is JSON-serialisable.

    ``ok[key]`` is True / False; a check that needs torch is not run
    (absent from ``ok``) when torch does not import.
    """
    try:
        cons = read_constraints(constraints)
    except FileNotFoundError:
        cons = {}
    out = {'python': sys.version.split()[0], 'executable': sys.executable,
           'versions': {d: _ver(d) for d in DISTS}, 'constraints': cons,
           'ok': {}, 'err': {}, 'time': {}, 'repo': repo,
           'deploy': 'openmmlab' not in keys}
    for key in keys:
        if key not in ('build-tools', 'torch', 'pins') and \
                out['ok'].get('torch') is False:
            continue
        if key in EXTRAS and out['versions'].get(key) is None:
            continue  # an extra not installed: reported as such
        t = time.time()
        try:
            CHECKS[key](out)
            out['ok'][key] = True
        except BaseException as e:  # noqa: B036  (report, never crash)
            out['ok'][key] = False
            out['err'][key] = (type(e).__name__ + ': ' + str(e)).strip()[:600]
        out['time'][key] = round(time.time() - t, 2)
    return out


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------
def describe(key: str, st: dict) -> str:
    v = st['versions']
    return {
        'build-tools': f'setuptools {v.get("setuptools")}, wheel '
        f'{v.get("wheel")}, ninja {v.get("ninja")}',
        'torch': st.get('torch_version') or v.get('torch') or '-',
        'torchvision': v.get('torchvision') or '-',
        'mmcv': f'mmcv {v.get("mmcv")}: nms, RoIAlign',
        'openmmlab': ', '.join(f'{d} {v.get(d)}' for d in (
            'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain')),
        'tools': ', '.join(f'{d} {v.get(d)}' for d in (
            'coremltools', 'onnxruntime', 'timm', 'pytest')),
        'package': f'{DIST_NAME} {v.get(DIST_NAME)}',
        'pins': 'installed versions against constraints.txt',
        'mmengine': f'mmengine {v.get("mmengine")}',
        'backbone': 'IFormer-T forward',
        'export': ', '.join(f'{d} {v.get(d)}' for d in (
            'coremltools', 'onnx', 'onnxruntime')),
        'executorch': f'executorch {v.get("executorch")}: .pte export, '
        'runtime with XNNPACK',
    }[key]


def report(st: dict, keys, describe=describe) -> bool:
    """Print one line per check (``describe(key, st)`` says what it covers)
    and the error of each failed one; return whether all passed."""
    print(f'python {st["python"]} ({st["executable"]})')
    for key in keys:
        ok = st['ok'].get(key)
        mark = 'ok ' if ok else ('-- ' if ok is None else 'BAD')
        print(f'  [{mark}] {key:<12} {describe(key, st)}')
        if ok is False:
            print('        ' + st['err'].get(key, '')[:300])
    return all(st['ok'].get(k) for k in keys)


def report_extras(st: dict) -> None:
    """One line per optional extra: working, broken or not installed."""
    for key in EXTRAS:
        if st['versions'].get(key) is None:
            print(f'  [-- ] {key:<12} optional extra, not installed: '
                  f'pip install -e ".[{key}]"')
            continue
        ok = st['ok'].get(key)
        print(f'  [{"ok " if ok else "BAD"}] {key:<12} {describe(key, st)} '
              '(optional extra)')
        if ok is False:
            print('        ' + st['err'].get(key, '')[:300])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog='python -m iformer_mm.check',
        description='Check that the iformer-mm stack works (exit 0) or '
        'report what is missing (exit 1).')
    p.add_argument('--deploy', action='store_true',
                   help='check the light install (pip install ".[deploy]"): '
                   'torch, mmengine, IFormer, coremltools, onnx, onnxruntime')
    p.add_argument('--json', action='store_true',
                   help='print one JSON object instead of the table')
    p.add_argument('--repo', default=None,
                   help='also require iformer_mm to be imported from here')
    p.add_argument('--constraints', default=None,
                   help='constraints file (default: the package\'s '
                   'constraints.txt)')
    args = p.parse_args(argv)
    keys = DEPLOY if args.deploy else FULL
    st = probe(keys + EXTRAS, repo=args.repo, constraints=args.constraints)
    if args.json:
        print('@@PROBE@@' + json.dumps(st))
        return 0 if all(st['ok'].get(k) for k in keys) else 1
    good = report(st, keys)
    report_extras(st)
    print('everything works' if good else
          'incomplete: python tools/install.py installs and repairs the '
          'stack (README, Installation)')
    return 0 if good else 1


if __name__ == '__main__':
    sys.exit(main())
