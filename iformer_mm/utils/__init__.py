"""Counting a model: parameters and MACs (:mod:`.complexity`), activation
memory (:mod:`.memory`)."""
from .complexity import backbone_complexity, count_macs, count_params
from .memory import TensorMemoryTracker

__all__ = ['backbone_complexity', 'count_macs', 'count_params',
           'TensorMemoryTracker']
