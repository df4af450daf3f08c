# Section 6 (dense detection), the paper's claim ("+0.4 AP with RetinaNet on COCO, 1x"): the reference RetinaNet with
# the Gumbel focal loss (G = exp(-exp(-x)) in place of the sigmoid, alpha 0.25, gamma 2), scored with G at test time,
# and the prior initialisation solved for G: bias b = -log(-log 0.01), so that G(b) = 0.01. RetinaHead's default
# init_cfg asks for the sigmoid prior (bias_prob=0.01, b = -4.6, G(b) ~ 1e-43): it is replaced as a whole.
import math

_base_ = './sigmoid-focal_retinanet_r50_fpn_1x_coco.py'
model = dict(bbox_head=dict(
    loss_cls=dict(_delete_=True, type='GumbelFocalLoss', num_classes=80, use_sigmoid=True, alpha=0.25, gamma=2.0,
                  loss_weight=1.0),
    init_cfg=dict(type='Normal', layer='Conv2d', std=0.01,
                  override=dict(type='Normal', name='retina_cls', std=0.01, bias=-math.log(-math.log(0.01))))))
