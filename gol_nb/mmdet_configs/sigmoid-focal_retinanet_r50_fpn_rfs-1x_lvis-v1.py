# Dense detection on LVIS v1 (not in the paper: section 6's claim probed on a long-tailed set), the reference: the COCO
# RetinaNet R50-FPN 1x with mmdet's sigmoid focal loss, on LVIS v1 (1203 classes) with repeat-factor sampling
# (t = 0.001), gol_nb's LVIS dataset and evaluator (box AP with APr / APc / APf), 300 detections per image, score
# threshold 1e-4 (LVIS's protocol). Model, pipelines and schedule are the COCO config's.
_base_ = './sigmoid-focal_retinanet_r50_fpn_1x_coco.py'

model = dict(bbox_head=dict(num_classes=1203), test_cfg=dict(score_thr=0.0001, max_per_img=300))
train_dataloader = dict(dataset=dict(
    _delete_=True, type='ClassBalancedDataset', oversample_thr=1e-3,
    dataset=dict(type='GolLVISDataset', data_root='data/lvis_v1/', ann_file='annotations/lvis_v1_train.json',
                 data_prefix=dict(img=''), filter_cfg=dict(filter_empty_gt=True, min_size=32),
                 pipeline={{_base_.train_pipeline}})))
val_dataloader = dict(dataset=dict(type='GolLVISDataset', data_root='data/lvis_v1/',
                                   ann_file='annotations/lvis_v1_val.json', data_prefix=dict(img='')))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='GolLVISMetric', ann_file='data/lvis_v1/annotations/lvis_v1_val.json',
                     iou_type='bbox')
test_evaluator = val_evaluator
