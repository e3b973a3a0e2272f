#!/usr/bin/env python
"""Test an iFormer model with the options of the upstream tools/test.py of
the config's codebase (mmdet, mmseg or mmpretrain: its default_scope
decides). See docs/getting_started.md; `python tools/test.py -h` lists the
options. A mistake in the command line, the config or the checkpoint is
reported in one line (exit code 2); --debug shows the traceback."""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from iformer_mm.engine.cli import test_tool  # noqa: E402

if __name__ == '__main__':
    sys.exit(test_tool())
