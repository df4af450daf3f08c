# Table 1, "Softmax" row: Mask R-CNN R50-FPN, 1x, random sampler, LVIS v1; cross-entropy over C+1 channels.
# Derived from mmdet's LVIS v1 config. Changes: gol_nb's LVIS dataset and evaluator (gol_nb.mmdet_plugin),
# repeat-factor sampling off (oversample_thr=0: every repeat factor is 1), mask targets rasterised per RoI from
# the polygons (poly2mask=False), the authors' classifier init, evaluation once at the end.
_base_ = 'mmdet::lvis/mask-rcnn_r50_fpn_sample1e-3_ms-1x_lvis-v1.py'
custom_imports = dict(imports=['gol_nb.mmdet_plugin'], allow_failed_imports=False)

model = dict(
    roi_head=dict(bbox_head=dict(
        loss_cls=dict(_delete_=True, type='GolSoftmaxLoss', num_classes=1203),
        init_cfg=dict(type='Constant', val=0.001, bias=-6.5, override=dict(name='fc_cls')))),
    test_cfg=dict(rcnn=dict(nms=dict(type='nms', iou_threshold=0.5))))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, poly2mask=False),
    dict(type='RandomChoiceResize', scales=[(1333, 640), (1333, 672), (1333, 704), (1333, 736), (1333, 768),
                                            (1333, 800)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')]
train_dataloader = dict(dataset=dict(oversample_thr=0.0, dataset=dict(type='GolLVISDataset', pipeline=train_pipeline)))
val_dataloader = dict(dataset=dict(type='GolLVISDataset'))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='GolLVISMetric', ann_file='data/lvis_v1/annotations/lvis_v1_val.json')
test_evaluator = val_evaluator
train_cfg = dict(val_interval=12)
# lr 0.02 is meant for 16 images per iteration (8 GPUs x 2): scaled linearly to the real total batch
auto_scale_lr = dict(enable=True, base_batch_size=16)
