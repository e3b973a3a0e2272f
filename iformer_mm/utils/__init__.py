from .complexity import backbone_complexity, count_macs, count_params  # noqa: F401
from .memory import TensorMemoryTracker  # noqa: F401
