"""Declared dependencies, the packaged .mim folder, the installer's pins,
the functional probe and the model index.

One file of pins (constraints.txt) is read by setup.py (through
requirements/*.txt), tools/install.py, iformer_mm/check.py and the stack
test; these tests hold them together.
"""
import importlib.util
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from iformer_mm import check

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_installer():
    spec = importlib.util.spec_from_file_location(
        '_installer_under_test', osp.join(REPO, 'tools', 'install.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def requirements(name):
    with open(osp.join(REPO, 'requirements', name + '.txt')) as fh:
        return [Requirement(line.split('#')[0].strip()) for line in fh
                if line.split('#')[0].strip()]


# --------------------------------------------------------------------------
# the version checks against an independent reference (packaging)
# --------------------------------------------------------------------------
VERSIONS = ['1.25.2', '1.26.0', '2.3.5', '2.4.0', '2.4.1', '4.12.0.88',
            '5.0.0', '2.1.0', '2.1.1', '2.2.0', '80.9.0', '81.0.0',
            '77.0.3', '77.0.2', '0.10.7', '1.0.0', '2.13.0+cu130',
            '2.13.0+cpu', '2.13.1', '3.3.0']
SPECS = ['>=1.26,<2.4', '<5', '>=4.5,<5', '==2.1.0', '>=77.0.3,<81',
         '>=0.10.4,<1.0.0', '==2.13.0', '!=2.2.0', '>2.1', '<=3.3.0']


@pytest.mark.parametrize('spec', SPECS)
def test_spec_ok_matches_packaging(spec):
    ref = SpecifierSet(spec)
    for v in VERSIONS:
        # packaging ignores a local suffix (+cu130) for == and ranges
        assert check.spec_ok(v, spec) == ref.contains(v, prereleases=True), (
            v, spec)


def test_read_constraints_and_pin_problems(tmp_path):
    path = tmp_path / 'c.txt'
    path.write_text('# comment\nnumpy>=1.26, <2.4  # trailing\n\n'
                    'Opencv-Python<5\nmmcv==2.1.0\n')
    cons = check.read_constraints(str(path))
    assert cons == {'numpy': '>=1.26,<2.4', 'opencv-python': '<5',
                    'mmcv': '==2.1.0'}
    bad = check.pin_problems({'numpy': '2.4.0', 'opencv-python': '4.12.0',
                              'mmcv': None, 'torch': '9'}, cons)
    assert bad == ['numpy 2.4.0 (wants >=1.26,<2.4)']


# --------------------------------------------------------------------------
# one set of pins
# --------------------------------------------------------------------------
def test_requirements_agree_with_constraints():
    """Every requirement that names a version agrees with constraints.txt:
    each pinned version there satisfies it."""
    cons = check.read_constraints(osp.join(REPO, 'constraints.txt'))
    names = [f[:-4] for f in os.listdir(osp.join(REPO, 'requirements'))
             if f.endswith('.txt')]
    assert {'runtime', 'det', 'seg', 'cls', 'deploy', 'tests', 'torch',
            'build', 'mmcv'} <= set(names)
    checked = 0
    for name in names:
        for req in requirements(name):
            spec = cons.get(req.name.lower())
            if spec is None or not str(req.specifier):
                continue
            if spec.startswith('=='):
                assert req.specifier.contains(spec[2:]), (name, req, spec)
            else:  # a range: the requirement must not be looser
                assert str(req.specifier) in (spec, str(SpecifierSet(spec))) \
                    or spec_within(spec, req), (name, req, spec)
            checked += 1
    assert checked >= 8


def spec_within(spec, req):
    """Every probe version allowed by ``spec`` is allowed by ``req``."""
    allowed = [v for v in VERSIONS if SpecifierSet(spec).contains(v)]
    return all(req.specifier.contains(v) for v in allowed)


def test_opencv_pinned_below_5_everywhere():
    cons = check.read_constraints(osp.join(REPO, 'constraints.txt'))
    for dist in ('opencv-python', 'opencv-python-headless'):
        assert not check.spec_ok('5.0.0', cons[dist])
        assert check.spec_ok('4.12.0.88', cons[dist])
    (runtime_cv,) = [r for r in requirements('runtime')
                     if r.name == 'opencv-python']
    assert not runtime_cv.specifier.contains('5.0.0')


FAKE_PIP = '''\
"""Stands in for pip: says what it is asked and installs nothing."""
import os
import sys

args = sys.argv[1:]
print('fake pip:', *args)
if args[:1] == ['wheel']:  # the mmcv build: leave a wheel to install
    folder = args[args.index('-w') + 1]
    open(os.path.join(folder, 'mmcv-0-py3-none-any.whl'), 'w').close()
'''


@pytest.mark.slow
def test_installer_installs_what_the_files_pin(tmp_path):
    """tools/install.py, run on a copy of the repository whose
    constraints.txt asks for other versions than the installed ones, with
    a stand-in pip: each step installs what constraints.txt and
    requirements/*.txt name, under those pins plus the installed torch
    pair, and the step that repairs pins names what stays outside them
    (not setuptools, which step 1 sets)."""
    from importlib import metadata
    repo = tmp_path / 'repo'
    for rel in ('tools/install.py', 'iformer_mm/check.py'):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(osp.join(REPO, rel), str(repo / rel))
    shutil.copytree(osp.join(REPO, 'requirements'), str(repo / 'requirements'))
    cons = check.read_constraints(osp.join(REPO, 'constraints.txt'))
    cons['setuptools'] = '!=' + metadata.version('setuptools')
    for dist in ('mmdet', 'coremltools'):
        cons[dist] = f'=={metadata.version(dist)}.1'
    (repo / 'constraints.txt').write_text(
        ''.join(f'{d}{s}\n' for d, s in cons.items()))
    # ``python -m pip`` runs in the repository: its pip/ comes first
    (repo / 'pip').mkdir()
    (repo / 'pip' / '__init__.py').write_text('')
    (repo / 'pip' / '__main__.py').write_text(FAKE_PIP)
    compiler = tmp_path / 'bin' / 'c++'  # mmcv's build looks for one
    compiler.parent.mkdir()
    compiler.write_text('#!/bin/sh\nexit 1\n')
    compiler.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'PYTHONSAFEPATH')}
    env['PATH'] = str(compiler.parent) + os.pathsep + env['PATH']
    env['IFORMER_MM_CACHE'] = str(tmp_path / 'cache')
    proc = subprocess.run([sys.executable, '-m', 'pip', 'list'],
                          cwd=str(repo), env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.startswith('fake pip:'), 'pip is not the stand-in'

    logs = tmp_path / 'logs'
    proc = subprocess.run(
        [sys.executable, str(repo / 'tools' / 'install.py'),
         '--reinstall-torch', '--rebuild-mmcv', '--log-dir', str(logs)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True,
        timeout=1800)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr[-3000:]
    pair = ' '.join(f'{r.name}==={str(r.specifier)[2:]}'
                    for r in requirements('torch'))
    mmcv = cons['mmcv'][2:]
    tools = [r.name for r in requirements('deploy') + requirements('tests')
             if r.name not in ('coremltools', 'numpy')]
    expected = [
        '[1/7] build tools (setuptools<81, wheel, ninja) ...',
        f'pip install "setuptools{cons["setuptools"]}" wheel ninja',
        '[2/7] torch + torchvision ...',
        f'pip install --force-reinstall --no-deps {pair}',
        f'pip install {pair}  (about 4.8 GB with its CUDA libraries; runs '
        'on CPU too)',
        f'[3/7] mmcv {mmcv} with ops ...',
        f'MMCV_WITH_OPS=1 pip wheel --no-build-isolation mmcv=={mmcv}',
        'pip install mmcv-0-py3-none-any.whl',
        'pip install the dependencies of mmcv',
        'built and installed; nms and RoIAlign run',
        f'[4/7] mmengine, mmdet {cons["mmdet"][2:]}, mmseg '
        f'{cons["mmsegmentation"][2:]}, mmpretrain {cons["mmpretrain"][2:]} '
        '...',
        'pip install ' + ' '.join(f'{d}{cons[d]}' for d in (
            'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain'))
        + ' ftfy regex',
        '[5/7] ' + ', '.join(['coremltools', *tools]) + ' ...',
        f'pip install coremltools{cons["coremltools"]} numpy{cons["numpy"]} '
        + ' '.join(tools),
        f'pip install "mmdet{cons["mmdet"]}" '
        f'"coremltools{cons["coremltools"]}"  (back inside constraints.txt)',
        'FAILED at step [5/7] ' + ', '.join(['coremltools', *tools]) + ':',
        f'log: {logs / "5-tools.log"}',
    ]
    lines = [line.strip() for line in out.splitlines()]
    at = 0
    for want in expected:  # in this order, each at the start of a line
        found = [i for i, line in enumerate(lines[at:], at)
                 if line.startswith(want)]
        assert found, f'{want!r} is missing after line {at}:\n{out}'
        at = found[0] + 1
    assert 'still outside constraints.txt: ' in out
    assert sorted(os.listdir(logs)) == [
        '1-build-tools.log', '2-torch.log', '3-mmcv.log', '4-openmmlab.log',
        '5-tools.log', 'constraints-torch.txt', 'constraints.txt']
    # torch installs under the build pins only, the rest under all pins
    # and the installed torch pair
    assert (logs / 'constraints-torch.txt').read_text().split() == [
        'setuptools' + cons['setuptools'], 'numpy' + cons['numpy']]
    assert set((logs / 'constraints.txt').read_text().split()) == {
        f'{d}{s}' for d, s in cons.items()} | {
        f'{d}=={metadata.version(d)}' for d in ('torch', 'torchvision')}
    assert f'-c {logs / "constraints.txt"}' in \
        (logs / '4-openmmlab.log').read_text()

    proc = subprocess.run(
        [sys.executable, str(repo / 'tools' / 'install.py'), '--check'],
        cwd=str(tmp_path), env=env, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert '[BAD] pins' in proc.stdout
    assert proc.stdout.rstrip().endswith(
        'incomplete: run python tools/install.py')


@pytest.mark.slow
def test_check_probe_reports_pins_outside_constraints(tmp_path):
    """The probe (run as a file, as the installer does) flags a violated
    pin with the distribution's name, and exits 1."""
    cons = tmp_path / 'constraints.txt'
    cons.write_text('numpy<1\n')
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'iformer_mm', 'check.py'), '--json',
         '--constraints', str(cons)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True,
        timeout=600)
    line = [x for x in proc.stdout.splitlines() if x.startswith('@@PROBE@@')]
    assert line, proc.stderr[-3000:]
    import json
    st = json.loads(line[0][len('@@PROBE@@'):])
    assert proc.returncode == 1
    assert st['ok']['pins'] is False
    assert 'numpy' in st['err']['pins'] and '<1' in st['err']['pins']
    assert st['ok']['torch'] is True


@pytest.mark.slow
def test_installer_counts_an_extra_only_when_asked(tmp_path):
    """``--check`` judges the executorch extra with ``--with executorch``
    only (the default install leaves it out)."""
    def check(*extra):
        proc = subprocess.run(
            [sys.executable, osp.join(REPO, 'tools', 'install.py'), '--check',
             '--log-dir', str(tmp_path), *extra], cwd=str(tmp_path),
            capture_output=True, text=True, timeout=900)
        return proc.stdout
    row = re.compile(r'^\s*\[(ok |BAD|-- )\] executorch\b', re.M)
    assert not row.search(check())
    assert row.search(check('--with', 'executorch'))


# --------------------------------------------------------------------------
# the wheel: dependencies and .mim
# --------------------------------------------------------------------------
@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    """Build a wheel from a copy of the source tree (setup.py copies into
    the tree it builds from)."""
    root = tmp_path_factory.mktemp('wheel')
    src = root / 'src'
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        '.git', 'work_dirs', 'data', '*.egg-info', '.mim', 'build', 'dist',
        '__pycache__', 'outputs', '.pytest_cache', '*.mlpackage'))
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps',
         '--no-build-isolation', '-w', str(root / 'dist'), str(src)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (whl,) = (root / 'dist').glob('*.whl')
    return zipfile.ZipFile(str(whl))


