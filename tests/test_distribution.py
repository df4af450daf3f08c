"Tests of gol_nb.distribution: object distributions, predicted distributions, KL divergence, distribution fits."
import json
import numpy as np
import pytest

from gol_nb.data import find_shared_file, load_lvis
from gol_nb.data.lvis import LVISFormatError
from gol_nb.distribution import (ObjectDistribution, fit_distributions, grid_cells, kl_divergence,
                                 object_distribution, predicted_distribution)

REAL = find_shared_file('lvis_val_100.json')


def random_lvis(seed=0, n_images=30, n_anns=400, cat_ids=(1, 4, 5, 9, 20)):
    rng = np.random.default_rng(seed)
    imgs = [{'id': 10 * i + 3, 'height': int(rng.integers(20, 300)), 'width': int(rng.integers(20, 300)),
             'coco_url': f'x/{i}.jpg'} for i in range(n_images)]
    anns = []
    for k in range(n_anns):
        im = imgs[rng.integers(n_images)]
        w, h = rng.uniform(1, im['width']), rng.uniform(1, im['height'])
        x, y = rng.uniform(-w / 2, im['width'] - w / 2), rng.uniform(-h / 2, im['height'] - h / 2)  # some centres near edges
        anns.append({'id': k + 1, 'image_id': im['id'], 'category_id': int(rng.choice(cat_ids[:-1])),  # last class absent
                     'bbox': [float(x), float(y), float(w), float(h)], 'area': float(w * h),
                     'segmentation': [[x, y, x + w, y, x + w, y + h]]})
    return {'images': imgs, 'annotations': anns, 'categories': [{'id': c, 'name': f'c{c}'} for c in cat_ids]}


def naive(lvis, grid, dets=None):
    "Loop reference: per-object cell, class counts, then the three definitions."
    imgs = {im['id']: im for im in lvis['images']}
    cats = sorted(c['id'] for c in lvis['categories'])
    counts = np.zeros((len(cats), grid, grid))
    for a in (dets if dets is not None else lvis['annotations']):
        im = imgs[a['image_id']]
        x, y, w, h = a['bbox']
        i = min(max(int(np.floor((y + h / 2) / im['height'] * grid)), 0), grid - 1)
        j = min(max(int(np.floor((x + w / 2) / im['width'] * grid)), 0), grid - 1)
        counts[cats.index(a['category_id']), i, j] += a.get('score', 1.)
    cell = counts.sum(0)
    p_obj = cell / cell.sum()
    p_y_obj = np.zeros_like(counts)
    for i in range(grid):
        for j in range(grid):
            if cell[i, j] > 0: p_y_obj[:, i, j] = counts[:, i, j] / cell[i, j]
    return p_obj, p_y_obj, p_y_obj * p_obj


@pytest.mark.parametrize('grid', [1, 3, 8])
def test_matches_loop_reference(grid):
    lv = random_lvis()
    d = object_distribution(lv, grid=grid)
    p_obj, p_y_obj, p_y = naive(lv, grid)
    np.testing.assert_allclose(d.p_obj, p_obj, atol=1e-12)
    np.testing.assert_allclose(d.p_y_given_obj, p_y_obj, atol=1e-12)
    np.testing.assert_allclose(d.p_y, p_y, atol=1e-12)
    assert d.p_obj.shape == (grid, grid) and d.p_y.shape == (5, grid, grid) and d.grid == grid
    assert d.category_ids.tolist() == [1, 4, 5, 9, 20]
    assert d.total == 400 and d.p_y.sum() == pytest.approx(1.)
    np.testing.assert_allclose(d.p_y_given_obj.sum(0), (d.p_obj > 0).astype(float), atol=1e-12)
    assert d.p_y[d.index(20)].sum() == 0  # absent class


def test_from_path_and_hand_case(tmp_path):
    imgs = [{'id': 1, 'height': 100, 'width': 100, 'coco_url': 'a.jpg'}, {'id': 2, 'height': 100, 'width': 200, 'coco_url': 'b.jpg'}]
    box = lambda cx, cy: [cx - 5., cy - 5., 10., 10.]
    anns = [{'id': k + 1, 'image_id': i, 'category_id': c, 'bbox': box(cx, cy), 'area': 100.,
             'segmentation': [[0., 0., 1., 0., 1., 1.]]}
            for k, (i, c, cx, cy) in enumerate([(1, 1, 25, 25), (1, 2, 75, 25), (1, 2, 75, 25), (2, 1, 150, 80)])]
    p = tmp_path / 'l.json'
    p.write_text(json.dumps({'images': imgs, 'annotations': anns, 'categories': [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}]}))
    d = object_distribution(p, grid=2)
    np.testing.assert_allclose(d.p_obj, [[.25, .5], [0, .25]])
    np.testing.assert_allclose(d.p_y_given_obj[1], [[0, 1], [0, 0]])
    np.testing.assert_allclose(d.p_y[0], [[.25, 0], [0, .25]])
    with pytest.raises(KeyError, match='category id 3'): d.index(3)


