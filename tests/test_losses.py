"""Losses against the formulas, the authors' code (kostas1515/GOL, written out from its description below) and
torch/mmdetection conventions; the fused (torch.compile) Gumbel path against the eager one."""
import json, math, warnings
import pytest
import torch
import torch.nn.functional as F
import gol_nb.losses as L
from gol_nb.losses import (build_loss, LOSSES, CLASS_STATS_LOSSES, GUMBEL_LOSSES, OFFICIAL_LOSSES, GumbelBCE,
                           SigmoidBCE, SoftmaxCE, EQL, DropLoss, GOL, FederatedLoss, resolve_lambda, init_classifier)

C = 5
COUNTS = torch.tensor([900., 12., 3., 400., 1.])  # of 10,000 images: classes 1, 2, 4 rare at lambda 0.0011
STATS = dict(image_counts=COUNTS, num_images=10_000)


def make(name, **kw):
    extra = dict(STATS, generator=torch.Generator().manual_seed(0)) if name in CLASS_STATS_LOSSES else {}
    return build_loss(name, C, **extra, **kw)


def reseed(loss):
    if getattr(loss, 'generator', None) is not None: loss.generator.manual_seed(0)
    return loss


# --- the authors' code, written out: GumbelCE (mmdetection's one-hot expansion, label weights, reduction, clamp)
def authors_gumbel_ce(q, labels, weight=None, reduction='mean', avg_factor=None):
    channels = q.shape[1]
    valid = labels >= 0
    t = torch.zeros_like(q)
    pos = (valid & (labels < channels)).nonzero().squeeze(1)
    t[pos, labels[pos]] = 1
    w = valid.float()[:, None].expand_as(q) * (1. if weight is None else weight[:, None])
    p = 1 / torch.exp(torch.exp(-q.clamp(-4, 10)))
    el = F.binary_cross_entropy(p, t, reduction='none') * w
    if reduction == 'none': out = el
    elif avg_factor is None: out = el.sum() if reduction == 'sum' else el.mean()
    else: out = el.sum() / (avg_factor + torch.finfo(torch.float32).eps)
    return out.clamp(0, 20)


# --- and their EQL / DropLoss: the weighted element-wise loss summed, divided by the number of rows
def authors_class_stats(q, labels, keep_weights, activation):
    t = F.one_hot(labels, q.shape[1] + 1)[:, :q.shape[1]].float()
    if activation == 'gumbel': el = F.binary_cross_entropy(1 / torch.exp(torch.exp(-q.clamp(-4, 10))), t, reduction='none')
    else: el = F.binary_cross_entropy_with_logits(q, t, reduction='none')
    return (el * keep_weights).sum() / q.shape[0]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(12, C + 1, generator=g) * 5 - 2
    labels = torch.tensor([0, 5, 1, 5, 2, 3, 5, 4, 5, 0, 5, 1])
    return q, labels, torch.rand(12, generator=g) + .5


# ---------------------------------------------------------------- item 1: the activation-study layouts
def test_gumbel_background_channel_is_the_authors_gumbel(batch):
    q, labels, _ = batch
    loss = GumbelBCE(C, background_channel=True)
    assert loss.num_channels == C + 1
    el = loss(q, labels, reduction_override='none')
    a = torch.exp(-q.clamp(-4, 10))
    bg = labels == C
    torch.testing.assert_close(el[bg, C], a[bg, C])                                  # background: positive, exp(-q)
    torch.testing.assert_close(el[~bg, C], -torch.log(-torch.expm1(-a[~bg, C])))     # foreground: a negative
    torch.testing.assert_close(loss.scores(q), torch.exp(-torch.exp(-q[:, :C])))     # dropped at inference
    off = GumbelBCE(C, background_channel=True, mode='official')
    torch.testing.assert_close(off(q, labels, reduction_override='none'), authors_gumbel_ce(q, labels, reduction='none'))
    # float (N, C) targets get the same background column
    onehot = F.one_hot(labels, C + 1)[:, :C].float()
    torch.testing.assert_close(loss(q, onehot, reduction_override='none'), el)


def test_sigmoid_background_channel_is_mmdet_use_sigmoid(batch):
    q, labels, _ = batch
    loss = SigmoidBCE(C, background_channel=True)
    t = F.one_hot(labels, C + 1).float()  # mmdet's _expand_onehot_labels with C+1 channels: background on the last
    torch.testing.assert_close(loss(q, labels), F.binary_cross_entropy_with_logits(q, t))
    torch.testing.assert_close(loss.scores(q), torch.softmax(q, 1)[:, :C])


