# Section 6 (dense detection), the reference: RetinaNet R50-FPN, 1x, COCO, with mmdet's sigmoid focal loss (alpha 0.25,
# gamma 2) and RetinaHead's prior initialisation (bias_prob 0.01: sigmoid(b) = 0.01). mmdet's own config (CocoDataset,
# CocoMetric), evaluated once at the end.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['gol_nb.mmdet_plugin'], allow_failed_imports=False)

train_cfg = dict(val_interval=12)
# lr 0.01 is meant for 16 images per iteration (8 GPUs x 2): scaled linearly to the real total batch
auto_scale_lr = dict(enable=True, base_batch_size=16)
