"""Detector: mmdetection's settings (backbone weights and norm, RoIAlign, RPN loss, polygon mask targets), the
classifier each loss asks for, NMS, building from a config, and one training step per loss family."""
import types, warnings
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import roi_align
from gol_nb.losses import build_loss
from gol_nb.detection.model import (build_detector, build_backbone, predict, tiny_targets, to_loss_labels,
                                    CosineMaskPredictor, MMDetRoIAlign, MMDetRPN, EvalBatchNorm2d,
                                    polygon_mask_targets, mask_loss, default_nms_thresh, detector_from_config,
                                    loss_kwargs_for)
from gol_nb.detection.config import DetConfig
from gol_nb.detection.presets import get_config

warnings.filterwarnings('ignore', message='backbone')
C = 5
STATS = dict(image_counts=torch.tensor([40., 12., 3., 1., 1.]), num_images=50, lambda_=0.1)
TINY = dict(backbone='resnet18', pretrained='none', norm='bn', fpn_channels=16, box_head_dim=32, mask_head_dim=8,
            rois_per_image=32, rpn_pre_nms_train=200, rpn_post_nms_train=50, rpn_pre_nms_test=200,
            rpn_post_nms_test=50, test_size=64, max_size=64)
FAMILIES = {'softmax': {}, 'sigmoid': {'background_channel': True}, 'gumbel': {'background_channel': True},
            'eql': STATS, 'droploss': STATS, 'federated': STATS, 'gol': STATS, 'eql_gumbel': STATS}


def fake_stats(counts, num_images):
    return types.SimpleNamespace(category_ids=np.arange(1, len(counts) + 1), image_counts=np.asarray(counts),
                                 num_images=num_images, frequency=['r'] * len(counts))


@pytest.mark.parametrize('loss', list(FAMILIES))
def test_train_step_and_inference(loss):
    torch.manual_seed(0)
    m = build_detector(C, loss, FAMILIES[loss], **TINY)
    cls = m.roi_heads.box_predictor.cls_score
    assert cls.out_features == m.roi_heads.cls_loss.num_channels == (C + 1 if loss in ('softmax', 'sigmoid', 'gumbel') else C)
    imgs, tgts = tiny_targets(2, 64, C, seed=1)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01)
    losses = m(imgs, tgts)
    assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_mask', 'loss_objectness', 'loss_rpn_box_reg'}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    opt.zero_grad(); sum(losses.values()).backward()
    assert cls.weight.grad is not None and cls.weight.grad.abs().sum() > 0
    before = cls.weight.detach().clone(); opt.step()
    assert not torch.equal(before, cls.weight)
    m.eval()
    with torch.no_grad(): out = m(imgs)
    assert len(out) == 2
    for o in out:
        n = len(o['boxes'])
        assert o['scores'].shape == (n,) and o['labels'].shape == (n,) and o['masks'].shape == (n, 1, 64, 64)
        assert n <= m.roi_heads.detections_per_img
        if n:
            assert 1 <= o['labels'].min() and o['labels'].max() <= C
            assert o['scores'].min() > m.roi_heads.score_thresh and o['scores'].max() <= 1


def test_scores_come_from_the_loss():
    "Inference scores are the loss's own foreground scores; the C+1 Gumbel drops its background channel."
    torch.manual_seed(0)
    m = build_detector(C, 'gumbel', {'background_channel': True}, **dict(TINY, score_thresh=0.0))
    m.roi_heads.box_predictor.cls_score.weight.data.zero_()
    m.roi_heads.box_predictor.cls_score.bias.data.fill_(0.5)
    m.roi_heads.box_predictor.cls_score.bias.data[C] = 9.  # the background channel: no score
    m.eval()
    with torch.no_grad(): out = m([torch.rand(3, 64, 64)])
    expected = torch.exp(-torch.exp(torch.tensor(-0.5)))
    assert len(out[0]['scores']) > 0 and torch.allclose(out[0]['scores'], expected.expand_as(out[0]['scores']))


