# Table 1, "Sigmoid" row as the authors trained it: binary cross-entropy over C+1 channels (background one-hot on
# the last), scored with softmax.
_base_ = './softmax_mask-rcnn_r50_fpn_random-1x_lvis-v1.py'
model = dict(roi_head=dict(bbox_head=dict(
    loss_cls=dict(_delete_=True, type='GolSigmoidLoss', num_classes=1203, background_channel=True),
    init_cfg=dict(type='Constant', val=0.001, bias=-6.5, override=dict(name='fc_cls')))))
