# Alias of fpn_iformer-m_8xb4-40k_ade20k-512x512.py (OpenMMLab 2.0 name), kept
# so that existing commands, work_dirs and scripts keep working.
_base_ = './fpn_iformer-m_8xb4-40k_ade20k-512x512.py'
