# Fig. 4 i, "Cascade R101" Gumbel row: the Gumbel loss over C+1 channels in each stage.
_base_ = './softmax_cascade-mask-rcnn_r101_fpn_random-1x_lvis-v1.py'
model = dict(roi_head=dict(bbox_head=[
    dict(type='Shared2FCBBoxHead', in_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=1203,
         bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                         target_stds=[0.1, 0.1, 0.2, 0.2]),
         reg_class_agnostic=True, loss_cls=dict(type='GumbelLoss', num_classes=1203, background_channel=True),
         init_cfg=dict(type='Constant', val=0.001, bias=-2.0, override=dict(name='fc_cls')),
         loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0)),
    dict(type='Shared2FCBBoxHead', in_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=1203,
         bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                         target_stds=[0.05, 0.05, 0.1, 0.1]),
         reg_class_agnostic=True, loss_cls=dict(type='GumbelLoss', num_classes=1203, background_channel=True),
         init_cfg=dict(type='Constant', val=0.001, bias=-2.0, override=dict(name='fc_cls')),
         loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0)),
    dict(type='Shared2FCBBoxHead', in_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=1203,
         bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                         target_stds=[0.033, 0.033, 0.067, 0.067]),
         reg_class_agnostic=True, loss_cls=dict(type='GumbelLoss', num_classes=1203, background_channel=True),
         init_cfg=dict(type='Constant', val=0.001, bias=-2.0, override=dict(name='fc_cls')),
         loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))]))
