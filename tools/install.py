#!/usr/bin/env python
"""Set up the iformer-mm stack in the current Python environment.

    python tools/install.py            # install / repair what is missing
    python tools/install.py --check    # only report, exit 1 if incomplete
    python tools/install.py --with executorch   # the stack and an extra

Seven steps, into the interpreter that runs this script: build tools, torch
+ torchvision, mmcv built against that torch, the OpenMMLab libraries, the
export and test tools, this package (editable), a final check. A step runs
only when the probe (iformer_mm/check.py, in a fresh interpreter) finds its
part missing; each logs to work_dirs/install/<n>-<step>.log. An optional
extra named by ``--with`` is one more step before the final check. What each
installs and why: docs/installation.md. The versions come from
constraints.txt and requirements/*.txt. Standard library only: it runs
before anything is installed.
"""
from __future__ import annotations

import argparse
import importlib.util
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
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CHECK = osp.join(REPO, 'iformer_mm', 'check.py')
CONSTRAINTS = osp.join(REPO, 'constraints.txt')
HEARTBEAT_S = 30


def load_check():
    """iformer_mm/check.py as a stand-alone module (the package may not be
    importable yet): the probe, and the one reader of versions and pins."""
    spec = importlib.util.spec_from_file_location('_iformer_mm_check', CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = load_check()


def requirements(name: str) -> dict:
    """``{distribution: specifier}`` of requirements/<name>.txt."""
    return check.read_constraints(
        osp.join(REPO, 'requirements', name + '.txt'))


def exact(spec: str) -> str:
    """'==2.1.0' -> '2.1.0' (constraints.txt pins these exactly)."""
    assert spec.startswith('=='), spec
    return spec[2:]


PINS = check.read_constraints(CONSTRAINTS)
TORCH_DEFAULT = exact(requirements('torch')['torch'])
TORCHVISION_DEFAULT = exact(requirements('torch')['torchvision'])
MMCV_VERSION = exact(PINS['mmcv'])
# What steps 1, 4 and 5 install, {distribution: specifier ('' for any)}: a
# step is in place when its check passes and these are installed inside
# their specifiers.
BUILD_TOOLS = {'setuptools': PINS['setuptools'], 'wheel': '', 'ninja': ''}
OPENMMLAB = {d: PINS[d] for d in ('mmengine', 'mmdet', 'mmsegmentation',
                                  'mmpretrain')}
for _dist in requirements('seg'):  # ftfy, regex: mmseg imports them
    OPENMMLAB.setdefault(_dist, '')
TOOLS = {'coremltools': PINS['coremltools'], 'numpy': PINS['numpy']}
for _dist in [*requirements('deploy'), *requirements('tests')]:
    TOOLS.setdefault(_dist, '')


#: what each optional extra installs (requirements/<extra>.txt)
EXTRAS = {name: requirements(name) for name in check.EXTRAS}


def requirement_list(reqs: dict) -> list:
    return [dist + spec for dist, spec in reqs.items()]


def satisfied(st: dict, reqs: dict) -> bool:
    return all(check.spec_ok(st['versions'].get(dist), spec)
               for dist, spec in reqs.items())


def probe() -> dict:
    """What iformer_mm/check.py reports, run as a file in a fresh
    interpreter from a temporary folder, so that ``import iformer_mm``
    finds only the installed package."""
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    proc = subprocess.run([sys.executable, CHECK, '--json', '--repo', REPO,
                           '--constraints', CONSTRAINTS],
                          cwd=tempfile.gettempdir(), env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith('@@PROBE@@'):
            return json.loads(line[len('@@PROBE@@'):])
    raise RuntimeError('the environment probe crashed:\n' +
                       (proc.stderr or proc.stdout)[-3000:])


def complete(st: dict, extras=()) -> bool:
    return (all(st['ok'].get(k) for k in [*check.FULL, *extras])
            and all(satisfied(st, reqs) for reqs in (
                BUILD_TOOLS, OPENMMLAB, TOOLS,
                *(EXTRAS[e] for e in extras))))


# ---------------------------------------------------------------------------
# Running commands
# ---------------------------------------------------------------------------
class StepFailed(Exception):
    """A step failed: the message says why (and how to fix it); ``log`` is
    the step's log when a command ran."""

    def __init__(self, message: str, log: str | None = None):
        super().__init__(message)
        self.log = log


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


def wheels_in(folder: str) -> list:
    if not osp.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if f.endswith('.whl'))


def mmcv_cache_dir(st: dict) -> str:
    cuda = st.get('cuda_available') or os.environ.get('FORCE_CUDA') == '1'
    key = (f'torch-{st["torch_version"]}-{"cuda" if cuda else "cpu"}'
           f'-py{sys.version_info[0]}{sys.version_info[1]}')
    root = os.environ.get('IFORMER_MM_CACHE', osp.join(
        osp.expanduser('~'), '.cache', 'iformer_mm'))
    return osp.join(root, 'wheels', f'mmcv-{MMCV_VERSION}', key)


def torch_fix_command(st: dict) -> str:
    """How to repair a torch/torchvision pair that does not work."""
    torch = st.get('torch_version') or st['versions'].get('torch') or ''
    if torch.split('+')[0] == TORCH_DEFAULT:
        return ('python tools/install.py --reinstall-torch\n'
                '(it runs: python -m pip install --force-reinstall --no-deps '
                f'"torch==={TORCH_DEFAULT}" '
                f'"torchvision==={TORCHVISION_DEFAULT}" && python -m pip '
                f'install "torch==={TORCH_DEFAULT}" '
                f'"torchvision==={TORCHVISION_DEFAULT}")')
    want = '{}.{}'.format(*check.torchvision_for(torch))
    cuda = st.get('torch_cuda')
    tag = 'cu' + cuda.replace('.', '') if cuda else 'cpu'
    return (f'python -m pip install "torchvision=={want}.*" --index-url '
            f'https://download.pytorch.org/whl/{tag}\n'
            '(the same index your torch came from), then run '
            'tools/install.py again.')


# ---------------------------------------------------------------------------
# The steps: each returns what it did, or raises StepFailed
# ---------------------------------------------------------------------------
class Installer:
    """Runs the steps on ``st``, the probe's report, which every install
    refreshes (probe again)."""

    def __init__(self, args, st: dict):
        self.args = args
        self.st = st
        self.log_dir = osp.abspath(args.log_dir)
        self.log = None  # the current step's log

    @property
    def versions(self) -> dict:
        return self.st['versions']

    def say(self, msg: str) -> None:
        print('      ' + msg, flush=True)

    def run(self, cmd: list, what: str, env_extra: dict | None = None):
        """Run ``cmd``, appending its output to the step's log, with a
        heartbeat every HEARTBEAT_S seconds; StepFailed if it fails."""
        env = dict(os.environ, **(env_extra or {}))
        # console scripts pip installs here (ninja!) must be found even in a
        # venv that is not activated or a pyenv whose shims are not rehashed;
        # without ninja torch builds mmcv's ops one file at a time
        env['PATH'] = os.pathsep.join(
            [sysconfig.get_path('scripts'), env.get('PATH', '')])
        env.setdefault('PIP_DISABLE_PIP_VERSION_CHECK', '1')
        env.setdefault('PIP_PROGRESS_BAR', 'off')
        self.say(what)
        os.makedirs(self.log_dir, exist_ok=True)
        with open(self.log, 'a') as fh:
            fh.write(f'\n$ {" ".join(cmd)}\n')
            fh.flush()
            t0 = time.time()
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                    env=env, cwd=REPO,
                                    stdin=subprocess.DEVNULL)
            while True:
                try:
                    rc = proc.wait(timeout=HEARTBEAT_S)
                    break
                except subprocess.TimeoutExpired:
                    self.say(f'... {fmt_s(time.time() - t0)} '
                             f'{progress_hint(self.log)}')
                except KeyboardInterrupt:
                    proc.terminate()
                    raise
        if rc != 0:
            raise StepFailed(f'{what!r} exited with {rc}', self.log)

    def pip(self, args: list, what: str, **kw) -> None:
        self.run([sys.executable, '-m', 'pip', *args], what, **kw)

    def write_constraints(self, name: str, lines: list) -> str:
        os.makedirs(self.log_dir, exist_ok=True)
        path = osp.join(self.log_dir, name)
        with open(path, 'w') as fh:
            fh.write('\n'.join(lines) + '\n')
        return path

    def constraints(self) -> str:
        """constraints.txt plus the installed torch/torchvision pair, so that
        later installs never touch torch (or mmcv, numpy, opencv)."""
        pair = [f'{d}=={self.versions[d]}' for d in ('torch', 'torchvision')
                if self.versions.get(d)]
        return self.write_constraints(
            'constraints.txt', requirement_list(PINS) + pair)

    def probe_again(self, key: str, failure: str) -> None:
        """Refresh the report; fail the step unless check ``key`` passes
        (``failure`` is the message, ``{}`` the check's error)."""
        self.st.update(probe())
        if not self.st['ok'].get(key):
            raise StepFailed(failure.format(self.st['err'].get(key, '')),
                             self.log)

    def install(self, reqs: list, key: str, what: str | None = None,
                failure: str = 'installed but import fails: {}') -> None:
        """pip install ``reqs`` under the constraints, then probe again."""
        self.pip(['install', '-c', self.constraints(), *reqs],
                 what or 'pip install ' + ' '.join(reqs))
        self.probe_again(key, failure)

    def in_place(self, key: str, reqs: dict) -> bool:
        return bool(self.st['ok'].get(key)) and satisfied(self.st, reqs)

    def pins_to_repair(self) -> list:
        """Installed distributions outside constraints.txt that pip can
        fix (mmcv is built in step 3, setuptools set in step 1)."""
        return [d for d in check.outside_constraints(self.versions, PINS)
                if d not in check.BUILD_ONLY]

    # -- the steps ---------------------------------------------------------
    def build_tools(self) -> str:
        if self.in_place('build-tools', BUILD_TOOLS):
            return f'in place (setuptools {self.versions["setuptools"]})'
        setuptools = 'setuptools' + PINS['setuptools']
        self.pip(['install', setuptools, 'wheel', 'ninja'],
                 f'pip install "{setuptools}" wheel ninja')
        # the final check reads the report: it must see the new build tools
        self.probe_again('build-tools', 'installed but still wrong: {}')
        return 'installed'

    def install_default_torch(self, force: bool) -> None:
        # "===" is an exact string match: it selects the registry's 2.13.0
        # build and skips local "+cpu" wheels that a find-links directory may
        # offer, for which no torchvision build exists (torchvision then fails
        # with "operator torchvision::nms does not exist").
        pair = [f'torch==={TORCH_DEFAULT}',
                f'torchvision==={TORCHVISION_DEFAULT}']
        if force:
            self.pip(['install', '--force-reinstall', '--no-deps', *pair],
                     'pip install --force-reinstall --no-deps '
                     + ' '.join(pair))
        only_build_pins = self.write_constraints(
            'constraints-torch.txt',
            ['setuptools' + PINS['setuptools'], 'numpy' + PINS['numpy']])
        self.pip(['install', *pair, '-c', only_build_pins],
                 f'pip install {" ".join(pair)}  (about 4.8 GB with its CUDA '
                 'libraries; runs on CPU too)')

    def torch(self) -> str:
        st = self.st
        if not st['ok'].get('torch'):
            if self.versions.get('torch'):
                raise StepFailed(
                    f'torch {self.versions["torch"]} is installed but does '
                    f'not import: {st["err"].get("torch")}\nFix: '
                    + torch_fix_command(st))
            if self.args.no_torch_install:
                raise StepFailed(
                    'torch is not installed (--no-torch-install). Install '
                    'your torch build, then run again.')
            self.install_default_torch(force=False)
            st.update(probe())
            if not (st['ok'].get('torch') and st['ok'].get('torchvision')):
                raise StepFailed('torch/torchvision installed but not '
                                 'working: ' + str(st['err']), self.log)
            return (f'installed torch {st["torch_version"]}, '
                    f'torchvision {st["torchvision_version"]}')
        if self.args.reinstall_torch:
            self.install_default_torch(force=True)
            self.probe_again('torchvision', 'torchvision still does not work '
                             'after re-installing the pair: {}')
            return (f're-installed torch {st["torch_version"]}, '
                    f'torchvision {st["torchvision_version"]}')
        if not self.versions.get('torchvision'):
            want = '{}.{}'.format(*check.torchvision_for(st['torch_version']))
            self.pip(['install', f'torchvision=={want}.*',
                      f'torch=={self.versions["torch"]}'],
                     f'pip install "torchvision=={want}.*" (keeping torch '
                     f'{st["torch_version"]})')
            st.update(probe())
        # the probe checks that torchvision is the one made for this torch
        if not st['ok'].get('torchvision'):
            raise StepFailed(
                f'torch {st["torch_version"]} and torchvision '
                f'{self.versions.get("torchvision")} do not work together: '
                f'{st["err"].get("torchvision")}\nFix: '
                + torch_fix_command(st))
        return (f'in place (torch {st["torch_version"]}, torchvision '
                f'{st["torchvision_version"]}, kept as installed)')

    def mmcv(self) -> str:
        if self.st['ok'].get('mmcv') and not self.args.rebuild_mmcv:
            return f'in place (mmcv {MMCV_VERSION}, ops run)'
        cache = mmcv_cache_dir(self.st)
        if self.args.rebuild_mmcv and osp.isdir(cache):
            shutil.rmtree(cache)
        how = 'from the cached build'
        if not wheels_in(cache):
            self.build_mmcv(cache)
            how = 'built'
        wheel = osp.join(cache, wheels_in(cache)[-1])
        self.pip(['install', '--force-reinstall', '--no-deps', wheel],
                 f'pip install {osp.basename(wheel)}')
        self.install([wheel], 'mmcv',
                     what='pip install the dependencies of mmcv',
                     failure='mmcv installed but its ops do not run: {}\nIf '
                     'torch changed since the cached build, run python '
                     'tools/install.py --rebuild-mmcv')
        return f'{how} and installed; nms and RoIAlign run'

    def build_mmcv(self, cache: str) -> None:
        if not (shutil.which('c++') or shutil.which('g++')):
            raise StepFailed(
                'no C++ compiler found; mmcv\'s ops must be compiled.\n'
                'Fix: apt-get install -y g++   (or your distribution\'s '
                'equivalent), then run again.')
        jobs = str(os.cpu_count() or 2)
        self.say(f'building mmcv {MMCV_VERSION} against torch '
                 f'{self.st["torch_version"]} with {jobs} jobs; this takes '
                 '16-18 min on 2 cores (once; the wheel is cached in '
                 f'{cache})')
        os.makedirs(cache, exist_ok=True)
        # -v: the log then shows ninja's [n/77] lines, which the heartbeat
        # turns into progress
        args = ['wheel', '-v', '--no-build-isolation', '--no-deps', '-w',
                cache, f'mmcv=={MMCV_VERSION}']
        if self.args.rebuild_mmcv:
            args.insert(1, '--no-cache-dir')
        self.pip(args, 'MMCV_WITH_OPS=1 pip wheel --no-build-isolation '
                 f'mmcv=={MMCV_VERSION}',
                 env_extra={'MMCV_WITH_OPS': '1', 'MAX_JOBS': jobs})
        if not wheels_in(cache):
            raise StepFailed('pip wheel produced no mmcv wheel', self.log)

    def openmmlab(self) -> str:
        if self.in_place('openmmlab', OPENMMLAB):
            return f'in place ({check.describe("openmmlab", self.st)})'
        self.install(requirement_list(OPENMMLAB), 'openmmlab')
        return 'installed'

    def tools(self) -> str:
        installed = self.in_place('tools', TOOLS)
        if installed and not self.pins_to_repair():
            v = self.versions
            return (f'in place (coremltools {v["coremltools"]}, numpy '
                    f'{v["numpy"]}, onnxruntime {v["onnxruntime"]})')
        done = []
        if not installed:
            self.install(requirement_list(TOOLS), 'tools')
            done.append('installed')
        bad = self.pins_to_repair()
        if bad:
            # e.g. opencv-python 5 let in by an earlier install: mmseg's
            # dataset browser crashes with it
            reqs = [f'{d}{PINS[d]}' for d in bad]
            self.pip(['install', '-c', self.constraints(), *reqs],
                     'pip install ' + ' '.join(f'"{r}"' for r in reqs)
                     + '  (back inside constraints.txt)')
            self.st.update(probe())
            if self.pins_to_repair():
                raise StepFailed('still outside constraints.txt: '
                                 + self.st['err'].get('pins', ''), self.log)
            done.append(f'brought {", ".join(bad)} inside constraints.txt')
        return '; '.join(done)

    def package(self) -> str:
        if self.st['ok'].get('package'):
            return f'in place (editable, {REPO})'
        self.pip(['install', '--no-build-isolation', '--no-deps', '-e', REPO],
                 'pip install --no-build-isolation --no-deps -e .')
        self.probe_again('package',
                         'installed but `import iformer_mm` fails: {}')
        return 'installed'

    def extra(self, name: str) -> str:
        if self.in_place(name, EXTRAS[name]):
            return f'in place ({check.describe(name, self.st)})'
        self.install(requirement_list(EXTRAS[name]), name)
        return 'installed'

    def verify(self) -> str:
        bad = [k for k in [*check.FULL, *self.args.extras]
               if not self.st['ok'].get(k)]
        if bad:
            raise StepFailed('still not working: ' + '; '.join(
                f'{k}: {self.st["err"].get(k, "not checked")}' for k in bad))
        return ('all imports work, mmcv nms and RoIAlign give the expected '
                'values')


