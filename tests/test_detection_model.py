"Detector: one training step and one inference per loss family, on tiny inputs."
import warnings
import pytest
import torch
from gol_nb.detection.model import build_detector, predict, tiny_targets, to_loss_labels, CosineMaskPredictor

warnings.filterwarnings('ignore', message='backbone')
C = 5
STATS = dict(image_counts=torch.tensor([40., 12., 3., 1., 1.]), num_images=50, lambda_=0.1)
TINY = dict(backbone='resnet18', fpn_channels=16, box_head_dim=32, mask_head_dim=8, rois_per_image=32,
            rpn_pre_nms_train=200, rpn_post_nms_train=50, rpn_pre_nms_test=200, rpn_post_nms_test=50,
            test_size=64, max_size=64)
FAMILIES = {'softmax': {}, 'sigmoid': {}, 'gumbel': {}, 'eql': STATS, 'droploss': STATS, 'federated': STATS,
            'gol': STATS, 'eql_gumbel': STATS}
CHANNELS = {'softmax': C + 1}


@pytest.mark.parametrize('loss', list(FAMILIES))
def test_train_step_and_inference(loss):
    torch.manual_seed(0)
    m = build_detector(C, loss, FAMILIES[loss], **TINY)
    cls = m.roi_heads.box_predictor.cls_score
    assert cls.out_features == CHANNELS.get(loss, C)
    w0, b0 = m.roi_heads.cls_loss.classifier_init
    assert torch.allclose(cls.weight, torch.full_like(cls.weight, w0)) and torch.allclose(cls.bias, torch.full_like(cls.bias, b0))
    assert b0 == (-2. if loss in ('gumbel', 'gol', 'eql_gumbel') else -6.5)
    imgs, tgts = tiny_targets(2, 64, C, seed=1)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01)
    losses = m(imgs, tgts)
    assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_mask', 'loss_objectness', 'loss_rpn_box_reg'}
    assert all(torch.isfinite(v) for v in losses.values())
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
    "Inference scores are the loss's own foreground scores (Gumbel: exp(-exp(-q)) of the classifier's bias at init)."
    torch.manual_seed(0)
    m = build_detector(C, 'gumbel', {}, **dict(TINY, score_thresh=0.0))
    m.roi_heads.box_predictor.cls_score.weight.data.zero_()
    m.roi_heads.box_predictor.cls_score.bias.data.fill_(0.5)
    m.eval()
    with torch.no_grad(): out = m([torch.rand(3, 64, 64)])
    expected = torch.exp(-torch.exp(torch.tensor(-0.5)))
    assert len(out[0]['scores']) > 0 and torch.allclose(out[0]['scores'], expected.expand_as(out[0]['scores']))


def test_nms_default_and_labels():
    assert build_detector(C, 'gol', STATS, **TINY).roi_heads.nms_thresh == 0.3
    assert build_detector(C, 'softmax', {}, **TINY).roi_heads.nms_thresh == 0.5
    assert build_detector(C, 'gol', STATS, nms_thresh=0.7, **TINY).roi_heads.nms_thresh == 0.7
    assert to_loss_labels(torch.tensor([0, 5, 1]), 5).tolist() == [5, 4, 0]


def test_cosine_mask_predictor_is_scale_invariant():
    torch.manual_seed(0)
    p = CosineMaskPredictor(4, 4, 3)
    torch.nn.init.zeros_(p.conv5_mask.bias)  # then relu(deconv(a x)) = a relu(deconv(x)) for a > 0
    x = torch.randn(2, 4, 14, 14)
    assert torch.allclose(p(x), p(3 * x), atol=1e-5)


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match='backbone'): build_detector(C, 'gol', STATS, backbone='vgg')
    with pytest.raises(ValueError, match='num_classes'): build_detector(0, 'softmax')
    with pytest.raises(ValueError, match='box_loss'): build_detector(C, 'softmax', {}, box_loss='l3', **{k: v for k, v in TINY.items()})
    with pytest.raises(ValueError, match='image_counts'): build_detector(C, 'gol', {}, **TINY)


def test_predict_pastes_at_original_size():
    torch.manual_seed(0)
    m = build_detector(C, 'softmax', {}, **dict(TINY, score_thresh=0.0))
    img = torch.rand(3, 64, 48)
    small = predict(m, [img])[0]
    big = predict(m, [img], [(128, 96)])[0]
    assert big['masks'].shape[-2:] == (128, 96)
    assert torch.allclose(big['boxes'], small['boxes'] * 2, atol=1e-3)
