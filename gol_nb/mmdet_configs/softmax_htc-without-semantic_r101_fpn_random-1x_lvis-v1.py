# Fig. 4 i, "HTC R101" Softmax row: Hybrid Task Cascade R101-FPN without the semantic branch (LVIS has no stuff
# maps), 1x, random sampler, multi-scale training, LVIS v1, cross-entropy over C+1 channels in each stage.
# Derived from mmdet's HTC config with the LVIS v1 data settings of mmdet's LVIS configs.
_base_ = 'mmdet::htc/htc-without-semantic_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['gol_nb.mmdet_plugin'], allow_failed_imports=False)

model = dict(
    backbone=dict(depth=101, init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')),
    roi_head=dict(
        bbox_head=[
            dict(type='Shared2FCBBoxHead', in_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=1203,
                 bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                                 target_stds=[0.1, 0.1, 0.2, 0.2]),
                 reg_class_agnostic=True, loss_cls=dict(type='GolSoftmaxLoss', num_classes=1203),
                 init_cfg=dict(type='Constant', val=0.001, bias=-6.5, override=dict(name='fc_cls')),
                 loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0)),
            dict(type='Shared2FCBBoxHead', in_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=1203,
                 bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                                 target_stds=[0.05, 0.05, 0.1, 0.1]),
                 reg_class_agnostic=True, loss_cls=dict(type='GolSoftmaxLoss', num_classes=1203),
                 init_cfg=dict(type='Constant', val=0.001, bias=-6.5, override=dict(name='fc_cls')),
                 loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0)),
            dict(type='Shared2FCBBoxHead', in_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=1203,
                 bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                                 target_stds=[0.033, 0.033, 0.067, 0.067]),
                 reg_class_agnostic=True, loss_cls=dict(type='GolSoftmaxLoss', num_classes=1203),
                 init_cfg=dict(type='Constant', val=0.001, bias=-6.5, override=dict(name='fc_cls')),
                 loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))],
        mask_head=[
            dict(type='HTCMaskHead', with_conv_res=False, num_convs=4, in_channels=256, conv_out_channels=256,
                 num_classes=1203, loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0)),
            dict(type='HTCMaskHead', num_convs=4, in_channels=256, conv_out_channels=256, num_classes=1203,
                 loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0)),
            dict(type='HTCMaskHead', num_convs=4, in_channels=256, conv_out_channels=256, num_classes=1203,
                 loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))]),
    test_cfg=dict(rcnn=dict(score_thr=0.0001, max_per_img=300)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, poly2mask=False),
    dict(type='RandomChoiceResize', scales=[(1333, 640), (1333, 672), (1333, 704), (1333, 736), (1333, 768),
                                            (1333, 800)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')]
train_dataloader = dict(dataset=dict(
    type='GolLVISDataset', data_root='data/lvis_v1/', ann_file='annotations/lvis_v1_train.json',
    data_prefix=dict(img=''), pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(
    type='GolLVISDataset', data_root='data/lvis_v1/', ann_file='annotations/lvis_v1_val.json',
    data_prefix=dict(img='')))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='GolLVISMetric', ann_file='data/lvis_v1/annotations/lvis_v1_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=12, val_interval=12)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)]
auto_scale_lr = dict(enable=True, base_batch_size=16)