STEPS = [  # (key: the log's name, title, method)
    ('build-tools', 'build tools (setuptools<81, wheel, ninja)',
     Installer.build_tools),
    ('torch', 'torch + torchvision', Installer.torch),
    ('mmcv', f'mmcv {MMCV_VERSION} with ops', Installer.mmcv),
    ('openmmlab', f'mmengine, mmdet {exact(PINS["mmdet"])}, mmseg '
     f'{exact(PINS["mmsegmentation"])}, mmpretrain '
     f'{exact(PINS["mmpretrain"])}', Installer.openmmlab),
    ('tools', ', '.join(d for d in TOOLS if d != 'numpy'), Installer.tools),
    ('package', 'iformer_mm (editable)', Installer.package),
    ('verify', 'final check', Installer.verify),
]


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------
def steps(extras) -> list:
    """STEPS with one step per extra before the final check."""
    added = [(name, f'{name} (optional extra)',
              lambda ins, name=name: ins.extra(name)) for name in extras]
    return STEPS[:-1] + added + STEPS[-1:]


def summary(st: dict) -> str:
    parts = []
    for name in ['torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet',
                 'mmsegmentation', 'mmpretrain', 'numpy', 'coremltools',
                 'onnxruntime', 'setuptools']:
        shown = (st.get('torch_version') if name == 'torch'
                 else st['versions'].get(name))
        parts.append(f'{name} {shown or "-"}')
    return ', '.join(parts)


