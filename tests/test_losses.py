"""Losses against the formulas, the authors' code (kostas1515/GOL, written out from its description below) and
torch/mmdetection conventions; the fused (torch.compile) Gumbel path against the eager one."""
import json, math, warnings
import pytest
import torch
import torch.nn.functional as F
import gol_nb.losses as L
import gol_nb.losses.kernel as K  # the fused kernel's cache lives there
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
        loss = GOL(C, COUNTS, 900, generator=torch.Generator().manual_seed(0))  # fewest: 1 of 900 images > 0.0011
    assert len(rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for _ in range(3): loss(torch.randn(8, C), torch.randint(0, C + 1, (8,)))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        FederatedLoss(C, COUNTS, 900)  # Federated does not use the threshold: no warning


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
    with pytest.raises(TypeError, match='background'):  # one name for the keyword: the old `background` is gone
        SoftmaxCE(C, background=False)
    for cls in (SoftmaxCE, SigmoidBCE, GumbelBCE):
        assert cls(C, background_channel=True).num_channels == C + 1


def test_one_based_labels_are_caught():
    x = torch.randn(4, C)
    with pytest.raises(ValueError, match='1..C'): GumbelBCE(C, background_label=False)(x, torch.tensor([1, 2, 5, 3]))
    with pytest.raises(ValueError, match=r'\[-1, 4\]'): SoftmaxCE(C, background_channel=False)(x, torch.tensor([5, 1, 0, 2]))
    # a detection batch in torchvision's numbering (no background label C, 75% label 0) for a loss whose class 0 is
    # in 1% of the training images: warned
    labels = torch.tensor([0] * 75 + [3] * 25)
    lvis_like = dict(image_counts=[10, 400, 300, 200, 100], num_images=1000, lambda_='rare', generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match='to_loss_labels'): build_loss('gol', C, **lvis_like)(torch.randn(100, C), labels)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        build_loss('gol', C, **lvis_like)(torch.randn(100, C), torch.tensor([C] * 75 + [3] * 25))  # own numbering
        make('gumbel')(torch.randn(100, C), labels)  # no class statistics: nothing to judge the share by


def test_long_tailed_batch_mostly_class_zero_does_not_warn():
    "Issue 21: class 0 is the head class of every long-tailed set; a batch drawn from it is mostly class 0."
    counts = torch.tensor([900., 50, 30, 10, 5])
    labels = torch.multinomial(counts, 256, replacement=True, generator=torch.Generator().manual_seed(0))
    assert (labels == 0).float().mean() > .85
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        GOL(5, counts, 995, 'rare')(torch.randn(256, 5), labels)
        GumbelBCE(5)(torch.randn(256, 5), labels)


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
    assert K._fused_kernel is not None and K._fused_kernel is not K._gumbel_bce_dense  # really compiled
    assert torch.isfinite(loss_f) and loss_f > 0
    torch.testing.assert_close(loss_f, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_f, grad_e, rtol=1e-5, atol=1e-7)
    assert grad_f[0, :3].abs().sum() == 0 and grad_f[5].abs().sum() == 0


def test_fused_falls_back_when_compile_fails(fused_batch, monkeypatch):
    def broken_compile(fn, **kw):
        def run(*a): raise RuntimeError('no C++ compiler')
        return run
    monkeypatch.setattr(K, '_fused_kernel', None)
    monkeypatch.setattr(torch, 'compile', broken_compile)
    with pytest.warns(UserWarning, match='torch.compile failed'):
        loss_f, grad_f = _loss_and_grad(True, *fused_batch)
    loss_e, grad_e = _loss_and_grad(False, *fused_batch)
    torch.testing.assert_close(loss_f, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_f, grad_e, rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(K, '_fused_kernel', None)  # later tests compile for real


# ---------------------------------------------------------------- issue 22: the shared closed-form autograd path
def _gumbel_reference(q, y, clamp=(-4., 10.), mu=0., beta=1.):
    "Eq. 8 written out in float64 and differentiated by autograd (clamp: torch.clamp, zero gradient outside)."
    z = (q.clamp(*clamp) if clamp else q) - mu
    a = torch.exp(-z / beta)
    return y * a - (1 - y) * torch.log(-torch.expm1(-a))


@pytest.mark.parametrize('targets', ['labels', 'dense'])
@pytest.mark.parametrize('clamp,mu,beta', [((-4., 10.), 0., 1.), (None, 0., 1.), ((-3., 8.), .4, 1.6)])
def test_gumbel_function_against_float64_reference(targets, clamp, mu, beta):
    g = torch.Generator().manual_seed(3)
    q64 = (torch.randn(40, 6, generator=g, dtype=torch.float64) * 6).requires_grad_()
    labels = torch.randint(0, 7, (40,), generator=g)
    onehot = F.one_hot(labels, 7)[:, :6].double()
    y = labels if targets == 'labels' else onehot * .8
    ref = _gumbel_reference(q64, onehot if targets == 'labels' else y, clamp, mu, beta)
    g_ref, = torch.autograd.grad(ref.sum(), q64)
    q32 = q64.detach().float().requires_grad_()
    out = L.gumbel_bce(q32, y if targets == 'labels' else y.float(), clamp, mu, beta)
    g32, = torch.autograd.grad(out.sum(), q32)
    torch.testing.assert_close(out.double(), ref.detach(), rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(g32.double(), g_ref, rtol=2e-6, atol=1e-7)
    # float64 gradcheck of the Function itself (away from the clamp's kinks)
    x = (torch.rand(5, 6, generator=g, dtype=torch.float64) * 10 - 3.5).requires_grad_()
    yy = labels[:5] if targets == 'labels' else onehot[:5] * .8
    w = torch.rand(5, 6, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: L.gumbel_bce(v, yy, clamp, mu, beta, weight=w, sum_classes=True), (x,))


def test_gumbel_function_far_logits_use_the_series():
    q = torch.tensor([[19., 21., 60., 88., 100., 1e4]], requires_grad=True)
    out = L.gumbel_bce(q, torch.zeros(1, 6), clamp=None)
    g, = torch.autograd.grad(out.sum(), q)
    torch.testing.assert_close(out, q.detach() + .5 * torch.exp(-q.detach()))
    torch.testing.assert_close(g, 1 - .5 * torch.exp(-q.detach()))


def _saved_bytes(fn):
    seen = {}
    def pack(t):
        seen[(t.untyped_storage().data_ptr(), tuple(t.shape))] = t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t): fn()
    return sum(seen.values())


def test_gumbel_losses_save_no_more_than_bce():
    q = torch.randn(256, 40, requires_grad=True)
    labels = torch.where(torch.rand(256) < .3, torch.randint(0, 40, (256,)), 40)
    onehot = F.one_hot(labels, 41)[:, :40].float()
    bce = _saved_bytes(lambda: F.binary_cross_entropy_with_logits(q, onehot, reduction='sum'))
    counts = torch.cat([torch.arange(1, 11), torch.randint(11, 500, (30,))])  # 10 rare classes: GOL's mask is used
    for loss in (GumbelBCE(40), GOL(40, counts, 1000, 'rare', generator=torch.Generator().manual_seed(0)),
                 L.GumbelFocalLoss(40), EQL(40, counts, 1000, 'rare', activation='gumbel')):
        for y in (labels, onehot):
            assert _saved_bytes(lambda: loss(q, y, avg_factor=256.)) <= bce, type(loss).__name__


# ---------------------------------------------------------------- issue 19: Gumbel focal loss, sigmoid focal loss
def _focal_reference(x, y, alpha=.25, gamma=2.):
    log_g = -torch.exp(-x)
    log_1mg = torch.log(-torch.expm1(log_g))
    g = torch.exp(log_g)
    return -alpha * y * (1 - g) ** gamma * log_g - (1 - alpha) * (1 - y) * g ** gamma * log_1mg


@pytest.mark.parametrize('alpha,gamma', [(.25, 2.), (.5, 0.), (.9, 1.5)])
def test_gumbel_focal_against_float64_reference(alpha, gamma):
    g = torch.Generator().manual_seed(5)
    x64 = (torch.rand(64, 7, generator=g, dtype=torch.float64) * 25 - 3.9).requires_grad_()
    labels = torch.randint(-1, 8, (64,), generator=g)
    onehot = F.one_hot(labels.clamp(min=0), 8)[:, :7].double() * (labels >= 0).double()[:, None]
    ref = _focal_reference(x64, onehot, alpha, gamma) * (labels >= 0).double()[:, None]
    g_ref, = torch.autograd.grad(ref.sum(), x64)
    loss = L.build_loss('gumbel_focal', 7, alpha=alpha, gamma=gamma)
    for y in (labels, onehot.float()):
        x32 = x64.detach().float().requires_grad_()
        out = loss(x32, y if y.dtype == torch.long else torch.where(labels[:, None] >= 0, y, 0.),
                   reduction_override='none')
        if y.dtype != torch.long: out = out * (labels >= 0).float()[:, None]
        g32, = torch.autograd.grad(out.sum(), x32)
        torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(g32.double(), g_ref, rtol=1e-5, atol=1e-9)
    x = (torch.rand(6, 7, generator=g, dtype=torch.float64) * 12 - 3.5).requires_grad_()
    w = torch.rand(6, 7, generator=g, dtype=torch.float64)
    for y in (labels[:6].clamp(min=0), onehot[:6] * .6):
        assert torch.autograd.gradcheck(
            lambda v: L.gumbel_focal_loss(v, y, alpha, gamma, weight=w, sum_classes=True), (x,))


@pytest.mark.parametrize('dtype', [None, torch.bfloat16])
def test_gumbel_focal_extreme_logits(dtype):
    x = torch.tensor([[-1e4, 1e4, -1e4], [1e4, -1e4, 1e4], [0., -60., 90.]], requires_grad=True)
    for y in (torch.tensor([0, 1, 3]), torch.tensor([[1., 0, 1], [0, 1, 0], [.5, 1, 0]])):
        for name in ('gumbel_focal', 'focal'):
            loss = L.build_loss(name, 3)
            if dtype is None: out = loss(x, y, reduction_override='none')
            else:
                with torch.autocast('cpu', dtype=dtype): out = loss(x.to(dtype), y, reduction_override='none')
            g, = torch.autograd.grad(out.sum(), x)
            assert torch.isfinite(out).all() and torch.isfinite(g).all(), (name, y)
    # a positive far below the prior keeps a bounded gradient that pushes it up
    xp = torch.tensor([[-1e4]], requires_grad=True)
    g, = torch.autograd.grad(L.gumbel_focal_loss(xp, torch.tensor([0])).sum(), xp)
    assert -20 < g.item() < -1


def test_gumbel_focal_prior():
    loss = L.build_loss('gumbel_focal', 10)
    b = loss.classifier_init['bias']
    assert b == pytest.approx(-math.log(-math.log(.01)))
    assert torch.exp(-torch.exp(torch.tensor(-b))).item() == pytest.approx(.01)
    head = init_classifier(torch.nn.Linear(16, 10), loss.classifier_init)
    assert loss.scores(head(torch.zeros(2, 16))).mean().item() == pytest.approx(.01, rel=1e-4)
    assert L.build_loss('focal', 10).classifier_init['bias'] == pytest.approx(math.log(.01 / .99))
    with pytest.raises(ValueError, match='alpha'): L.build_loss('gumbel_focal', 3, alpha=1.5)


def test_sigmoid_focal_matches_torchvision():
    tv = pytest.importorskip('torchvision.ops')
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(50, 6, generator=g) * 4).requires_grad_()
    labels = torch.randint(0, 7, (50,), generator=g)
    t = F.one_hot(labels, 7)[:, :6].float()
    for alpha, gamma in ((.25, 2.), (.6, 1.)):
        ours = L.build_loss('focal', 6, alpha=alpha, gamma=gamma)
        ref = tv.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction='none')
        torch.testing.assert_close(ours(x, labels, reduction_override='none'), ref)
        torch.testing.assert_close(ours(x, t, avg_factor=50.), ref.sum() / 50)
        g1, = torch.autograd.grad(ours(x, labels, reduction_override='sum'), x)
        g2, = torch.autograd.grad(ref.sum(), x)
        torch.testing.assert_close(g1, g2)


