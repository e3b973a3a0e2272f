#!/usr/bin/env python
"""Set up the iformer-mm stack in the current Python environment.

    python tools/install.py            # install / repair what is missing
    python tools/install.py --check    # only report, exit 1 if incomplete

Installs, into the interpreter that runs this script (as OpenMMLab users do
in their conda env):

1. build tools: setuptools>=77.0.3,<81 (mmcv 2.1's setup.py imports
   pkg_resources, gone in setuptools 81; torch 2.13 needs >=77.0.3), wheel,
   ninja;
2. torch + torchvision: keeps an installed torch (e.g. your own CUDA build)
   and adds the matching torchvision; with no torch installs the registry's
   torch 2.13.0 / torchvision 0.28.0 pair; a pair whose torchvision cannot
   load its ops is reported with the exact fix;
3. mmcv 2.1.0 with its compiled ops, built against the installed torch
   (16-18 min on 2 cores), or installed from the cached build;
4. mmengine, mmdet 3.3.0, mmsegmentation 1.2.2 (+ the ftfy and regex it
   does not declare), mmpretrain 1.2.0;
5. coremltools 9.0 with numpy<2.4, onnx, onnxruntime, pytest, timm;
6. this package in editable mode;
7. a check that everything imports and mmcv's NMS / RoIAlign run.

It is idempotent: when everything is in place it says so within seconds.
Each step logs to work_dirs/install/<step>.log; a failure names the step and
its log. Standard library only: it runs before anything is installed.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# ---------------------------------------------------------------------------
# Pins and the probe: both come from the repository (constraints.txt,
# requirements/*.txt, iformer_mm/check.py), which the stack test and
# setup.py read too.
# ---------------------------------------------------------------------------
CONSTRAINTS = osp.join(REPO, 'constraints.txt')
CHECK = osp.join(REPO, 'iformer_mm', 'check.py')


def read_requirements(name: str) -> list:
    """Requirement lines of requirements/<name>.txt, comments dropped."""
    with open(osp.join(REPO, 'requirements', name + '.txt')) as fh:
        return [line.split('#', 1)[0].strip() for line in fh
                if line.split('#', 1)[0].strip()]


def _load_check():
    """iformer_mm/check.py as a stand-alone module (standard library only
    at import; the package itself may not be importable yet)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('_iformer_mm_check', CHECK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_check = _load_check()
spec_ok = _check.spec_ok


def read_constraints() -> dict:
    """{distribution: specifier} from constraints.txt."""
    return _check.read_constraints(CONSTRAINTS)


def exact(spec: str) -> str:
    """'==2.1.0' -> '2.1.0' (constraints.txt pins these exactly)."""
    assert spec.startswith('=='), spec
    return spec[2:]


PINS = read_constraints()
_TORCH = dict(r.split('==') for r in read_requirements('torch'))
TORCH_DEFAULT = _TORCH['torch']
TORCHVISION_DEFAULT = _TORCH['torchvision']
MMCV_VERSION = exact(PINS['mmcv'])
SETUPTOOLS_SPEC = 'setuptools' + PINS['setuptools']
NUMPY_SPEC = 'numpy' + PINS['numpy']
OPENMMLAB = {d: exact(PINS[d]) for d in ('mmdet', 'mmsegmentation',
                                          'mmpretrain')}
MMENGINE_SPEC = 'mmengine' + PINS['mmengine']
COREMLTOOLS_VERSION = exact(PINS['coremltools'])
# distributions (names without version) of the extras the installer adds
TOOLS = [re.split(r'[<>=!~ ]', r)[0] for r in
         read_requirements('deploy') + read_requirements('tests')
         if not r.startswith(('coremltools', 'numpy'))]
UNDECLARED = [r for r in read_requirements('seg')
              if not r.startswith('mmsegmentation')]
DIST_NAME = 'iformer-mm'
HEARTBEAT_S = 30

STEPS = [
    ('build-tools', 'build tools (setuptools<81, wheel, ninja)'),
    ('torch', 'torch + torchvision'),
    ('mmcv', f'mmcv {MMCV_VERSION} with ops'),
    ('openmmlab', 'mmengine, ' + ', '.join(
        f'{d.replace("mmsegmentation", "mmseg")} {v}'
        for d, v in OPENMMLAB.items())),
    ('tools', ', '.join(['coremltools', *TOOLS])),
    ('package', 'iformer_mm (editable)'),
    ('verify', 'final check'),
]


def probe(python=sys.executable) -> dict:
    """Run iformer_mm/check.py as a file in a fresh interpreter.

    Run from a temporary directory, so that ``import iformer_mm`` finds
    only the installed package; standard library only until it imports
    what it checks.
    """
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    proc = subprocess.run([python, CHECK, '--json', '--repo', REPO,
                           '--constraints', CONSTRAINTS],
                          cwd=tempfile.gettempdir(), env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith('@@PROBE@@'):
            return json.loads(line[len('@@PROBE@@'):])
    raise RuntimeError('the environment probe crashed:\n' +
                       (proc.stderr or proc.stdout)[-3000:])


# ---------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------
def vtuple(v: str | None) -> tuple:
    if not v:
        return ()
    nums = re.findall(r'\d+', v.split('+')[0])
    return tuple(int(n) for n in nums[:3])


def public(v: str) -> str:
    return v.split('+')[0]


def torchvision_for(torch_version: str) -> str:
    """torchvision major.minor that matches a torch release."""
    major, minor = vtuple(torch_version)[:2]
    if major == 1:
        return f'0.{minor + 1}'
    return f'0.{minor + 15}'


def setuptools_ok(v: str | None) -> bool:
    t = vtuple(v)
    return bool(t) and (77, 0, 3) <= t < (81,)


# ---------------------------------------------------------------------------
# Output and subprocesses
# ---------------------------------------------------------------------------
class StepFailed(Exception):

    def __init__(self, message: str, log: str | None = None):
        super().__init__(message)
        self.log = log


class Installer:

    def __init__(self, args):
        self.args = args
        self.log_dir = osp.abspath(args.log_dir)
        self.step_no = 0
        self.step_key = ''
        self.step_title = ''
        self.did_something = False
        self.t0 = time.time()

    # -- printing ----------------------------------------------------------
    def say(self, msg: str = '') -> None:
        print(msg, flush=True)

    def detail(self, msg: str) -> None:
        for line in msg.splitlines():
            self.say('      ' + line)

    def start_step(self, idx: int) -> None:
        self.step_no = idx + 1
        self.step_key, self.step_title = STEPS[idx]
        self.step_t0 = time.time()
        self.say(f'[{self.step_no}/{len(STEPS)}] {self.step_title} ...')

    def end_step(self, result: str) -> None:
        dt = time.time() - self.step_t0
        self.say(f'      {result} ({fmt_s(dt)})')

    def log_path(self) -> str:
        os.makedirs(self.log_dir, exist_ok=True)
        return osp.join(self.log_dir, f'{self.step_no}-{self.step_key}.log')

    # -- running commands --------------------------------------------------
    def run(self, cmd: list, what: str, env_extra: dict | None = None,
            env_unset: tuple = ()) -> None:
        """Run ``cmd``, appending its output to the step's log.

        Prints a heartbeat every HEARTBEAT_S seconds; raises StepFailed
        naming the log on a non-zero exit.
        """
        self.did_something = True
        log = self.log_path()
        env = dict(os.environ)
        env.update(env_extra or {})
        for k in env_unset:
            env.pop(k, None)
        # console scripts pip installs here (ninja!) must be found even in a
        # venv that is not activated or a pyenv whose shims are not rehashed;
        # without ninja torch builds mmcv's ops one file at a time
        env['PATH'] = os.pathsep.join(
            [sysconfig.get_path('scripts'), env.get('PATH', '')])
        env.setdefault('PIP_DISABLE_PIP_VERSION_CHECK', '1')
        env.setdefault('PIP_PROGRESS_BAR', 'off')
        self.say(f'      {what}')
        with open(log, 'a') as fh:
            fh.write(f'\n$ {" ".join(cmd)}\n')
            fh.flush()
            t0 = time.time()
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                    env=env, cwd=REPO,
                                    stdin=subprocess.DEVNULL)
            stop = threading.Event()

            def beat():
                while not stop.wait(HEARTBEAT_S):
                    self.say(f'      ... {fmt_s(time.time() - t0)} '
                             f'{progress_hint(log)}')

            th = threading.Thread(target=beat, daemon=True)
            th.start()
            try:
                rc = proc.wait()
            except KeyboardInterrupt:
                proc.terminate()
                raise
            finally:
                stop.set()
                th.join()
        if rc != 0:
            raise StepFailed(f'{what!r} exited with {rc}', log)

    def pip(self, args: list, what: str, **kw) -> None:
        self.run([sys.executable, '-m', 'pip', *args], what, **kw)

    def constraints(self, state: dict) -> str:
        """constraints.txt plus the installed torch/torchvision pair, so that
        later installs never touch torch (or mmcv, numpy, opencv)."""
        v = state['versions']
        lines = [f'{d}{spec}' for d, spec in PINS.items()]
        for dist in ('torch', 'torchvision'):
            if v.get(dist):
                lines.append(f'{dist}=={v[dist]}')
        os.makedirs(self.log_dir, exist_ok=True)
        path = osp.join(self.log_dir, 'constraints.txt')
        with open(path, 'w') as fh:
            fh.write('\n'.join(lines) + '\n')
        return path


def fmt_s(s: float) -> str:
    if s < 60:
        return f'{s:.1f} s'
    return f'{int(s // 60)} min {int(s % 60):02d} s'


def progress_hint(log: str) -> str:
    """A short hint of what a long step is doing, from its log."""
    try:
        with open(log, 'rb') as fh:
            fh.seek(max(0, osp.getsize(log) - 200_000))
            tail = fh.read().decode('utf-8', 'replace')
    except OSError:
        return ''
    found = re.findall(r'\[(\d+)/(\d+)\] ', tail)
    if found:
        done, total = found[-1]
        return f'(compiled {done}/{total} mmcv sources)'
    for line in reversed(tail.splitlines()):
        line = line.strip()
        if line.startswith(('Collecting', 'Downloading', 'Installing',
                            'Building', 'Processing', 'Using cached')):
            return f'({line[:90]})'
    return ''


def tail_of(path: str, n: int = 25) -> str:
    try:
        with open(path, errors='replace') as fh:
            return ''.join(fh.readlines()[-n:])
    except OSError:
        return ''


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------
def step_build_tools(ins: Installer, st: dict) -> str:
    v = st['versions']
    if st['ok'].get('build-tools') and setuptools_ok(v.get('setuptools')):
        return f'in place (setuptools {v["setuptools"]})'
    ins.pip(['install', SETUPTOOLS_SPEC, 'wheel', 'ninja'],
            f'pip install "{SETUPTOOLS_SPEC}" wheel ninja')
    return 'installed'


def torch_fix_command(st: dict) -> str:
    tv = st.get('torch_version') or st['versions'].get('torch') or ''
    if public(tv) == TORCH_DEFAULT:
        return ('python tools/install.py --reinstall-torch\n'
                '(it runs: python -m pip install --force-reinstall --no-deps '
                f'"torch==={TORCH_DEFAULT}" "torchvision==={TORCHVISION_DEFAULT}"'
                f' && python -m pip install "torch==={TORCH_DEFAULT}" '
                f'"torchvision==={TORCHVISION_DEFAULT}")')
    want = torchvision_for(tv)
    cuda = st.get('torch_cuda')
    tag = 'cu' + cuda.replace('.', '') if cuda else 'cpu'
    return (f'python -m pip install "torchvision=={want}.*" --index-url '
            f'https://download.pytorch.org/whl/{tag}\n'
            '(the same index your torch came from), then run '
            'tools/install.py again.')


def install_default_torch(ins: Installer, force: bool) -> None:
    # "===" is an exact string match: it selects the registry's 2.13.0
    # build and skips local "+cpu" wheels that a find-links directory may
    # offer, for which no torchvision build exists (torchvision then fails
    # with "operator torchvision::nms does not exist").
    pair = [f'torch==={TORCH_DEFAULT}', f'torchvision==={TORCHVISION_DEFAULT}']
    if force:
        ins.pip(['install', '--force-reinstall', '--no-deps', *pair],
                f'pip install --force-reinstall --no-deps {" ".join(pair)}')
    ins.pip(['install', *pair, '-c', ins.constraints_no_torch()],
            f'pip install {" ".join(pair)}  (about 4.8 GB with its CUDA '
            'libraries; runs on CPU too)')


def step_torch(ins: Installer, st: dict) -> str:
    ok = st['ok']
    if not ok.get('torch'):
        if st['versions'].get('torch'):
            raise StepFailed(
                f'torch {st["versions"]["torch"]} is installed but does not '
                f'import: {st["err"].get("torch")}\nFix: '
                + torch_fix_command(st))
        if ins.args.no_torch_install:
            raise StepFailed('torch is not installed (--no-torch-install). '
                             'Install your torch build, then run again.')
        install_default_torch(ins, force=False)
        st.update(probe())
        if not (st['ok'].get('torch') and st['ok'].get('torchvision')):
            raise StepFailed('torch/torchvision installed but not working: '
                             + str(st['err']), ins.log_path())
        return (f'installed torch {st["torch_version"]}, '
                f'torchvision {st["torchvision_version"]}')

    tv_have = st['versions'].get('torchvision')
    tv_want = torchvision_for(st['torch_version'])
    if ins.args.reinstall_torch:
        install_default_torch(ins, force=True)
        st.update(probe())
        if not st['ok'].get('torchvision'):
            raise StepFailed('torchvision still does not work after '
                             're-installing the pair: '
                             + st['err'].get('torchvision', ''),
                             ins.log_path())
        return (f're-installed torch {st["torch_version"]}, '
                f'torchvision {st["torchvision_version"]}')
    if tv_have is None:
        ins.pip(['install', f'torchvision=={tv_want}.*',
                 f'torch=={st["versions"]["torch"]}'],
                f'pip install "torchvision=={tv_want}.*" (keeping torch '
                f'{st["torch_version"]})')
        st.update(probe())
    if not st['ok'].get('torchvision') or \
            vtuple(st['versions'].get('torchvision'))[:2] != vtuple(tv_want):
        why = st['err'].get('torchvision') or (
            f'torchvision {st["versions"].get("torchvision")} is for another '
            f'torch (torch {st["torch_version"]} needs torchvision '
            f'{tv_want}.x)')
        raise StepFailed(
            f'torch {st["torch_version"]} and torchvision '
            f'{st["versions"].get("torchvision")} do not work together: '
            f'{why}\nFix: ' + torch_fix_command(st))
    return (f'in place (torch {st["torch_version"]}, torchvision '
            f'{st["torchvision_version"]}, kept as installed)')


def mmcv_cache_dir(st: dict) -> str:
    cuda = st.get('cuda_available') or os.environ.get('FORCE_CUDA') == '1'
    key = (f'torch-{st["torch_version"]}-{"cuda" if cuda else "cpu"}'
           f'-py{sys.version_info[0]}{sys.version_info[1]}')
    root = os.environ.get('IFORMER_MM_CACHE',
                          osp.join(osp.expanduser('~'), '.cache', 'iformer_mm'))
    return osp.join(root, 'wheels', f'mmcv-{MMCV_VERSION}', key)


def step_mmcv(ins: Installer, st: dict) -> str:
    if st['ok'].get('mmcv') and not ins.args.rebuild_mmcv:
        return f'in place (mmcv {MMCV_VERSION}, ops run)'
    cache = mmcv_cache_dir(st)
    if ins.args.rebuild_mmcv and osp.isdir(cache):
        shutil.rmtree(cache)
    wheels = sorted(f for f in os.listdir(cache)
                    if f.endswith('.whl')) if osp.isdir(cache) else []
    how = 'from the cached build'
    if not wheels:
        if not (shutil.which('c++') or shutil.which('g++')):
            raise StepFailed(
                'no C++ compiler found; mmcv\'s ops must be compiled.\n'
                'Fix: apt-get install -y g++   (or your distribution\'s '
                'equivalent), then run again.')
        jobs = str(os.cpu_count() or 2)
        ins.say(f'      building mmcv {MMCV_VERSION} against torch '
                f'{st["torch_version"]} with {jobs} jobs; this takes 16-18 '
                'min on 2 cores (once; the wheel is cached in ' + cache + ')')
        os.makedirs(cache, exist_ok=True)
        # -v: the log then shows ninja's [n/77] lines, which the
        # heartbeat turns into progress
        args = ['wheel', '-v', '--no-build-isolation', '--no-deps', '-w',
                cache, f'mmcv=={MMCV_VERSION}']
        if ins.args.rebuild_mmcv:
            args.insert(1, '--no-cache-dir')
        ins.pip(args, f'MMCV_WITH_OPS=1 pip wheel --no-build-isolation '
                f'mmcv=={MMCV_VERSION}',
                env_extra={'MMCV_WITH_OPS': '1', 'MAX_JOBS': jobs})
        wheels = sorted(f for f in os.listdir(cache) if f.endswith('.whl'))
        if not wheels:
            raise StepFailed('pip wheel produced no mmcv wheel',
                             ins.log_path())
        how = 'built'
    wheel = osp.join(cache, wheels[-1])
    ins.pip(['install', '--force-reinstall', '--no-deps', wheel],
            f'pip install {osp.basename(wheel)}')
    ins.pip(['install', '-c', ins.constraints(st), wheel],
            'pip install the dependencies of mmcv')
    st.update(probe())
    if not st['ok'].get('mmcv'):
        raise StepFailed(
            f'mmcv installed but its ops do not run: {st["err"].get("mmcv")}'
            '\nIf torch changed since the cached build, run '
            'python tools/install.py --rebuild-mmcv', ins.log_path())
    return f'{how} and installed; nms and RoIAlign run'


def step_openmmlab(ins: Installer, st: dict) -> str:
    v = st['versions']
    pinned = all(v.get(d) == ver for d, ver in OPENMMLAB.items())
    extras = all(v.get(d) for d in ['mmengine', *UNDECLARED])
    if pinned and extras and st['ok'].get('openmmlab'):
        return 'in place (' + ', '.join(
            f'{d} {v[d]}' for d in ['mmengine', *OPENMMLAB]) + ')'
    reqs = [MMENGINE_SPEC, *(f'{d}=={ver}' for d, ver in OPENMMLAB.items()),
            *UNDECLARED]
    ins.pip(['install', '-c', ins.constraints(st), *reqs],
            'pip install ' + ' '.join(reqs))
    st.update(probe())
    if not st['ok'].get('openmmlab'):
        raise StepFailed('installed but import fails: '
                         + st['err'].get('openmmlab', ''), ins.log_path())
    return 'installed'


def step_tools(ins: Installer, st: dict) -> str:
    v = st['versions']
    have = all(v.get(d) for d in TOOLS) and \
        v.get('coremltools') == COREMLTOOLS_VERSION and \
        vtuple(v.get('numpy')) < (2, 4)
    if have and st['ok'].get('tools') and not pin_violations(st):
        return (f'in place (coremltools {v["coremltools"]}, numpy '
                f'{v["numpy"]}, onnxruntime {v["onnxruntime"]})')
    done = []
    if not (have and st['ok'].get('tools')):
        reqs = [f'coremltools=={COREMLTOOLS_VERSION}', NUMPY_SPEC, *TOOLS]
        ins.pip(['install', '-c', ins.constraints(st), *reqs],
                'pip install ' + ' '.join(reqs))
        st.update(probe())
        if not st['ok'].get('tools'):
            raise StepFailed('installed but import fails: '
                             + st['err'].get('tools', ''), ins.log_path())
        done.append('installed')
    bad = pin_violations(st)
    if bad:
        # e.g. opencv-python 5 let in by an earlier install: mmseg's
        # dataset browser crashes with it
        reqs = [f'{d}{PINS[d]}' for d in bad]
        ins.pip(['install', '-c', ins.constraints(st), *reqs],
                'pip install ' + ' '.join(f'"{r}"' for r in reqs)
                + '  (back inside constraints.txt)')
        st.update(probe())
        if pin_violations(st):
            raise StepFailed('still outside constraints.txt: '
                             + st['err'].get('pins', ''), ins.log_path())
        done.append('brought ' + ', '.join(bad) + ' inside constraints.txt')
    return '; '.join(done)


def pin_violations(st: dict) -> list:
    """Installed distributions outside constraints.txt that pip can fix
    (mmcv is built in step 3, setuptools set in step 1)."""
    if st['ok'].get('pins', True):
        return []
    v = st['versions']
    return [d for d, spec in PINS.items()
            if d not in ('mmcv', 'setuptools') and v.get(d) is not None
            and not spec_ok(v[d], spec)]


def step_package(ins: Installer, st: dict) -> str:
    if st['ok'].get('package'):
        return f'in place (editable, {REPO})'
    ins.pip(['install', '--no-build-isolation', '--no-deps', '-e', REPO],
            'pip install --no-build-isolation --no-deps -e .')
    st.update(probe())
    if not st['ok'].get('package'):
        raise StepFailed('installed but `import iformer_mm` fails: '
                         + st['err'].get('package', ''), ins.log_path())
    return 'installed'


def step_verify(ins: Installer, st: dict) -> str:
    bad = [k for k in ('build-tools', 'torch', 'torchvision', 'mmcv',
                       'openmmlab', 'tools', 'package', 'pins')
           if not st['ok'].get(k)]
    if bad:
        raise StepFailed('still not working: ' + '; '.join(
            f'{k}: {st["err"].get(k, "not checked")}' for k in bad))
    return 'all imports work, mmcv nms and RoIAlign give the expected values'


STEP_FUNCS = [step_build_tools, step_torch, step_mmcv, step_openmmlab,
              step_tools, step_package, step_verify]


def complete(st: dict) -> bool:
    v = st['versions']
    return (all(st['ok'].get(k) for k in (
        'build-tools', 'torch', 'torchvision', 'mmcv', 'openmmlab', 'tools',
        'package', 'pins'))
        and setuptools_ok(v.get('setuptools'))
        and all(v.get(d) == ver for d, ver in OPENMMLAB.items())
        and all(v.get(d) for d in [*TOOLS, *UNDECLARED])
        and v.get('coremltools') == COREMLTOOLS_VERSION
        and vtuple(v.get('numpy')) < (2, 4)
        and vtuple(v.get('torchvision'))[:2] ==
        vtuple(torchvision_for(st.get('torch_version', '0.0'))))


def summary(st: dict) -> str:
    v = st['versions']
    names = ['torch', 'torchvision', 'mmcv', 'mmengine', *OPENMMLAB,
             'numpy', 'coremltools', 'onnxruntime', 'setuptools']
    parts = []
    for n in names:
        shown = st.get('torch_version') if n == 'torch' else v.get(n)
        parts.append(f'{n} {shown or "-"}')
    return ', '.join(parts)


def report(st: dict) -> None:
    print(f'python {st["python"]} ({sys.executable})')
    rows = [('build-tools', f'setuptools {st["versions"].get("setuptools")}'),
            ('torch', st.get('torch_version') or '-'),
            ('torchvision', st.get('torchvision_version') or
             st['versions'].get('torchvision') or '-'),
            ('mmcv', st['versions'].get('mmcv') or '-'),
            ('openmmlab', ', '.join(
                f'{d} {st["versions"].get(d)}'
                for d in ['mmengine', *OPENMMLAB])),
            ('tools', f'coremltools {st["versions"].get("coremltools")}, '
             f'numpy {st["versions"].get("numpy")}'),
            ('package', st['versions'].get(DIST_NAME) or '-'),
            ('pins', 'installed versions against constraints.txt')]
    for key, what in rows:
        ok = st['ok'].get(key)
        mark = 'ok ' if ok else ('-- ' if ok is None else 'BAD')
        print(f'  [{mark}] {key:<12} {what}')
        if ok is False:
            print('        ' + st['err'].get(key, '')[:300])


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent('''\
            With your own torch (e.g. a CUDA build) installed first, the
            installer keeps it, adds the matching torchvision and builds
            mmcv's ops against it.'''))
    p.add_argument('--check', action='store_true',
                   help='only report what is in place; exit 1 if incomplete')
    p.add_argument('--reinstall-torch', action='store_true',
                   help=f'replace the installed torch/torchvision with the '
                   f'registry pair {TORCH_DEFAULT}/{TORCHVISION_DEFAULT}')
    p.add_argument('--no-torch-install', action='store_true',
                   help='never install torch; fail if it is missing')
    p.add_argument('--rebuild-mmcv', action='store_true',
                   help='rebuild mmcv even if a working or cached build '
                   'exists')
    p.add_argument('--log-dir', default=osp.join(REPO, 'work_dirs',
                                                 'install'),
                   help='where each step writes its log '
                   '(default: work_dirs/install)')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    if sys.version_info < (3, 9):
        print('iformer-mm needs Python >= 3.9 (tested on 3.11).')
        return 1
    print(f'iformer-mm installer: checking the environment of '
          f'{sys.executable} ...', flush=True)
    try:
        st = probe()
    except RuntimeError as e:
        print(str(e))
        return 1
    if args.check:
        report(st)
        done = complete(st)
        print('everything in place' if done else
              'incomplete: run python tools/install.py')
        return 0 if done else 1
    if complete(st) and not (args.reinstall_torch or args.rebuild_mmcv):
        print(f'everything in place ({summary(st)}); nothing to do '
              f'({fmt_s(time.time() - t0)})')
        return 0

    ins = Installer(args)
    ins.constraints_no_torch = lambda: _constraints_no_torch(ins)
    for idx, fn in enumerate(STEP_FUNCS):
        ins.start_step(idx)
        try:
            result = fn(ins, st)
        except StepFailed as e:
            print(f'\nFAILED at step [{idx + 1}/{len(STEPS)}] '
                  f'{STEPS[idx][1]}:\n{e}', flush=True)
            if e.log:
                print(f'\nlog: {e.log}\n--- last lines of the log ---\n'
                      + tail_of(e.log), flush=True)
            return 1
        ins.end_step(result)
    print(f'\ndone in {fmt_s(time.time() - t0)}: {summary(st)}')
    return 0


def _constraints_no_torch(ins: Installer) -> str:
    os.makedirs(ins.log_dir, exist_ok=True)
    path = osp.join(ins.log_dir, 'constraints-torch.txt')
    with open(path, 'w') as fh:
        fh.write(f'{SETUPTOOLS_SPEC}\n{NUMPY_SPEC}\n')
    return path


if __name__ == '__main__':
    sys.exit(main())
