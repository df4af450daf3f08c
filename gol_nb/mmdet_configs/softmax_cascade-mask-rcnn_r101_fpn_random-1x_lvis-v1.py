# Fig. 4 i, "Cascade R101" Softmax row: Cascade Mask R-CNN R101-FPN, 1x, random sampler, LVIS v1, cross-entropy over
# C+1 channels in each of the three stages (class-agnostic box regression, as mmdet's Cascade).
# Derived from mmdet's LVIS v1 Cascade config (the Seesaw one, random sampler): plain linear classifiers instead of
# the normalised ones, plain mask head, gol_nb's LVIS dataset and evaluator, 1x schedule.
_base_ = 'mmdet::seesaw_loss/cascade-mask-rcnn_r101_fpn_seesaw-loss_random-ms-2x_lvis-v1.py'
custom_imports = dict(imports=['gol_nb.mmdet_plugin'], allow_failed_imports=False)

model = dict(roi_head=dict(bbox_head=[
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
         loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))]))

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