def check_row(key: str, st: dict) -> str:
    """What ``--check`` shows for a part: the installer's versions (the
    probe's own table says more)."""
    v = st['versions']
    rows = {
        'build-tools': f'setuptools {v.get("setuptools")}',
        'torch': st.get('torch_version') or '-',
        'torchvision': (st.get('torchvision_version') or v.get('torchvision')
                        or '-'),
        'mmcv': v.get('mmcv') or '-',
        'tools': f'coremltools {v.get("coremltools")}, numpy {v.get("numpy")}',
        'package': v.get(check.DIST_NAME) or '-',
    }
    return rows[key] if key in rows else check.describe(key, st)


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
    p.add_argument('--with', dest='extras', action='append', default=[],
                   choices=sorted(EXTRAS), metavar='EXTRA',
                   help='also install an optional extra ('
                   + ', '.join(sorted(EXTRAS)) + '; requirements/EXTRA.txt)'
                   ' and count it in --check')
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
        check.report(st, [*check.FULL, *args.extras], describe=check_row)
        done = complete(st, args.extras)
        print('everything in place' if done else
              'incomplete: run python tools/install.py')
        return 0 if done else 1
    if complete(st, args.extras) and not (args.reinstall_torch or
                                          args.rebuild_mmcv):
        print(f'everything in place ({summary(st)}); nothing to do '
              f'({fmt_s(time.time() - t0)})')
        return 0

    ins = Installer(args, st)
    todo = steps(args.extras)
    for number, (key, title, step) in enumerate(todo, 1):
        print(f'[{number}/{len(todo)}] {title} ...', flush=True)
        ins.log = osp.join(ins.log_dir, f'{number}-{key}.log')
        t_step = time.time()
        try:
            result = step(ins)
        except StepFailed as e:
            print(f'\nFAILED at step [{number}/{len(todo)}] {title}:\n{e}',
                  flush=True)
            if e.log:
                print(f'\nlog: {e.log}\n--- last lines of the log ---\n'
                      + tail_of(e.log), flush=True)
            return 1
        ins.say(f'{result} ({fmt_s(time.time() - t_step)})')
    print(f'\ndone in {fmt_s(time.time() - t0)}: {summary(st)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
