"""Running the repository's tools as a user does, from the tests."""
import contextlib
import os
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(name):
    """tools/<name>.py as a module (tools/ is not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        f'_iformer_tool_{name}', osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(args, cwd, env=None, timeout=900):
    """Run ``args`` in ``cwd`` (on PYTHONPATH with the repository); fail the
    test with the output's tail unless it exits 0; return its output."""
    full_env = dict(os.environ)
    full_env['PYTHONPATH'] = os.pathsep.join(
        [ROOT, str(cwd), full_env.get('PYTHONPATH', '')])
    full_env.update(env or {})
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


class Built(Exception):
    """Raised in place of building the runner; ``args[0]`` is its config."""


def config_the_runner_gets(tool, argv):
    """Run ``tools/<tool>.py argv`` in this process up to the point where
    the upstream tool builds the runner, and return the config it builds
    it from (nothing is trained, tested or written but the work-dir
    lock)."""
    import pytest

    from iformer_mm.engine import cli
    from iformer_mm.engine.runner import IFormerRunner

    def capture(cls, cfg):
        raise Built(cfg)
    main = cli.train_main if tool == 'train' else cli.test_main
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(IFormerRunner, 'from_cfg', classmethod(capture))
        try:
            main(list(argv))
        except Built as built:
            return built.args[0]
    raise AssertionError(f'tools/{tool}.py {argv} built no runner')


def runner_of(tool, argv):
    """The runner ``tools/<tool>.py argv`` builds (not yet run)."""
    from mmengine.registry import RUNNERS
    return RUNNERS.build(config_the_runner_gets(tool, argv))


def untrained_checkpoint(config, path):
    """``config``'s model, randomly initialised (seed 0), saved at ``path``
    as a checkpoint tools/test.py loads: the untrained baseline that a
    training run has to beat."""
    import torch
    from mmengine.runner import set_random_seed

    import iformer_mm
    set_random_seed(0)
    model = iformer_mm.get_model(config)
    torch.save(dict(state_dict=model.state_dict(), meta={}), str(path))
    return str(path)


@contextlib.contextmanager
def held_elsewhere(work, without_fcntl=False):
    """The work-dir lock of ``work`` held by another process; yields its
    PID. That process takes the lock as the protocol says (an ``flock`` on
    ``.iformer_mm.lock`` holding its PID, host and start time) without
    importing anything heavy; with ``without_fcntl`` it is instead our
    ``WorkDirLock`` in an interpreter where ``import fcntl`` fails (as on
    Windows). On exit the holder releases it; ``work`` must then be empty
    (it is removed): nobody else wrote into it."""
    if without_fcntl:
        code = ('import sys\n'
                'sys.modules["fcntl"] = None\n'
                'from iformer_mm.engine import lock\n'
                'assert lock.fcntl is None\n'
                f'lock.WorkDirLock({str(work)!r}).acquire()\n')
    else:
        code = ('import fcntl, json, os, socket, sys, time\n'
                f'work = {str(work)!r}\n'
                'os.makedirs(work, exist_ok=True)\n'
                'path = os.path.join(work, ".iformer_mm.lock")\n'
                'fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)\n'
                'fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n'
                'os.write(fd, json.dumps(dict(pid=os.getpid(), '
                'host=socket.gethostname(), started=time.strftime('
                '"%Y-%m-%d %H:%M:%S"))).encode())\n'
                'import atexit; atexit.register(os.unlink, path)\n')
    code += 'print("held", flush=True)\nsys.stdin.read()\n'
    proc = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == 'held'
        yield proc.pid
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    os.rmdir(work)
