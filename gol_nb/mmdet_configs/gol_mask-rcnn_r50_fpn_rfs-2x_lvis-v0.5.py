# Table 3, GOL R50 on LVIS v0.5 (1230 classes, lambda 0.00177), from mmdet's LVIS v0.5 2x RFS config.
_base_ = 'mmdet::lvis/mask-rcnn_r50_fpn_sample1e-3_ms-2x_lvis-v0.5.py'
custom_imports = dict(imports=['gol_nb.mmdet_plugin'], allow_failed_imports=False)

model = dict(
    roi_head=dict(
        bbox_head=dict(
            loss_cls=dict(_delete_=True, type='GOLLoss', num_classes=1230, lambda_=0.00177,
                          ann_file='data/lvis_v0.5/annotations/lvis_v0.5_train.json'),
            init_cfg=dict(type='Constant', val=0.001, bias=-2.0, override=dict(name='fc_cls'))),
        mask_head=dict(predictor_cfg=dict(type='NormedConv2d', temperature=20))),
    test_cfg=dict(rcnn=dict(nms=dict(type='nms', iou_threshold=0.3))))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, poly2mask=False),
    dict(type='RandomChoiceResize', scales=[(1333, 640), (1333, 672), (1333, 704), (1333, 736), (1333, 768),
                                            (1333, 800)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')]
train_dataloader = dict(dataset=dict(dataset=dict(type='GolLVISDataset', pipeline=train_pipeline)))
val_dataloader = dict(dataset=dict(type='GolLVISDataset'))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='GolLVISMetric', ann_file='data/lvis_v0.5/annotations/lvis_v0.5_val.json')
test_evaluator = val_evaluator
train_cfg = dict(val_interval=24)
auto_scale_lr = dict(enable=True, base_batch_size=16)