def test_grid_cells_floor_and_clip():
    boxes = np.array([[0., 0., 0., 0.], [99.9, 49.9, 0., 0.], [100., 50., 0., 0.], [150., -10., 0., 0.], [24.9, 25., 0., 0.]])
    r, c = grid_cells(boxes, np.full(5, 100.), np.full(5, 100.), 4)
    assert r.tolist() == [0, 1, 2, 0, 1] and c.tolist() == [0, 3, 3, 3, 0]
    with pytest.raises(ValueError, match='grid must be a positive integer'): grid_cells(boxes, np.ones(5), np.ones(5), 0)
    with pytest.raises(ValueError, match='grid'): object_distribution(random_lvis(), grid=2.5)
    with pytest.raises(ValueError, match='grid'): object_distribution(random_lvis(), grid=True)


def test_bad_annotations_are_named(tmp_path):
    lv = random_lvis()
    lv['annotations'][7]['category_id'] = 999
    with pytest.raises(LVISFormatError, match=r"annotations\[7\].*category_id"): object_distribution(lv)
    lv = random_lvis(); lv['annotations'][3]['bbox'] = [1., 2., float('nan'), 4.]
    with pytest.raises(LVISFormatError, match=r"annotations\[3\].*bbox"): object_distribution(lv)
    lv = random_lvis(); lv['images'][2].pop('height')
    with pytest.raises(LVISFormatError, match=r"images\[2\].*height"): object_distribution(lv)
    with pytest.raises(LVISFormatError, match=r"images\[2\].*height"): predicted_distribution([], lv, grid=2)
    lv = random_lvis(); lv['annotations'][5]['image_id'] = 1.5
    with pytest.raises(LVISFormatError, match=r"annotations\[5\].*image_id"): object_distribution(lv)
    p = tmp_path / 'bad.json'; p.write_text('{"images": 3}')
    with pytest.raises(LVISFormatError, match='bad.json'): object_distribution(p)


def test_predicted_distribution_weights_and_threshold(tmp_path):
    lv = random_lvis(seed=1)
    gt = object_distribution(lv, grid=5)
    dets = [{'image_id': a['image_id'], 'category_id': a['category_id'], 'bbox': a['bbox'], 'score': 1.} for a in lv['annotations']]
    q = predicted_distribution(dets, lv, grid=5)
    np.testing.assert_allclose(q.p_y, gt.p_y, atol=1e-12)  # unit scores: the ground truth again
    rng = np.random.default_rng(0)
    for d in dets: d['score'] = float(rng.random())
    q = predicted_distribution(dets, lv, grid=5)
    _, _, p_y = naive(lv, 5, dets)
    np.testing.assert_allclose(q.p_y, p_y, atol=1e-12)
    assert q.total == pytest.approx(sum(d['score'] for d in dets))
    p = tmp_path / 'dets.json'; p.write_text(json.dumps(dets))
    q_file = predicted_distribution(p, lv, grid=5, score_thresh=.5)
    assert q_file.total == pytest.approx(sum(d['score'] for d in dets if d['score'] >= .5))
    empty = predicted_distribution([], lv, grid=5)
    assert empty.total == 0 and empty.p_obj.sum() == 0


@pytest.mark.parametrize('change, msg', [
    (lambda d: d.update(image_id=12345), r"detections\[1\]: field 'image_id'"),
    (lambda d: d.update(category_id=2), r"detections\[1\]: field 'category_id'"),
    (lambda d: d.update(score=-.1), r"detections\[1\]: field 'score'"),
    (lambda d: d.update(score=float('nan')), r"detections\[1\]: field 'score'"),
    (lambda d: d.pop('score'), r"detections\[1\]: field 'score'"),
    (lambda d: d.update(bbox=[1., 2., 3.]), r"detections\[1\]: field 'bbox'"),
    (lambda d: d.update(bbox=[1., 2., 3., float('inf')]), r"detections\[1\]: field 'bbox'")])
def test_bad_detections_are_named(change, msg):
    lv = random_lvis()
    dets = [{'image_id': 3, 'category_id': 1, 'bbox': [1., 1., 2., 2.], 'score': .5} for _ in range(3)]
    change(dets[1])
    with pytest.raises(ValueError, match=msg): predicted_distribution(dets, lv, grid=4)
    with pytest.raises(TypeError, match='list of records'): predicted_distribution({'a': 1}, lv, grid=4)


