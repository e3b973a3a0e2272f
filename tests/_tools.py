"""Running the repository's tools as a user does, from the tests."""
import os
import os.path as osp
import subprocess

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


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