def wheel_metadata(zf):
    (name,) = [n for n in zf.namelist() if n.endswith('.dist-info/METADATA')]
    return zf.read(name).decode()


def test_wheel_declares_dependencies(wheel):
    meta = wheel_metadata(wheel)
    reqs = [Requirement(line.split(':', 1)[1].strip())
            for line in meta.splitlines() if line.startswith('Requires-Dist:')]
    base = {r.name: r for r in reqs if r.marker is None}
    assert set(base) == {r.name for r in requirements('runtime')}
    assert 'mmengine' in base and 'torch' in base
    assert not base['opencv-python'].specifier.contains('5.0.0')
    assert 'mmcv' not in base  # built by tools/install.py, never by pip

    def extra(name):
        return {r.name: str(r.specifier) for r in reqs
                if r.marker is not None and
                r.marker.evaluate({'extra': name})}
    assert extra('deploy') == {r.name: str(r.specifier)
                               for r in requirements('deploy')}
    assert extra('det') == {'mmdet': '==3.3.0'}
    assert extra('seg') == {'mmsegmentation': '==1.2.2', 'ftfy': '',
                            'regex': ''}
    assert extra('cls') == {'mmpretrain': '==1.2.0'}
    assert {'pytest', 'timm'} <= set(extra('tests'))
    assert 'coremltools' in extra('deploy') and 'onnxruntime' in \
        extra('deploy')
    # ExecuTorch is an extra of its own, in neither the light nor the
    # default install (tools/install.py --with executorch adds it)
    assert extra('executorch') == {r.name: str(r.specifier)
                                   for r in requirements('executorch')}
    for name in ('deploy', 'tests', 'all'):
        assert 'executorch' not in extra(name), name
    assert 'executorch' not in base


