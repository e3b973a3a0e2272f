from .backbones import *  # noqa: F401,F403
from .checkpoint import convert_to_ours, load_iformer_checkpoint  # noqa: F401

try:  # the classification head needs mmpretrain
    from .heads import IFormerClsHead  # noqa: F401
except ImportError as e:  # pragma: no cover - reported when used
    _HEAD_IMPORT_ERROR = e
