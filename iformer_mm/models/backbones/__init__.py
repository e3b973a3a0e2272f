from .iformer import (ARCH_ZOO, AUTHORS_PRESET_SOURCES,  # noqa: F401
                      AUTHORS_PRESETS, WINDOW_PADDING_MODES, IFormer,
                      authors_preset, build_authors_preset,
                      switch_to_deploy_all)

__all__ = ['ARCH_ZOO', 'AUTHORS_PRESETS', 'AUTHORS_PRESET_SOURCES',
           'WINDOW_PADDING_MODES', 'IFormer', 'authors_preset',
           'build_authors_preset', 'switch_to_deploy_all']
