#!/usr/bin/env python
"""Backbone latency through Core ML, with labelled CPU proxies elsewhere.

    python tools/benchmark_latency.py                      # iFormer-M, 512x512
    python tools/benchmark_latency.py --table17 --peers    # the paper's comparison
    python tools/benchmark_latency.py iformer-l:hybrid resnet50 --size 640
    python tools/benchmark_latency.py iformer-m --backend executorch  # .pte, ExecuTorch runtime

Everything lives in :mod:`iformer_mm.deploy.benchmark`; see ``--help``.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__),
                                                os.pardir)))

from iformer_mm.deploy.benchmark import main  # noqa: E402
from iformer_mm.engine.errors_cli import run_tool  # noqa: E402

if __name__ == '__main__':
    # A user mistake: one line on stderr, exit code 2 (--debug: traceback).
    sys.exit(run_tool(main, prog='benchmark_latency.py'))