def test_class_stats_losses_keep_c_channels():
    for name in CLASS_STATS_LOSSES:
        assert make(name).num_channels == C
        with pytest.raises(ValueError, match='background_channel'): make(name, background_channel=True)


# ---------------------------------------------------------------- item 2: official = the authors' code, every path
@pytest.mark.parametrize('bg', [True, False])
@pytest.mark.parametrize('reduction,avg_factor', [('mean', None), ('mean', 7.), ('sum', None), ('none', None)])
@pytest.mark.parametrize('weighted', [False, True])
def test_official_gumbel_every_call_path(batch, bg, reduction, avg_factor, weighted):
    q, labels, w = batch
    q = q if bg else q[:, :C]
    loss = GumbelBCE(C, mode='official', background_channel=bg)
    wt = w if weighted else None
    out = loss(q, labels, weight=wt, avg_factor=avg_factor, reduction_override=reduction)
    torch.testing.assert_close(out, authors_gumbel_ce(q, labels, wt, reduction, avg_factor))
    # with an ignored row too (mmdet's valid mask)
    lab = labels.clone(); lab[3] = -1
    torch.testing.assert_close(loss(q, lab, weight=wt, avg_factor=avg_factor, reduction_override=reduction),
                               authors_gumbel_ce(q, lab, wt, reduction, avg_factor))


def test_official_gumbel_clamps_reduced_and_elements():
    q = torch.full((4, C), -4.)   # every element a positive at the clamp: loss exp(4) = 54.6 each
    y = torch.ones(4, C)
    loss = GumbelBCE(C, mode='official')
    assert loss(q, y, reduction_override='sum').item() == 20.
    assert loss(q, y, avg_factor=1.).item() == 20.
    assert torch.equal(loss(q, y, reduction_override='none'), torch.full((4, C), 20.))
    assert loss(q, y).item() == 20.  # mean of 54.6 clamped
    assert GumbelBCE(C)(q, y, avg_factor=1.).item() > 20  # analytic: no clamp


@pytest.mark.parametrize('name', ['eql', 'eql_gumbel', 'droploss', 'droploss_gumbel', 'gol'])
def test_official_eql_droploss_ignore_weight_and_avg_factor_and_do_not_clamp(batch, name):
    q, labels, w = batch
    q = q[:, :C] * .1 - 3.8                                # large positive losses (about 45): the sum / N exceeds 20
    loss = reseed(make(name, mode='official'))
    keep = loss.element_weights(q, labels, None).float()
    expected = authors_class_stats(q, labels, keep, loss.activation)
    for kw in (dict(), dict(weight=w), dict(avg_factor=3.), dict(weight=torch.rand(12, C), avg_factor=100.)):
        torch.testing.assert_close(reseed(loss)(q, labels, **kw), expected)
    assert expected > 20 or loss.activation == 'sigmoid'
    # 'none' gives the weighted elements whose sum / N is the loss; 'sum' their sum
    torch.testing.assert_close(reseed(loss)(q, labels, reduction_override='none').sum() / 12, expected)
    torch.testing.assert_close(reseed(loss)(q, labels, reduction_override='sum'), expected * 12)


def test_official_mode_only_where_the_authors_have_code():
    for name in ('federated', 'federated_gumbel'):
        with pytest.raises(ValueError, match='no FederatedLoss'): make(name, mode='official')
    with pytest.raises(TypeError): make('sigmoid', mode='official')
    assert OFFICIAL_LOSSES == {'gumbel', 'eql', 'eql_gumbel', 'droploss', 'droploss_gumbel', 'gol'}


