# The paper's Table 16 layout, channel-chunked ("cc-hybrid", Table 17):
# in stages 3 and 4 every SHMA but the last attends within 16x16 windows,
# partitioned once per stage in 16 channel chunks; padded tokens are masked
# out (window_padding='mask'), so a valid token's output does not depend on
# the padding. Everything else is fpn_iformer-l_8xb4-40k_ade20k-512x512.py.
# No released weights use this layout: train it, do not load
# iFormer_l_iter_40000.pth into it.
_base_ = './fpn_iformer-l_8xb4-40k_ade20k-512x512.py'
model = dict(
    backbone=dict(
        attention='hybrid', window_chunks=16, window_padding='mask'))
