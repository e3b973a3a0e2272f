"""Runner set-up for the tools: CPU-aware distributed runs, config
adaptation to the machine, dataset checks, atomic checkpoints, exact resume
and the work-dir lock."""
from . import checkpointing, loops  # noqa: F401  (register hook, loops)
from .dist import DeviceAwareDDP, init_dist_env  # noqa: F401
from .runner import (adapt_to_machine, build_runner,  # noqa: F401
                     config_scope, load_config, make_resumable)