# ---------------------------------------------------------------- item 3: reductions per torch / mmdetection
def test_mean_is_over_all_elements_and_avg_factor_divides_the_sum(batch):
    q, labels, w = batch
    t = F.one_hot(labels, C + 1)[:, :C].float()
    sig = SigmoidBCE(C)
    torch.testing.assert_close(sig(q[:, :C], labels), torch.nn.BCEWithLogitsLoss()(q[:, :C], t))
    torch.testing.assert_close(sig(q[:, :C], labels, avg_factor=12.),
                               F.binary_cross_entropy_with_logits(q[:, :C], t, reduction='sum') / 12)
    torch.testing.assert_close(SoftmaxCE(C)(q, labels), F.cross_entropy(q, labels))
    for name in LOSSES:
        loss = make(name)
        x = q[:, :loss.num_channels]
        el = reseed(loss)(x, labels, weight=w, reduction_override='none')
        w_el = w[:, None] if el.dim() == 2 else w
        torch.testing.assert_close(reseed(loss)(x, labels, weight=w), el.mean(), msg=name)
        torch.testing.assert_close(reseed(loss)(x, labels, weight=w, avg_factor=12.), el.sum() / 12, msg=name)
        torch.testing.assert_close(reseed(loss)(x, labels, weight=w, reduction_override='sum'), el.sum(), msg=name)
        unweighted = reseed(loss)(x, labels, reduction_override='none')
        torch.testing.assert_close(el, unweighted * w_el, msg=name)


def test_reduction_matches_mmdetection(batch):
    try: from mmdet.models.losses.utils import weight_reduce_loss as mm_reduce
    except Exception as e: pytest.skip(f'mmdetection not importable: {e}')
    q, labels, w = batch
    el = GumbelBCE(C)(q[:, :C], labels, reduction_override='none')
    for kw in (dict(), dict(avg_factor=12.), dict(reduction='sum')):
        torch.testing.assert_close(GumbelBCE(C)(q[:, :C], labels, weight=w, reduction_override=kw.get('reduction'),
                                                avg_factor=kw.get('avg_factor')),
                                   mm_reduce(el, w[:, None].expand_as(el), **kw))


def test_paper_reduction_per_roi():
    "avg_factor = N_roi gives Eq. 10's (1/N_roi) sum_i sum_c: 8.1 per foreground RoI at the authors' init, C = 1203."
    q = torch.full((4, 1203), -2.)
    torch.testing.assert_close(GumbelBCE(1203)(q, torch.tensor([0, 7, 500, 1202]), avg_factor=4.),
                               torch.tensor(math.exp(2) + 1202 * -math.log(-math.expm1(-math.exp(2)))), rtol=1e-4, atol=0)


# ---------------------------------------------------------------- item 4: ignore label -1
@pytest.mark.parametrize('name', sorted(LOSSES))
@pytest.mark.parametrize('mode', ['analytic', 'official'])
def test_ignore_label_gives_weight_zero(batch, name, mode):
    if mode == 'official' and name not in OFFICIAL_LOSSES: pytest.skip('no official mode')
    q, labels, _ = batch
    loss = make(name, **({'mode': mode} if mode == 'official' else {}))
    x = q[:, :loss.num_channels]
    ign = labels.clone(); ign[[1, 4]] = -1
    el = reseed(loss)(x, ign, reduction_override='none')
    assert (el[[1, 4]] == 0).all()
    # the same as labelling those rows background with weight 0
    bgl = labels.clone(); bgl[[1, 4]] = C
    wt = torch.ones(12); wt[[1, 4]] = 0
    if not loss.official_reduction:
        torch.testing.assert_close(reseed(loss)(x, ign), reseed(loss)(x, bgl, weight=wt))
    assert torch.isfinite(reseed(loss)(x, ign))
    with pytest.raises(ValueError, match=r'\[-1, 5\]'): loss(x, torch.full((12,), -2))


# ---------------------------------------------------------------- the rare threshold (num_images, lambda)
def test_num_images_is_required_and_lambda_rare():
    for cls in (EQL, DropLoss, GOL, FederatedLoss):
        with pytest.raises(ValueError, match='num_images is required'): cls(C, COUNTS)
    with pytest.raises(ValueError, match='num_images'): build_loss('gol', C, image_counts=COUNTS)
    assert resolve_lambda('rare', 240) == pytest.approx(10.5 / 240)
    counts = torch.tensor([132, 11, 10, 9, 1])
    assert GOL(5, counts, 240, 'rare').rare.tolist() == [False, False, True, True, True]
    with pytest.raises(ValueError, match="'rare'"): resolve_lambda(-1., 10)


