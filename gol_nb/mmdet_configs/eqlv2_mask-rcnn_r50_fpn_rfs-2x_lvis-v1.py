# Baseline: Equalization Loss v2 (Tan et al., CVPR 2021; gol_nb's EQLv2, written from the paper) in GOL's own setting:
# the GOL R50 config (Mask R-CNN R50-FPN, 2x, repeat-factor sampling t = 0.001, normalised mask head, test NMS IoU
# 0.3) with only the classification loss changed, so that GOL and EQLv2 differ in nothing else. EQLv2 is a sigmoid
# loss over C channels; its classifier starts as mmdet's box head does (weights Normal(0, 0.01), bias 0).
_base_ = './gol_mask-rcnn_r50_fpn_rfs-2x_lvis-v1.py'
model = dict(roi_head=dict(bbox_head=dict(
    loss_cls=dict(_delete_=True, type='GolEQLv2Loss', num_classes=1203),
    init_cfg=dict(_delete_=True, type='Normal', std=0.01, bias=0.0, override=dict(name='fc_cls')))))