def test_kl_divergence():
    lv = random_lvis(seed=2)
    gt = object_distribution(lv, grid=6)
    kl = kl_divergence(gt, gt)
    np.testing.assert_allclose(kl[:4], 0, atol=1e-12)
    assert np.isnan(kl[4])  # class 20 has no ground truth
    imsz = {im['id']: im['width'] for im in lv['images']}
    dets = [{'image_id': a['image_id'], 'category_id': a['category_id'], 'score': 1.,
             'bbox': [a['bbox'][0] + .4 * imsz[a['image_id']], *a['bbox'][1:]]} for a in lv['annotations']]
    shifted = kl_divergence(predicted_distribution(dets, lv, grid=6), gt)
    assert (shifted[:4] > .1).all()
    # hand-computed: P(u|y) = [.5, .5, 0, 0], Q(u|y) = [.2, .8, 0, 0] on a 2 x 2 grid, eps smoothing
    cats = np.array([1])
    mk = lambda c: ObjectDistribution(c.sum(0) / c.sum(), c / c.sum(0).clip(1e-300), c / c.sum(), cats, c, float(c.sum()))
    P, Q = mk(np.array([[[1., 1.], [0., 0.]]])), mk(np.array([[[2., 8.], [0., 0.]]]))
    e = 1e-3
    p, q = (np.array([.5, .5, 0, 0]) + e) / (1 + 4 * e), (np.array([.2, .8, 0, 0]) + e) / (1 + 4 * e)
    assert kl_divergence(Q, P, eps=e)[0] == pytest.approx((p * np.log(p / q)).sum(), rel=1e-12)
    assert kl_divergence(Q, P, eps=1e-12)[0] == pytest.approx(.5 * np.log(.5 / .2) + .5 * np.log(.5 / .8), rel=1e-9)
    assert kl_divergence(P, Q, eps=1e-12)[0] != pytest.approx(kl_divergence(Q, P, eps=1e-12)[0])  # direction matters
    # no detection of a class: divergence from the uniform distribution, finite
    none = kl_divergence(predicted_distribution([], lv, grid=6), gt)
    assert np.isfinite(none[:4]).all() and (none[:4] > 0).all()
    with pytest.raises(ValueError, match='grids differ'): kl_divergence(object_distribution(lv, grid=3), gt)
    with pytest.raises(ValueError, match='eps'): kl_divergence(gt, gt, eps=0)
    other = object_distribution(random_lvis(cat_ids=(1, 2, 3, 4, 5)), grid=6)
    with pytest.raises(ValueError, match='category_ids'): kl_divergence(other, gt)


def test_fit_distributions_picks_the_generating_family():
    rng = np.random.default_rng(0)
    for name, x in [('gumbel_r', rng.gumbel(1e-5, 2e-6, 5000)), ('norm', rng.normal(1e-5, 2e-6, 5000)),
                    ('logistic', rng.logistic(1e-5, 2e-6, 5000))]:
        f = fit_distributions(x)
        assert f.distribution[0] == name, f
        assert f.sort_values('ks').distribution.iloc[0] == name
        assert f.loc[0, 'loc'] == pytest.approx(1e-5, rel=.05)
        assert list(f.columns) == ['distribution', 'loc', 'scale', 'loglik', 'aic', 'ks']
        assert (f.aic == 4 - 2 * f.loglik).all()
    with pytest.raises(ValueError, match='>= 3 finite'): fit_distributions([1., np.nan, 2.])
    with pytest.raises(ValueError, match='all equal'): fit_distributions(np.ones(10))


@pytest.mark.skipif(REAL is None, reason='shared/data/lvis_val_100.json not found')
def test_real_lvis_counts():
    lv = load_lvis(REAL)
    d = object_distribution(lv, grid=16)
    assert d.total == len(lv['annotations']) == 977
    per_class = np.bincount(np.searchsorted(d.category_ids, [a['category_id'] for a in lv['annotations']]), minlength=len(d.category_ids))
    np.testing.assert_array_equal(d.counts.sum((1, 2)), per_class)
    assert d.p_y.shape == (1230, 16, 16) and d.p_y.max() < .01


def test_benchmark_script_runs_small(capsys):
    "benchmarks/bench_data.py at toy size: it runs, and its synthetic set has the LVIS-like group profile."
    import importlib.util, pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / 'benchmarks' / 'bench_data.py'
    spec = importlib.util.spec_from_file_location('bench_data', path); bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    counts = bench.zipf_image_counts(1203, 100_000)
    assert (counts > 100).sum() == 405 and 320 <= (counts <= 10).sum() <= 345  # LVIS v1: 405 frequent, 337 rare
    lv = bench.synthetic_lvis(300, 4000, 40, seed=0)
    assert len(lv['annotations']) == 4000 and load_lvis(lv) is not None
    bench.main(['--images', '300', '--boxes', '4000', '--classes', '40', '--poly-points', '7'])
    out = capsys.readouterr().out
    assert 'object_distribution' in out and 'repeat_factors' in out and '56,000 polygon coordinates' in out
    assert 'LVISDetection(train=True) construction' in out and 'images holding >= 1 annotation' in out
