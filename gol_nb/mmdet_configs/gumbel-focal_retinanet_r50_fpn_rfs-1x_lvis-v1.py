# Dense detection on LVIS v1: the LVIS reference RetinaNet with the Gumbel focal loss and the Gumbel prior
# initialisation, b = -log(-log 0.01) (see the COCO Gumbel config).
import math

_base_ = './sigmoid-focal_retinanet_r50_fpn_rfs-1x_lvis-v1.py'
model = dict(bbox_head=dict(
    loss_cls=dict(_delete_=True, type='GumbelFocalLoss', num_classes=1203, use_sigmoid=True, alpha=0.25, gamma=2.0,
                  loss_weight=1.0),
    init_cfg=dict(type='Normal', layer='Conv2d', std=0.01,
                  override=dict(type='Normal', name='retina_cls', std=0.01, bias=-math.log(-math.log(0.01))))))
