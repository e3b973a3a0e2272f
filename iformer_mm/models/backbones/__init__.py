from .iformer import ARCH_ZOO, IFormer, switch_to_deploy_all  # noqa: F401

__all__ = ['ARCH_ZOO', 'IFormer', 'switch_to_deploy_all']