# ---------------------------------------------------------------- item 6: classifier init per baseline, in the head
@pytest.mark.parametrize('loss,kw,init', [
    ('softmax', {}, ('const', 0.001, -6.5)), ('sigmoid', {'background_channel': True}, ('const', 0.001, -6.5)),
    ('gumbel', {'background_channel': True}, ('const', 0.001, -2.)), ('gol', STATS, ('const', 0.001, -2.)),
    ('eql_gumbel', STATS, ('const', 0.001, -2.)), ('droploss_gumbel', STATS, ('const', 0.001, -2.)),
    ('droploss', STATS, ('const', 0.01, -6.9)), ('eql', STATS, ('normal', 0.01, 0.))])
def test_classifier_init_per_baseline(loss, kw, init):
    torch.manual_seed(0)
    cls = build_detector(C, loss, kw, **dict(TINY, box_head_dim=512)).roi_heads.box_predictor.cls_score
    kind, w, b = init
    assert torch.all(cls.bias == b)
    if kind == 'const': assert torch.all(cls.weight == w)
    else: assert abs(cls.weight.std().item() - w) < 1e-3 and abs(cls.weight.mean().item()) < 1e-3


# ---------------------------------------------------------------- item 7: NMS
def test_nms_default_and_labels():
    for loss, nms in (('gol', .3), ('eql_gumbel', .3), ('droploss_gumbel', .3), ('federated_gumbel', .3),
                      ('eql', .5), ('droploss', .5), ('federated', .5), ('softmax', .5), ('sigmoid', .5),
                      ('gumbel', .5)):
        assert default_nms_thresh(build_loss(loss, C, **(STATS if loss not in ('softmax', 'sigmoid', 'gumbel') else {}))) == nms
    assert build_detector(C, 'gol', STATS, **TINY).roi_heads.nms_thresh == 0.3
    assert build_detector(C, 'gumbel', {'background_channel': True}, **TINY).roi_heads.nms_thresh == 0.5
    assert build_detector(C, 'gol', STATS, nms_thresh=0.7, **TINY).roi_heads.nms_thresh == 0.7
    assert to_loss_labels(torch.tensor([0, 5, 1]), 5).tolist() == [5, 4, 0]
    with pytest.raises(ValueError, match=r'\[0, 5\]'): to_loss_labels(torch.tensor([6]), 5)


# ---------------------------------------------------------------- item 8: backbone weights
def _fake_hub(tmp_path, name='resnet18', marker=0.125):
    "A torchvision weights file in a temporary hub dir, as a download would have left it."
    w = torchvision.models.get_model_weights(name)['IMAGENET1K_V1']
    sd = torchvision.models.get_model(name).state_dict()
    sd['conv1.weight'].fill_(marker)
    ck = tmp_path / 'hub' / 'checkpoints'; ck.mkdir(parents=True)
    torch.save(sd, ck / w.url.rsplit('/', 1)[-1])
    return tmp_path / 'hub'


def test_torchvision_weights_are_loaded_and_recorded(tmp_path, monkeypatch):
    hub = str(_fake_hub(tmp_path))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: hub)
    bb = build_backbone('resnet18', 'IMAGENET1K_V1', fpn_channels=8)
    assert bb.backbone_weights == 'torchvision:resnet18.IMAGENET1K_V1'
    assert torch.all(bb.body.conv1.weight == 0.125)
    m = build_detector(C, 'gol', STATS, **dict(TINY, pretrained='IMAGENET1K_V1', norm='norm_eval'))
    assert m.backbone_weights == 'torchvision:resnet18.IMAGENET1K_V1'
    assert isinstance(m.backbone.body.layer3[0].bn1, EvalBatchNorm2d)
    # a checkpoint file is recorded by its path
    path = tmp_path / 'r18.pth'; torch.save({'state_dict': {'backbone.' + k: v for k, v in
                                                           torchvision.models.resnet18().state_dict().items()}}, path)
    assert build_backbone('resnet18', str(path), fpn_channels=8).backbone_weights == str(path)


def test_unavailable_weights_raise_unless_none(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'empty_hub'))
    def offline(*a, **k): raise OSError('no network')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(RuntimeError, match='Offline') as e: build_backbone('resnet50', 'IMAGENET1K_V1')
    assert 'resnet50-0676ba61.pth' in str(e.value) and 'pretrained=none' in str(e.value)
    for none in ('none', '', None):
        assert build_backbone('resnet18', none, fpn_channels=8, norm='bn').backbone_weights == 'none'
    with pytest.raises(FileNotFoundError): build_backbone('resnet18', str(tmp_path / 'missing.pth'))
    with pytest.raises(ValueError, match='IMAGENET1K_V1'): build_backbone('resnet18', 'IMAGENET2K')


