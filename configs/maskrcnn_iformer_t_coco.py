# Alias of mask-rcnn_iformer-t_fpn_1x_coco.py (OpenMMLab 2.0 name), kept so
# that existing commands, work_dirs and scripts keep working.
_base_ = './mask-rcnn_iformer-t_fpn_1x_coco.py'
