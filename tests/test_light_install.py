"""The light install (``pip install -e ".[deploy]"``): torch, mmengine,
coremltools and onnxruntime only.

Each test runs a fresh interpreter in which importing mmcv, mmdet, mmseg and
mmpretrain fails, through a blocking import hook (a ``sitecustomize`` on
``PYTHONPATH`` that puts a finder first on ``sys.meta_path``), and checks
that the backbone, checkpoint conversion, the export path of the latency
tool and ``python -m iformer_mm.check --deploy`` work there.
"""
import json
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BLOCKED = ('mmcv', 'mmdet', 'mmseg', 'mmpretrain')

SITECUSTOMIZE = textwrap.dedent('''\
    import sys

    BLOCKED = {blocked!r}


    class _Block:
        """Refuse the OpenMMLab task libraries (as if not installed)."""

        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                raise ModuleNotFoundError(
                    'No module named %r (blocked: light install)' % name,
                    name=name)
            return None


    sys.meta_path.insert(0, _Block())
''').format(blocked=BLOCKED)


@pytest.fixture(scope='module')
def light_env(tmp_path_factory):
    hook = tmp_path_factory.mktemp('light_hook')
    (hook / 'sitecustomize.py').write_text(SITECUSTOMIZE)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(hook), REPO])
    env.setdefault('OMP_NUM_THREADS', '2')
    return env


def run(env, args, cwd, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_hook_blocks_the_task_libraries(light_env, tmp_path):
    """The environment really lacks them (else the tests below prove
    nothing)."""
    code = textwrap.dedent(f'''\
        import importlib
        for name in {BLOCKED!r}:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as e:
                assert 'blocked' in str(e), e
            else:
                raise SystemExit(name + ' imported')
        print('blocked')
    ''')
    proc = run(light_env, ['-c', code], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == 'blocked'


def test_backbone_and_checkpoint_conversion(light_env, tmp_path):
    """``import iformer_mm``, IFormer and tools/convert_checkpoint.py work
    without the task libraries and never import them."""
    src = tmp_path / 'openmmlab.pth'
    dst = tmp_path / 'backbone.pth'
    code = textwrap.dedent(f'''\
        import sys
        import torch
        import iformer_mm
        from iformer_mm.models import IFormer
        torch.manual_seed(0)
        model = IFormer(arch='t').eval()
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            ref = model(x)[-1]
        # an OpenMMLab (mmpretrain) checkpoint: backbone. prefix + meta
        torch.save({{'meta': {{}}, 'state_dict': {{
            'backbone.' + k: v for k, v in model.state_dict().items()}}}},
            {str(src)!r})
        torch.save({{'x': x, 'ref': ref}}, {str(tmp_path / 'ref.pt')!r})
        loaded = sorted(m for m in sys.modules
                        if m.split('.')[0] in {BLOCKED!r})
        print('loaded:', loaded)
    ''')
    proc = run(light_env, ['-c', code], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == 'loaded: []'

    proc = run(light_env, [osp.join(REPO, 'tools', 'convert_checkpoint.py'),
                           str(src), str(dst), '--target', 'backbone'],
               tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # the converted file rebuilds the same network (checked here, in the
    # full environment, against the output computed before conversion)
    from iformer_mm.models import IFormer
    state = torch.load(str(dst), map_location='cpu', weights_only=True)
    state = state.get('state_dict', state)
    model = IFormer(arch='t').eval()
    model.load_state_dict(
        {k[len('backbone.'):] if k.startswith('backbone.') else k: v
         for k, v in state.items()}, strict=True)
    ref = torch.load(str(tmp_path / 'ref.pt'), weights_only=True)
    with torch.no_grad():
        out = model(ref['x'])[-1]
    assert torch.equal(out, ref['ref'])


def test_check_deploy(light_env, tmp_path):
    """The probe passes for the light install and the full check names
    what is missing."""
    proc = run(light_env, ['-m', 'iformer_mm.check', '--deploy'], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert 'everything works' in proc.stdout
    assert 'executorch' in proc.stdout  # the optional extra's status
    proc = run(light_env, ['-m', 'iformer_mm.check'], tmp_path)
    assert proc.returncode == 1
    assert '[BAD] mmcv' in proc.stdout and 'blocked' in proc.stdout


def test_latency_tool_without_task_libraries(light_env, tmp_path):
    """tools/benchmark_latency.py exports and times IFormer; a peer from
    mmdet is reported as unavailable, and the run still succeeds."""
    out = tmp_path / 'lat'
    proc = run(light_env, [
        osp.join(REPO, 'tools', 'benchmark_latency.py'), 'iformer-t',
        '--peers', 'resnet18', '--size', '64', '--warmup', '0', '--runs',
        '1', '--no-chart', '--quiet', '--out', str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run_ = json.loads((out / 'latency.json').read_text())
    rows = {r['key']: r for r in run_['results']}
    ours = [r for r in run_['results'] if r['family'] == 'iformer']
    assert len(ours) == 1 and ours[0]['status'] == 'ok', ours
    assert ours[0]['coreml']['status'] == 'validated', ours[0]['coreml']
    peer = rows['resnet18']
    assert peer['status'] == 'skipped', peer
    assert 'mmdet' in peer['reason']
    out_lines = (proc.stdout + proc.stderr).splitlines()
    said = [line for line in out_lines if 'ResNet' in line
            and 'skipped' in line and not line.startswith('|')]
    assert len(said) == 1 and 'mmdet' in said[0], said
    assert 'Traceback' not in proc.stdout + proc.stderr
    assert not any('failed' in line for line in out_lines), out_lines
