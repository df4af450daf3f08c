# Baseline: the Seesaw loss (Wang et al., CVPR 2021) as mmdetection ships it, Mask R-CNN R50-FPN, 2x, repeat-factor
# sampling (t = 0.001), multi-scale training: mmdet's SeesawLoss (p 0.8, q 2.0) on its normalised classifier
# (NormedLinear, temperature 20), normalised mask head, mmdet's test settings. From mmdet's config; only the data
# and evaluation are gol_nb's (GolLVISDataset, GolLVISMetric, mask targets rasterised per RoI), as for the GOL configs.
_base_ = 'mmdet::seesaw_loss/mask-rcnn_r50_fpn_seesaw-loss-normed-mask_sample1e-3-ms-2x_lvis-v1.py'
custom_imports = dict(imports=['gol_nb.mmdet_plugin'], allow_failed_imports=False)

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
val_evaluator = dict(_delete_=True, type='GolLVISMetric', ann_file='data/lvis_v1/annotations/lvis_v1_val.json')
test_evaluator = val_evaluator
train_cfg = dict(val_interval=24)
auto_scale_lr = dict(enable=True, base_batch_size=16)
