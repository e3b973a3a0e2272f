"""Tools' library code: whole-model benchmark and image demo.

Importing this package is cheap: mmdet / mmseg / mmpretrain are imported
only when a config of theirs is run.
"""
from .benchmark import BenchmarkResult, benchmark, format_results  # noqa
from .inference import DemoResult, collect_images, run_demo  # noqa

__all__ = ['BenchmarkResult', 'benchmark', 'format_results', 'DemoResult',
           'collect_images', 'run_demo']