def test_wheel_packages_configs_tools_and_index(wheel):
    names = set(wheel.namelist())
    mim = 'iformer_mm/.mim/'
    for rel in ('model-index.yml', 'constraints.txt', 'tools/train.py',
                'tools/test.py', 'tools/benchmark_latency.py'):
        assert mim + rel in names, rel
    configs = []
    for dirpath, _, files in os.walk(osp.join(REPO, 'configs')):
        for f in files:
            if f.endswith(('.py', '.yml')):
                configs.append(osp.relpath(osp.join(dirpath, f), REPO))
    assert len(configs) > 20
    missing = [c for c in configs if mim + c.replace(os.sep, '/') not in names]
    assert not missing, missing
    # every config the index names is inside the wheel
    import yaml
    index = yaml.safe_load(wheel.read(mim + 'model-index.yml'))
    for rel in index['Import']:
        meta = yaml.safe_load(wheel.read(mim + rel))
        for m in meta['Models']:
            assert mim + m['Config'] in names, m['Config']


# --------------------------------------------------------------------------
# the model index and models by name
# --------------------------------------------------------------------------
def model_zoo_rows():
    """``{(section, arch): {column header: cell}}`` from docs/model_zoo.md,
    an independent transcription of the paper's tables."""
    rows, section, header = {}, None, None
    for line in open(osp.join(REPO, 'docs', 'model_zoo.md')):
        if line.startswith('## '):
            section, header = line.split()[1], None
        if re.match(r'^\| (Backbone|Model)\s*\|', line):
            header = [re.sub(r'<[^>]+>', '', c).strip()
                      for c in line.strip().strip('|').split('|')]
        m = re.match(r'^\| iFormer-(\w+)\s*\|', line)
        if m and section and header:
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            rows[(section, m.group(1).lower())] = dict(zip(header, cells))
    return rows


