# Table 3, GOL R50 on LVIS v1: Mask R-CNN R50-FPN, 2x, repeat-factor sampling (t = 0.001), GOL over C channels
# (lambda 0.0011), normalised mask head (cosine, temperature 20), test NMS IoU 0.3.
_base_ = './softmax_mask-rcnn_r50_fpn_random-1x_lvis-v1.py'
model = dict(
    roi_head=dict(
        bbox_head=dict(
            loss_cls=dict(_delete_=True, type='GOLLoss', num_classes=1203, lambda_=0.0011,
                          ann_file='data/lvis_v1/annotations/lvis_v1_train.json'),
            init_cfg=dict(type='Constant', val=0.001, bias=-2.0, override=dict(name='fc_cls'))),
        mask_head=dict(predictor_cfg=dict(type='NormedConv2d', temperature=20))),
    test_cfg=dict(rcnn=dict(nms=dict(type='nms', iou_threshold=0.3))))
train_dataloader = dict(dataset=dict(oversample_thr=1e-3))
train_cfg = dict(max_epochs=24, val_interval=24)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=24, by_epoch=True, milestones=[16, 22], gamma=0.1)]