# ---------------------------------------------------------------- issue 19: EQLv2
def test_eqlv2_weights_hand_worked():
    loss = L.build_loss('eqlv2', 3, gamma=12, mu=.8, alpha=4.)
    assert torch.equal(loss.class_weights()[0], torch.ones(3))  # no gradient seen yet: every weight 1
    loss.pos_grad.copy_(torch.tensor([3., 0., 1.2])); loss.neg_grad.copy_(torch.tensor([3., 7., 1.]))
    q, r = loss.class_weights()
    f = lambda g: 1 / (1 + math.exp(-12 * (g - .8)))
    expected_q = torch.tensor([f(1.), f(0.), f(1.2)])           # 0.9168, 6.77e-5, 0.9918
    torch.testing.assert_close(q, expected_q)
    torch.testing.assert_close(r, 1 + 4 * (1 - expected_q))
    assert q[1].item() == pytest.approx(1 / (1 + math.exp(9.6)))  # never positive: f(0)
    # the element weights: r on a row's positive, q elsewhere; background rows all q
    w = loss.element_weights(torch.zeros(3, 3), torch.tensor([1, 3, 0]), None)
    torch.testing.assert_close(w, torch.stack([torch.stack([q[0], r[1], q[2]]), q, torch.stack([r[0], q[1], q[2]])]))
    el = loss(torch.zeros(3, 3), torch.tensor([1, 3, 0]), reduction_override='none')
    torch.testing.assert_close(el, w * math.log(2.))


