#!/usr/bin/env python
"""Train an iFormer model: mmdet's tools/train.py command line, for detection,
segmentation and classification configs alike (the config's default_scope
decides). See docs/getting_started.md; `python tools/train.py -h` lists the
options."""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from iformer_mm.engine.cli import train_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(train_main())