DET_COLUMNS = {'box AP': 'APbox', 'box AP@0.5': 'APbox50',
               'box AP@0.75': 'APbox75', 'mask AP': 'APmask',
               'mask AP@0.5': 'APmask50', 'mask AP@0.75': 'APmask75'}


def test_model_index_numbers_match_the_model_zoo():
    from iformer_mm.apis import hub
    models = hub.load_index(REPO)
    zoo = model_zoo_rows()
    checked = 0
    for name, m in models.items():
        assert osp.isfile(m['Config']), (name, m['Config'])
        assert m['Metadata']['Source'], name
        arch = re.search(r'iformer-(\w+?)[_-]', name).group(1)
        metrics = {k: v for r in m.get('Results', [])
                   for k, v in r['Metrics'].items()}
        if name.startswith('mask-rcnn'):
            cells = zoo[('COCO', arch)]
            if 'box AP' in metrics:
                assert [metrics[k] for k in DET_COLUMNS] == \
                    [float(cells[c]) for c in DET_COLUMNS.values()], name
                assert m['Metadata']['Source'].startswith('paper, Table')
                assert m['Weights'].endswith(f'iFormer_{arch}_epoch_12.pth')
                checked += 1
            else:
                assert cells['APbox'] == '–' and 'Weights' not in m
        elif name.startswith('fpn'):
            cells = zoo[('ADE20K:', arch)]
            if 'mIoU' in metrics:
                assert metrics['mIoU'] == float(cells['mIoU']), name
                checked += 1
        else:
            cells = zoo[('ImageNet-1k', arch)]
            want = cells['Top-1 (%)'] if cells['Top-1 (%)'] != '–' else \
                cells['Top-1 distilled (%)'].split()[0]
            assert metrics['Top 1 Accuracy'] == float(want), name
            assert float(cells['Params (M)']) == \
                m['Metadata']['Parameters (M)']
            checked += 1
    assert checked == 3 + 3 + 6