def test_lvis_v1_rare_mask_counts():
    "lambda 0.0011 marks 815 LVIS v1 classes over the 99,388 images with annotations, 817 over all 100,170."
    from gol_nb.data import find_shared_file
    path = find_shared_file('lvis_v1_categories.json')
    if path is None: pytest.skip('lvis_v1_categories.json not found')
    cats = json.loads(path.read_text())['categories']
    counts = torch.tensor([c['image_count'] for c in cats])
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no "marks no class" warning
        assert int(GOL(1203, counts, 99_388).rare.sum()) == 815
        assert int(EQL(1203, counts, 100_170).rare.sum()) == 817


def test_no_rare_class_warns_once():
    with pytest.warns(UserWarning, match='marks no class') as rec:
        loss = GOL(C, COUNTS, 100, generator=torch.Generator().manual_seed(0))  # 0.0011 x 100 images
    assert len(rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for _ in range(3): loss(torch.randn(8, C), torch.randint(0, C + 1, (8,)))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        FederatedLoss(C, COUNTS, 100)  # Federated does not use the threshold: no warning


# ---------------------------------------------------------------- item 6 (loss side): classifier initialisation
def test_classifier_init_per_baseline():
    const = lambda w, b: {'type': 'Constant', 'val': w, 'bias': b}
    expected = {'softmax': const(0.001, -6.5), 'sigmoid': const(0.001, -6.5), 'gumbel': const(0.001, -2.),
                'eql': {'type': 'Normal', 'std': 0.01, 'bias': 0.}, 'droploss': const(0.01, -6.9),
                'eql_gumbel': const(0.001, -2.), 'droploss_gumbel': const(0.001, -2.), 'gol': const(0.001, -2.),
                'federated_gumbel': const(0.001, -2.)}
    for name, init in expected.items(): assert make(name).classifier_init == init, name
    assert make('sigmoid', background_channel=True).classifier_init == const(0.001, -6.5)
    assert make('gumbel', background_channel=True).classifier_init == const(0.001, -2.)
    fed = make('federated').classifier_init
    assert fed['type'] == 'Normal' and torch.sigmoid(torch.tensor(fed['bias'])).item() == pytest.approx(0.01)
    lin = init_classifier(torch.nn.Linear(1024, 1203), make('eql').classifier_init)
    assert abs(lin.weight.std().item() - 0.01) < 5e-4 and lin.bias.abs().max() == 0


# ---------------------------------------------------------------- finiteness, NaN, dtypes (issue 12, losses)
@pytest.mark.parametrize('name', sorted(LOSSES))
def test_inf_logits_finite_or_clear_error(name):
    loss = make(name)
    x = torch.zeros(3, loss.num_channels); x[0, 0], x[1, 1], x[2, 2] = float('inf'), -float('inf'), float('inf')
    labels = torch.tensor([0, 1, C])
    if name in GUMBEL_LOSSES:  # clamped logits: finite loss and gradient
        x.requires_grad_()
        out = loss(x, labels); g, = torch.autograd.grad(out, x)
        assert torch.isfinite(out) and torch.isfinite(g).all()
        with pytest.raises(ValueError, match='Inf'): make(name, clamp=None)(x.detach(), labels)
    else:
        with pytest.raises(ValueError, match='Inf'): loss(x, labels)


@pytest.mark.parametrize('name', sorted(LOSSES))
def test_nan_targets_and_weights_raise(name):
    loss = make(name)
    x = torch.randn(3, loss.num_channels)
    t = torch.zeros(3, C); t[0, 0] = 1; t[1, 2] = float('nan')
    with pytest.raises(ValueError, match='targets contain NaN'): loss(x, t)
    if not loss.official_reduction:
        with pytest.raises(ValueError, match='weight'): loss(x, torch.tensor([0, 1, C]), weight=torch.tensor([1., float('nan'), 1.]))
    with pytest.raises(ValueError, match='NaN'): loss(torch.full_like(x, float('nan')), torch.tensor([0, 1, C]))


@pytest.mark.parametrize('name', sorted(LOSSES))
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_targets_work(name, dtype):
    loss = make(name)
    x = torch.randn(6, loss.num_channels)
    t = F.one_hot(torch.tensor([0, 1, 2, 3, 4, 0]), C).float()
    torch.testing.assert_close(reseed(loss)(x, t.to(dtype)), reseed(loss)(x, t))


@pytest.mark.parametrize('name', sorted(LOSSES))
def test_finite_for_finite_logits_fp32_and_autocast(name):
    g = torch.Generator().manual_seed(0)
    loss = make(name)
    x = (torch.randn(64, loss.num_channels, generator=g) * torch.logspace(-2, 4, 64)[:, None]).requires_grad_()
    labels = torch.randint(-1, C + 1, (64,), generator=g)
    for dt in (None, torch.float16, torch.bfloat16):
        out = reseed(loss)(x if dt is None else x.to(dt), labels)
        gr, = torch.autograd.grad(out, x)
        assert out.dtype == torch.float32 and torch.isfinite(out) and torch.isfinite(gr).all(), (name, dt)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = reseed(loss)(torch.nn.functional.linear(x, torch.eye(loss.num_channels)), labels)
    assert torch.isfinite(out)


# ---------------------------------------------------------------- issue 13: keywords and label conventions
def test_background_channel_keyword_is_uniform():
    assert SoftmaxCE(C, background_channel=False).num_channels == C
    with pytest.warns(FutureWarning, match='background_channel'):
        assert SoftmaxCE(C, background=False).num_channels == C
    for cls in (SoftmaxCE, SigmoidBCE, GumbelBCE):
        assert cls(C, background_channel=True).num_channels == C + 1


def test_one_based_labels_are_caught():
    x = torch.randn(4, C)
    with pytest.raises(ValueError, match='1..C'): GumbelBCE(C, background_label=False)(x, torch.tensor([1, 2, 5, 3]))
    with pytest.raises(ValueError, match=r'\[-1, 4\]'): SoftmaxCE(C, background_channel=False)(x, torch.tensor([5, 1, 0, 2]))
    # a detection batch in torchvision's numbering: no background label C, mostly 0
    labels = torch.tensor([0] * 90 + [3] * 10)
    with pytest.warns(UserWarning, match='to_loss_labels'): make('gumbel')(torch.randn(100, C), labels)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        make('gumbel')(torch.randn(100, C), torch.tensor([C] * 90 + [3] * 10))  # the losses' own numbering


# ---------------------------------------------------------------- the fused (compiled) Gumbel path
def _loss_and_grad(fused: bool, labels: torch.Tensor, logits: torch.Tensor, counts: torch.Tensor):
    gol = L.GOL(counts.numel(), counts, num_images=10_000, generator=torch.Generator().manual_seed(0), fused=fused)
    x = logits.clone().requires_grad_()
    loss = gol(x, labels, avg_factor=float(len(labels)))
    loss.backward()
    return loss.detach(), x.grad


@pytest.fixture(scope='module')
def fused_batch():
    g = torch.Generator().manual_seed(1)
    n = 50
    counts = torch.randint(1, 60, (n,), generator=g)           # a mix of rare (f < 0.0011) and frequent classes
    logits = torch.randn(300, n, generator=g) * 4 - 3
    logits[0, :3] = torch.tensor([-1e4, 1e4, 12.])               # outside the clamp: zero gradient
    labels = torch.where(torch.rand(300, generator=g) < .3, torch.randint(0, n, (300,), generator=g), n)
    labels[5] = -1                                               # an ignored row
    return labels, logits, counts


def test_fused_matches_eager(fused_batch):
    loss_e, grad_e = _loss_and_grad(False, *fused_batch)
    loss_f, grad_f = _loss_and_grad(True, *fused_batch)
    assert L._fused_kernel is not None and L._fused_kernel is not L._gumbel_bce_dense  # really compiled
    assert torch.isfinite(loss_f) and loss_f > 0
    torch.testing.assert_close(loss_f, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_f, grad_e, rtol=1e-5, atol=1e-7)
    assert grad_f[0, :3].abs().sum() == 0 and grad_f[5].abs().sum() == 0


def test_fused_falls_back_when_compile_fails(fused_batch, monkeypatch):
    def broken_compile(fn, **kw):
        def run(*a): raise RuntimeError('no C++ compiler')
        return run
    monkeypatch.setattr(L, '_fused_kernel', None)
    monkeypatch.setattr(torch, 'compile', broken_compile)
    with pytest.warns(UserWarning, match='torch.compile failed'):
        loss_f, grad_f = _loss_and_grad(True, *fused_batch)
    loss_e, grad_e = _loss_and_grad(False, *fused_batch)
    torch.testing.assert_close(loss_f, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_f, grad_e, rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(L, '_fused_kernel', None)  # later tests compile for real
