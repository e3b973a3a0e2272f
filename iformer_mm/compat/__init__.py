"""Compatibility fixes for the OpenMMLab 2.0 stack, applied on import."""
