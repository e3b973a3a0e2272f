"""Registered training components, named in the configs' ``_base_``
runtimes and schedules, so that upstream tools build them too:
:class:`~.runner.IFormerRunner`, :class:`~.checkpointing.SafeCheckpointHook`,
:class:`~.hooks.StrictLoadFromHook`, the resumable loops of :mod:`.loops`
and :class:`~.dist.DeviceAwareDDP`. :mod:`.cli` holds ``tools/train.py``
and ``tools/test.py``."""
from . import checkpointing, hooks, loops  # noqa: F401  (register them)
from .dist import DeviceAwareDDP, init_dist_env  # noqa: F401
from .runner import IFormerRunner, adapt_to_machine, make_resumable  # noqa