@pytest.mark.parametrize('form', ['labels', 'dense'])
def test_eqlv2_accumulates_weighted_abs_p_minus_y(form):
    g = torch.Generator().manual_seed(4)
    loss = L.EQLv2(4)
    loss.pos_grad.fill_(1.); loss.neg_grad.copy_(torch.tensor([1., 2., 4., 8.]))  # weights not 1
    x = torch.randn(9, 4, generator=g, requires_grad=True)
    labels = torch.tensor([0, 4, 1, 1, -1, 3, 4, 0, 2])
    t = F.one_hot(labels.clamp(min=0), 5)[:, :4].float()
    keep = (labels >= 0).float()[:, None]
    w = loss.element_weights(x, labels.clamp(min=0), None) * keep * 2.   # the ignored row has weight 0
    before_pos, before_neg = loss.pos_grad.clone(), loss.neg_grad.clone()
    y = labels if form == 'labels' else torch.where(keep > 0, t, torch.zeros_like(t))
    out = loss(x, y, weight=torch.full((9,), 2.) if form == 'labels' else torch.full((9,), 2.) * keep[:, 0])
    out.backward()
    grad = (torch.sigmoid(x.detach()) - t).abs() * w
    torch.testing.assert_close(loss.pos_grad - before_pos, (grad * t).sum(0))
    torch.testing.assert_close(loss.neg_grad - before_neg, (grad * (1 - t)).sum(0))
    with torch.no_grad(): loss(x, y)                                  # evaluation: no accumulation
    torch.testing.assert_close(loss.pos_grad - before_pos, (grad * t).sum(0))


def test_eqlv2_class_never_positive_gets_f0_after_a_step():
    loss = L.EQLv2(3)
    x = torch.randn(16, 3, requires_grad=True)
    loss(x, torch.tensor([0, 1] * 4 + [3] * 8)).backward()          # class 2 never positive
    q, r = loss.class_weights()
    assert q[2].item() == pytest.approx(1 / (1 + math.exp(12 * .8)))
    assert r[2].item() == pytest.approx(1 + 4 * (1 - q[2].item()))
    assert isinstance(loss.state_dict()['pos_grad'], torch.Tensor)  # statistics are buffers: saved and moved


# ---------------------------------------------------------------- issue 21: help, top-level imports, clear refusals
def test_help_shows_the_meaning_of_the_arguments():
    import pydoc
    text = pydoc.render_doc(GOL, renderer=pydoc.plaintext)
    for word in ('image_counts', 'num_images', 'avg_factor', 'background_label', "'mean'"):
        assert word in text, word
    assert 'Define the computation performed at every call' not in text  # not torch's generic forward docstring
    for cls in (L.ClassificationLoss, SoftmaxCE, SigmoidBCE, GumbelBCE, EQL, DropLoss, FederatedLoss, GOL,
                L.EQLv2, L.GumbelFocalLoss, L.SigmoidFocalLoss):
        assert cls.__doc__ and cls.__init__.__doc__ and cls.forward.__doc__, cls.__name__


def test_top_level_imports():
    from gol_nb import GOL as G, build_loss as b, GumbelFocalLoss, EQLv2
    assert G is GOL and b is build_loss and GumbelFocalLoss is L.GumbelFocalLoss and EQLv2 is L.EQLv2
    import gol_nb
    with pytest.raises(AttributeError): gol_nb.NoSuchLoss


def test_num_images_below_an_image_count_is_refused():
    with pytest.raises(ValueError, match=r'num_images=100 is smaller than image_counts\[0\]=900'):
        GOL(C, COUNTS, 100)
    with pytest.raises(ValueError, match='num_images=100'): build_loss('eql', C, image_counts=COUNTS, num_images=100)


def test_unknown_loss_option_is_named_with_the_accepted_ones():
    with pytest.raises(ValueError, match=r"loss 'gol' has no option 'foo'; it accepts .*image_counts.*lambda_"):
        build_loss('gol', C, foo=1, **STATS)
    with pytest.raises(ValueError, match=r"did you mean 'lambda_'"): build_loss('gol', C, lamda=.1, **STATS)
    with pytest.raises(TypeError, match='no option'): build_loss('sigmoid', C, clamp=(-4, 10))
    assert 'clamp' in L.loss_options('gumbel') and 'alpha' in L.loss_options('eqlv2')
    for name in LOSSES:  # background_channel=False is accepted by every loss (configs pass it)
        make(name, background_channel=False)


def test_eqlv2_all_reduces_under_torch_distributed(tmp_path):
    "With a process group (gloo, one process) the statistics go through all_reduce and stay the batch's sums."
    import torch.distributed as dist
    if not dist.is_available(): pytest.skip('torch.distributed not available')
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/pg', rank=0, world_size=1)
    try:
        loss = L.EQLv2(3)
        x = torch.randn(6, 3, requires_grad=True)
        labels = torch.tensor([0, 1, 3, 3, 2, 0])
        loss(x, labels).backward()
        p, t = torch.sigmoid(x.detach()), F.one_hot(labels, 4)[:, :3].float()
        torch.testing.assert_close(loss.pos_grad, ((1 - p) * t).sum(0))
        torch.testing.assert_close(loss.neg_grad, (p * (1 - t)).sum(0))
    finally:
        dist.destroy_process_group()
