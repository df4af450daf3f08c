# Table 3, GOL R101 on LVIS v1.
_base_ = './gol_mask-rcnn_r50_fpn_rfs-2x_lvis-v1.py'
model = dict(backbone=dict(depth=101, init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')))
