"""Whole models from configs: built (:mod:`.build`), found by name
(:mod:`.hub`), timed (:mod:`.benchmark`) and run on images
(:mod:`.inference`).

mmdet / mmseg / mmpretrain are imported only when a config of theirs is
run.
"""
from .benchmark import BenchmarkResult, benchmark, format_results  # noqa
from .inference import DemoResult, collect_images, run_demo  # noqa

__all__ = ['BenchmarkResult', 'benchmark', 'format_results', 'DemoResult',
           'collect_images', 'run_demo']