def test_paper_weights_are_imagenet1k_v1():
    for name, file in (('resnet50', 'resnet50-0676ba61.pth'), ('resnet101', 'resnet101-63fe2227.pth')):
        assert torchvision.models.get_model_weights(name)['IMAGENET1K_V1'].url.endswith(file)  # torchvision://
    assert DetConfig().pretrained == 'IMAGENET1K_V1' and DetConfig().norm == 'norm_eval'
    assert DetConfig().amp is False  # fp32 by default


# ---------------------------------------------------------------- item 8: norm_eval, frozen stage 1
def test_norm_eval_trains_affine_with_frozen_statistics():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        bb = build_backbone('resnet18', 'none', 3, 8, 'norm_eval').train()
    body = bb.body
    for n, p in body.named_parameters():
        frozen_stage = n.startswith(('conv1', 'bn1', 'layer1'))
        assert p.requires_grad != frozen_stage, n
    stats = {n: b.clone() for n, b in body.named_buffers()}
    x = torch.randn(2, 3, 64, 64) * 3 + 1
    out = bb(x)
    sum(v.square().mean() for v in out.values()).backward()
    assert all(torch.equal(b, stats[n]) for n, b in body.named_buffers())      # statistics never updated
    bn = body.layer3[1].bn2
    assert bn.weight.grad.abs().sum() > 0 and bn.bias.grad.abs().sum() > 0    # affine trains
    # in train mode it normalises with the running statistics, not the batch's
    h = torch.randn(4, bn.num_features, 5, 5) * 7 + 3
    ref = (h - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
    torch.testing.assert_close(bn(h), ref * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])


