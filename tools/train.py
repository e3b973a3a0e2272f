#!/usr/bin/env python
"""Train an iFormer model: mmdet's tools/train.py command line, for detection,
segmentation and classification configs alike (the config's default_scope
decides). See docs/getting_started.md; `python tools/train.py -h` lists the
options. A mistake in the command line or the config is reported in one
line (exit code 2); --debug shows the traceback."""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from iformer_mm.engine.cli import train_tool  # noqa: E402

if __name__ == '__main__':
    sys.exit(train_tool())