def test_names_resolve_to_configs():
    import iformer_mm
    names = iformer_mm.list_models('mask-rcnn_*')
    assert 'mask-rcnn_iformer-m_fpn_1x_coco' in names and len(names) == 5
    cfg = iformer_mm.get_config('mask-rcnn_iformer-m_fpn_1x_coco')
    # the alias and the config's own stem give the same file
    assert iformer_mm.get_config('maskrcnn_iformer_m_coco') == cfg
    assert osp.isfile(cfg)
    # a config outside the index, by file stem
    toy = iformer_mm.get_config('maskrcnn_iformer_t_toy')
    assert toy.endswith(osp.join('configs', 'toy', 'maskrcnn_iformer_t_toy.py'))
    # a config file path, as mmpretrain's get_model takes
    assert iformer_mm.get_config(toy) == toy
    assert iformer_mm.model_info(toy)['Name'] == 'maskrcnn_iformer_t_toy'
    from iformer_mm.apis.hub import ModelNotFoundError
    from iformer_mm.errors import UserError
    with pytest.raises(ModelNotFoundError) as e:
        iformer_mm.get_config('mask-rcnn_iformer-q_fpn_1x_coco')
    assert isinstance(e.value, UserError)
    assert 'mask-rcnn_iformer-m_fpn_1x_coco' in str(e.value)  # a suggestion


def test_get_model_builds_the_named_detector():
    import torch
    import iformer_mm
    model = iformer_mm.get_model('mask-rcnn_iformer-m_fpn_1x_coco')
    assert type(model).__name__ == 'MaskRCNN'
    assert type(model.backbone).__name__ == 'IFormer'
    assert not model.training
    with torch.no_grad():
        x = torch.zeros(1, 3, 64, 64)
        widths = [f.shape[1] for f in model.backbone(x)]
        fpn = model.extract_feat(x)
    # Table 15: iFormer-M's stages are 48, 96, 192 and 384 wide
    assert widths == [48, 96, 192, 384]
    assert len(fpn) == 5 and all(f.shape[1] == 256 for f in fpn)


# --------------------------------------------------------------------------
# mim (onedl-mim, the `mim` extra): search and train through the package
# --------------------------------------------------------------------------
def mim_env():
    # mim finds the package through its installed metadata; a PYTHONPATH
    # pointing at a source tree (with an .egg-info) would confuse it
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    return env


def mim_command():
    exe = osp.join(osp.dirname(sys.executable), 'mim')
    assert osp.isfile(exe), (
        'the mim command is not installed next to this Python: '
        'pip install -e ".[mim]" (python tools/install.py installs it)')
    return exe


@pytest.mark.slow
def test_mim_search_lists_the_paper_numbers(tmp_path):
    proc = subprocess.run(
        [mim_command(), 'search', 'iformer_mm', '--field', 'coco/box_ap',
         'ade20k/miou'], cwd=str(tmp_path), capture_output=True, text=True,
        timeout=300, env=mim_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    blocks = {}
    for block in proc.stdout.split('config id: ')[1:]:
        lines = block.strip().splitlines()
        blocks[lines[0].strip()] = dict(
            line.split(None, 1) for line in lines[1:] if line.strip()
            and not line.startswith('-'))
    assert blocks['mask-rcnn_iformer-m_fpn_1x_coco']['coco/box_ap'] == '40.8'
    assert blocks['fpn_iformer-l_8xb4-40k_ade20k-512x512']['ade20k/miou'] \
        == '44.5'


@pytest.mark.slow
def test_mim_train_runs_the_package_tool(tmp_path):
    """``mim train iformer_mm CONFIG`` finds tools/train.py through the
    installed package and trains (2 iterations of the toy segmentation);
    ``mim test`` evaluates the checkpoint through tools/test.py."""
    work = tmp_path / 'work'
    proc = subprocess.run(
        [mim_command(), 'train', 'iformer_mm',
         osp.join(REPO, 'configs', 'toy', 'fpn_iformer_t_toy.py'),
         '--work-dir', str(work), '--cfg-options', 'train_cfg.max_iters=2',
         'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2'],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=900,
        env=mim_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'Training finished successfully' in out
    assert (work / 'iter_2.pth').is_file()
    assert list(work.glob('*/vis_data/scalars.json'))

    # ``mim test iformer_mm CONFIG --checkpoint CKPT`` evaluates it
    proc = subprocess.run(
        [mim_command(), 'test', 'iformer_mm',
         osp.join(REPO, 'configs', 'toy', 'fpn_iformer_t_toy.py'),
         '--checkpoint', str(work / 'iter_2.pth'), '--work-dir',
         str(tmp_path / 'test_work')],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=900,
        env=mim_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'mIoU:' in out and 'per class results:' in out
