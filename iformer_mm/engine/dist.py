"""Distributed training that also works without a GPU.

mmengine's launchers call ``torch.cuda.set_device`` before creating the
process group, and its runner wraps the model in DDP with
``device_ids=[LOCAL_RANK]``; both fail on a CPU-only machine. Here:

* :func:`init_dist_env` creates the process group itself (gloo on CPU, the
  config's backend otherwise) for the ``pytorch``, ``slurm`` and ``mpi``
  launchers. mmengine's runner then finds a process group already there and
  skips its own initialisation.
* :class:`DeviceAwareDDP`, a model wrapper registered in mmengine's root
  ``MODEL_WRAPPERS``, passes ``device_ids`` to DDP only when the model lives
  on a GPU.
* :func:`shutdown_dist` ends a finished run cleanly: a barrier, then
  ``destroy_process_group``. A process that exits with its gloo group alive
  lets the interpreter tear down the group's threads in no set order, which
  occasionally aborts a rank ("terminate called without an active
  exception", SIGABRT) after the work is done. Groups created here are also
  destroyed at exit (without a barrier) if the tool did not get that far.
"""
from __future__ import annotations

import atexit
import gc
import os
import subprocess
from typing import Optional

import torch
import torch.distributed as torch_dist
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def _env_from_slurm(port: Optional[int]) -> None:
    proc_id = int(os.environ['SLURM_PROCID'])
    ntasks = int(os.environ['SLURM_NTASKS'])
    node_list = os.environ['SLURM_NODELIST']
    local_rank = os.environ.get('SLURM_LOCALID', '0')
    if 'MASTER_ADDR' not in os.environ:
        addr = subprocess.getoutput(
            f'scontrol show hostname {node_list} | head -n1').strip()
        os.environ['MASTER_ADDR'] = addr or '127.0.0.1'
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')
    os.environ['WORLD_SIZE'] = str(ntasks)
    os.environ['LOCAL_RANK'] = str(local_rank)
    os.environ['RANK'] = str(proc_id)


def _env_from_mpi(port: Optional[int]) -> None:
    os.environ['RANK'] = os.environ['OMPI_COMM_WORLD_RANK']
    os.environ['WORLD_SIZE'] = os.environ['OMPI_COMM_WORLD_SIZE']
    os.environ['LOCAL_RANK'] = os.environ['OMPI_COMM_WORLD_LOCAL_RANK']
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')


def init_dist_env(launcher: str, backend: Optional[str] = None,
                  port: Optional[int] = None, **kwargs) -> bool:
    """Create the default process group for ``launcher`` if needed.

    On a machine with CUDA this only returns ``False`` and leaves the work
    to mmengine (NCCL, ``torch.cuda.set_device``). Without CUDA it reads the
    launcher's environment and initialises a gloo group. Returns whether it
    created the group.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher must be one of {LAUNCHERS}, got '
                         f'{launcher!r}')
    if launcher == 'none' or (torch_dist.is_available()
                              and torch_dist.is_initialized()):
        return False
    if torch.cuda.is_available():
        return False
    if launcher == 'slurm':
        _env_from_slurm(port)
    elif launcher == 'mpi':
        _env_from_mpi(port)
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if k not in os.environ]
    if missing:
        raise RuntimeError(
            f'--launcher {launcher} needs the environment variables '
            f'{missing}; start the run with tools/dist_train.sh (torchrun) '
            f'or tools/slurm_train.sh.')
    if backend in (None, 'nccl'):
        backend = 'gloo'
    torch_dist.init_process_group(
        backend=backend, rank=int(os.environ['RANK']),
        world_size=int(os.environ['WORLD_SIZE']), **kwargs)
    atexit.register(_destroy_at_exit)
    return True


def _destroy_at_exit() -> None:
    """Last resort at interpreter exit: destroy a group still alive (no
    barrier: the other ranks may be gone)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        try:
            torch_dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
        gc.collect()


def shutdown_dist(barrier: bool = True) -> bool:
    """End the default process group of a run that finished.

    Every rank waits for the others (``barrier``), then destroys its group
    and collects the objects that hold the backend's threads, so that no
    gloo/NCCL thread is alive when the interpreter exits. Call it on the
    success path only: after a failure on one rank the others would wait in
    the barrier. Returns whether there was a group to end.
    """
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return False
    if barrier and torch_dist.get_world_size() > 1:
        torch_dist.barrier()
    torch_dist.destroy_process_group()
    gc.collect()
    return True


@MODEL_WRAPPERS.register_module()
class DeviceAwareDDP(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that works on CPU as well as on GPU.

    The runner always passes ``device_ids=[LOCAL_RANK]``; DDP rejects
    ``device_ids`` for a module on the CPU, so they are dropped there, and
    SyncBatchNorm layers (no CPU kernel) go back to BatchNorm.
    """

    def __init__(self, module, device_ids=None, output_device=None,
                 **kwargs):
        param = next(module.parameters(), None)
        on_gpu = param is not None and param.device.type == 'cuda'
        if not on_gpu:
            device_ids, output_device = None, None
            module = revert_sync_batchnorm(module)
        super().__init__(module=module, device_ids=device_ids,
                         output_device=output_device, **kwargs)
