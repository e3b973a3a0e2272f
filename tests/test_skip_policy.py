"""The skip policy of tests/conftest.py: only ``platform:`` skips pass CI."""
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

CASES = {
    'test_plain.py': 'def test_ok():\n    assert True\n',
    'test_platform.py': (
        'import pytest\n\n'
        "@pytest.mark.skip(reason='platform: needs macOS')\n"
        'def test_mac():\n    pass\n'),
    'test_missing.py': (
        'import pytest\n\n'
        'def test_needs_lib():\n'
        "    pytest.importorskip('no_such_module_iformer')\n"),
}


def _run(tmp_path, files, strict):
    for name in ['conftest.py'] + files:
        if name == 'conftest.py':
            shutil.copy(osp.join(ROOT, 'tests', 'conftest.py'), tmp_path)
        else:
            (tmp_path / name).write_text(CASES[name])
    env = {k: v for k, v in os.environ.items()
           if k not in ('CI', 'IFORMER_STRICT_SKIPS')}
    if strict is not None:
        env['IFORMER_STRICT_SKIPS'] = strict
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
         str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize('strict,files,rc', [
    ('1', ['test_plain.py', 'test_platform.py'], 0),
    ('1', ['test_plain.py', 'test_missing.py'], 1),
    ('0', ['test_plain.py', 'test_missing.py'], 0),
])
def test_skip_policy(tmp_path, strict, files, rc):
    code, out = _run(tmp_path, files, strict)
    assert code == rc, out
    if 'test_missing.py' in files:
        assert 'unexplained skips' in out
        assert 'test_missing.py::test_needs_lib' in out


def test_ci_env_turns_policy_on(tmp_path):
    for name in ['test_plain.py', 'test_missing.py']:
        (tmp_path / name).write_text(CASES[name])
    shutil.copy(osp.join(ROOT, 'tests', 'conftest.py'), tmp_path)
    env = {k: v for k, v in os.environ.items()
           if k != 'IFORMER_STRICT_SKIPS'}
    env['CI'] = 'true'
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
         str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout
