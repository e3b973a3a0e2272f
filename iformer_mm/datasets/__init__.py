"""Datasets: toy data generated on demand and checks for real datasets."""
from .builders import TOY_DATASETS, prepare_toy_dataset  # noqa: F401
from .checks import DatasetNotFoundError, check_datasets  # noqa: F401
from .toy import make_toy_ade, make_toy_coco, make_toy_imagenet  # noqa: F401
