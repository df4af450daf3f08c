# Table 1, "Gumbel" row as the authors trained it: Gumbel loss over C+1 channels (the background channel is a
# positive on background RoIs and gets no score at test time).
_base_ = './softmax_mask-rcnn_r50_fpn_random-1x_lvis-v1.py'
model = dict(roi_head=dict(bbox_head=dict(
    loss_cls=dict(_delete_=True, type='GumbelLoss', num_classes=1203, background_channel=True),
    init_cfg=dict(type='Constant', val=0.001, bias=-2.0, override=dict(name='fc_cls')))))