# ---------------------------------------------------------------- item 8: RoIAlign as mmdetection's extractor
def test_roi_align_matches_mmdet_single_roi_extractor():
    g = torch.Generator().manual_seed(0)
    feats = {str(i): torch.randn(2, 4, 64 // 2 ** i, 64 // 2 ** i, generator=g) for i in range(4)}
    boxes = []
    for _ in range(2):
        xy = torch.rand(30, 2, generator=g) * 200
        wh = torch.rand(30, 2, generator=g) ** 2 * 600 + 2
        boxes.append(torch.cat([xy, xy + wh], 1))
    ours = MMDetRoIAlign(['0', '1', '2', '3'], 7)(feats, boxes)
    rois = torch.cat([torch.cat([torch.full((30, 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    lv = MMDetRoIAlign(['0', '1', '2', '3'], 7).levels(rois).float()
    assert set(lv.tolist()) == {0, 1, 2, 3}
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    torch.testing.assert_close(lv, torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(0, 3))
    for i in range(4):  # each level: torchvision's roi_align with aligned=True, sampling_ratio=0
        idx = lv == i
        torch.testing.assert_close(ours[idx], roi_align(feats[str(i)], rois[idx], (7, 7), 1 / 4 / 2 ** i, 0, True))
    try:
        from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
        ext = SingleRoIExtractor(dict(type='RoIAlign', output_size=7, sampling_ratio=0), 4, [4, 8, 16, 32])
    except Exception as e: pytest.skip(f'mmdetection/mmcv ops not available: {e}')
    torch.testing.assert_close(ours, ext(tuple(feats[str(i)] for i in range(4)), rois))


# ---------------------------------------------------------------- item 8: L1 RPN loss
def test_rpn_box_loss_is_l1():
    torch.manual_seed(0)
    m = build_detector(C, 'gol', STATS, **TINY)
    rpn = m.rpn
    assert isinstance(rpn, MMDetRPN) and rpn.box_loss == 'l1'
    labels = [torch.tensor([1., 0., 1., -1., 0., 0.])]
    targets = [torch.randn(6, 4)]
    deltas, obj = torch.randn(6, 4), torch.randn(6, 1)
    torch.manual_seed(1); o_l1, b_l1 = rpn.compute_loss(obj, deltas, labels, targets)
    pos = torch.tensor([0, 2])
    torch.testing.assert_close(b_l1, (deltas[pos] - targets[0][pos]).abs().sum() / 5)  # 5 sampled anchors
    rpn.box_loss = 'smooth_l1'
    torch.manual_seed(1); o_s, b_s = rpn.compute_loss(obj, deltas, labels, targets)
    torch.testing.assert_close(o_s, o_l1)
    torch.testing.assert_close(b_s, F.smooth_l1_loss(deltas[pos], targets[0][pos], beta=1 / 9, reduction='sum') / 5)


# ---------------------------------------------------------------- item 8: polygon mask targets per RoI
def _shapes():
    tri = np.array([[12.3, 8.1], [60.7, 20.2], [25.4, 55.9]], np.float32)
    two = [np.array([[40, 40], [70, 42], [66, 75], [41, 70]], np.float32),
           np.array([[5, 60], [20, 62], [12, 78]], np.float32)]
    return [[tri], two]


def test_polygon_targets_match_mmdet_mask_target():
    polys = _shapes()
    boxes = torch.tensor([[10., 5., 62., 58.], [2., 1., 40., 30.], [38., 38., 72., 80.], [0., 50., 75., 80.]])
    gi = torch.tensor([0, 0, 1, 1])
    ours = polygon_mask_targets(boxes, gi, polys, None, (80, 80), 28)
    assert set(ours.unique().tolist()) == {0., 1.}
    try:
        from mmengine.config import ConfigDict
        from mmdet.structures.mask import PolygonMasks
        from mmdet.structures.mask.mask_target import mask_target_single
    except Exception as e: pytest.skip(f'mmdetection not available: {e}')
    gt = PolygonMasks([[p.reshape(-1).astype(np.float64) for p in obj] for obj in polys], 80, 80)
    ref = mask_target_single(boxes, gi, gt, ConfigDict(mask_size=28))
    torch.testing.assert_close(ours, ref)


def test_bitmap_fallback_matches_mmdet_and_polygons_are_preferred():
    from pycocotools import mask as mu
    polys = _shapes()
    bitmaps = torch.stack([torch.from_numpy(mu.decode(mu.merge(mu.frPyObjects([p.reshape(-1).astype(float) for p in o],
                                                                                80, 80)))) for o in polys])
    boxes = torch.tensor([[10., 5., 62., 58.], [38., 38., 72., 80.]])
    gi = torch.tensor([0, 1])
    fall = polygon_mask_targets(boxes, gi, [None, None], bitmaps, (80, 80))
    assert torch.equal(polygon_mask_targets(boxes, gi, None, bitmaps, (80, 80)), fall)  # no 'polygons' key
    mixed = polygon_mask_targets(boxes, gi, [polys[0], None], bitmaps, (80, 80))
    assert torch.equal(mixed[1], fall[1])
    poly = polygon_mask_targets(boxes, gi, polys, None, (80, 80))
    assert torch.equal(mixed[0], poly[0]) and (poly != fall).any()  # per-RoI polygons differ from cropped bitmaps
    try:
        from mmengine.config import ConfigDict
        from mmdet.structures.mask import BitmapMasks
        from mmdet.structures.mask.mask_target import mask_target_single
    except Exception as e: pytest.skip(f'mmdetection not available: {e}')
    ref = mask_target_single(boxes, gi, BitmapMasks(bitmaps.numpy(), 80, 80), ConfigDict(mask_size=28))
    torch.testing.assert_close(fall, ref)


def test_training_uses_polygons():
    "The detector's mask loss is computed on the polygon targets (the bitmaps are ignored when polygons exist)."
    torch.manual_seed(0)
    m = build_detector(C, 'gol', STATS, **TINY)
    imgs, tgts = tiny_targets(2, 64, C, seed=1)
    blank = [dict(t, masks=torch.zeros_like(t['masks'])) for t in tgts]   # wrong bitmaps, right polygons
    torch.manual_seed(3); a = m(imgs, tgts)['loss_mask']
    torch.manual_seed(3); b = m(imgs, blank)['loss_mask']
    nopoly = [{k: v for k, v in t.items() if k != 'polygons'} for t in blank]
    torch.manual_seed(3); c = m(imgs, nopoly)['loss_mask']
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(mask_loss(torch.zeros(0, C + 1, 28, 28), torch.zeros(0, dtype=torch.long), torch.zeros(0, 28, 28))) == 0


# ---------------------------------------------------------------- building from a config
def test_detector_from_config_and_loss_kwargs():
    stats = fake_stats([200, 40, 10, 3, 1], 240)
    cfg = get_config('demo_cpu', ['fpn_channels=16', 'box_head_dim=32', 'mask_head_dim=8'])
    kw = loss_kwargs_for(cfg, stats)
    assert kw['lambda_'] == pytest.approx(10.5 / 240) and kw['num_images'] == 240 and kw['mode'] == 'analytic'
    assert 'fused' not in kw and 'background_channel' not in kw
    m = detector_from_config(cfg, stats)
    assert m.roi_heads.cls_loss.rare.tolist() == [False, False, True, True, True]
    assert m.backbone_weights == 'none' and m.roi_heads.nms_thresh == 0.3 and m.num_classes == 5
    g = get_config('gumbel_r50_1x')
    kw = loss_kwargs_for(g, stats)
    assert kw == {'background_channel': True, 'mode': 'analytic', 'fused': True}
    assert 'fused' not in loss_kwargs_for(get_config('gumbel_r50_1x', ['loss_mode=official']), stats)
    small = get_config('gumbel_r50_1x', ['backbone=resnet18', 'pretrained=none', 'norm=bn', 'fpn_channels=16',
                                         'box_head_dim=32', 'mask_head_dim=8', 'fused_loss=false'])
    m = detector_from_config(small, stats)
    assert m.roi_heads.box_predictor.cls_score.out_features == 6 and m.roi_heads.nms_thresh == 0.5
    assert all(p.dtype == torch.float32 for p in m.parameters())
    with pytest.raises(ValueError, match='class statistics'): loss_kwargs_for(cfg, None)


def test_cosine_mask_predictor_is_scale_invariant():
    torch.manual_seed(0)
    p = CosineMaskPredictor(4, 4, 3)
    torch.nn.init.zeros_(p.conv5_mask.bias)  # then relu(deconv(a x)) = a relu(deconv(x)) for a > 0
    x = torch.randn(2, 4, 14, 14)
    assert torch.allclose(p(x), p(3 * x), atol=1e-5)


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match='backbone'): build_detector(C, 'gol', STATS, **dict(TINY, backbone='vgg'))
    with pytest.raises(ValueError, match='num_classes'): build_detector(0, 'softmax')
    with pytest.raises(ValueError, match='box_loss'): build_detector(C, 'softmax', {}, **dict(TINY, box_loss='l3'))
    with pytest.raises(ValueError, match='rpn_box_loss'): build_detector(C, 'softmax', {}, **dict(TINY, rpn_box_loss='l3'))
    with pytest.raises(ValueError, match='image_counts'): build_detector(C, 'gol', {}, **TINY)


def test_predict_pastes_at_original_size():
    torch.manual_seed(0)
    m = build_detector(C, 'softmax', {}, **dict(TINY, score_thresh=0.0))
    img = torch.rand(3, 64, 48)
    small = predict(m, [img])[0]
    big = predict(m, [img], [(128, 96)])[0]
    assert big['masks'].shape[-2:] == (128, 96)
    assert torch.allclose(big['boxes'], small['boxes'] * 2, atol=1e-3)


def test_fpn_and_box_head_are_initialised_as_mmdet():
    torch.manual_seed(0)
    m = build_detector(C, 'gol', STATS, **dict(TINY, fpn_channels=64, box_head_dim=256))
    layers = [x for x in m.backbone.fpn.modules() if isinstance(x, torch.nn.Conv2d)]
    layers += [m.roi_heads.box_head.fc6, m.roi_heads.box_head.fc7]
    for x in layers:  # Xavier uniform: variance 2 / (fan_in + fan_out), zero bias
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(x.weight)
        assert abs(x.weight.var().item() / (2 / (fan_in + fan_out)) - 1) < .15 and x.bias.abs().max() == 0
