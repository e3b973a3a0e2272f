from .iformer_head import IFormerClsHead  # noqa: F401

__all__ = ['IFormerClsHead']
