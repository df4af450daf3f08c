"Tests of gol_nb.evaluate: the two LVIS backends agree, LVIS semantics, per-class table, errors."
import json, os
import numpy as np
import pytest
from pycocotools import mask as mu

from gol_nb.data import find_shared_file, load_lvis
from gol_nb.evaluate import (METRICS, DetectionFormatError, evaluate_lvis, numpy_aliases, per_class_ap,
                             run_lvis_eval, top_k_per_image)

REAL = find_shared_file('lvis_val_100.json')
needs_real = pytest.mark.skipif(REAL is None, reason='shared/data/lvis_val_100.json not found')


def small_lvis(seed=0, n_images=12):
    "A small LVIS v1-style dict: 6 classes (2 per frequency group), boxes with polygon masks, neg/not-exhaustive lists."
    rng = np.random.default_rng(seed)
    cats = [{'id': c, 'name': f'cls{c}', 'frequency': f, 'image_count': n}
            for c, f, n in [(1, 'f', 900), (2, 'f', 300), (3, 'c', 40), (5, 'c', 12), (8, 'r', 3), (9, 'r', 1)]]
    imgs, anns = [], []
    for i in range(1, n_images + 1):
        h, w = int(rng.integers(80, 200)), int(rng.integers(80, 200))
        present = set()
        for _ in range(int(rng.integers(1, 6))):
            c = int(rng.choice([1, 1, 1, 2, 2, 3, 5, 8, 9]))
            bw, bh = float(rng.uniform(8, w / 2)), float(rng.uniform(8, h / 2))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            poly = [x, y, x + bw, y, x + bw * .8, y + bh, x, y + bh * .9]
            rle = mu.merge(mu.frPyObjects([poly], h, w))
            anns.append({'id': len(anns) + 1, 'image_id': i, 'category_id': c, 'bbox': [x, y, bw, bh],
                         'area': float(mu.area(rle)), 'segmentation': [poly]})
            present.add(c)
        absent = [c['id'] for c in cats if c['id'] not in present]
        imgs.append({'id': i, 'height': h, 'width': w, 'coco_url': f'x/train2017/{i:012d}.jpg',
                     'neg_category_ids': absent[:2], 'not_exhaustive_category_ids': sorted(present)[:1] if i % 3 == 0 else []})
    return {'images': imgs, 'annotations': anns, 'categories': cats}


def make_detections(gt, iou_type='bbox', seed=0, fp_per_image=4, crowded_image=True):
    "Perturbed ground-truth boxes/masks with random scores, some wrong labels, misses and false positives."
    rng = np.random.default_rng(seed)
    imgs = {im['id']: im for im in gt['images']}
    cat_ids = [c['id'] for c in gt['categories']]
    by_img = {}
    for a in gt['annotations']: by_img.setdefault(a['image_id'], set()).add(a['category_id'])

    def det(img_id, cat, poly):
        im = imgs[img_id]
        rle = mu.merge(mu.frPyObjects([list(map(float, poly))], im['height'], im['width']))
        d = {'image_id': img_id, 'category_id': int(cat), 'score': float(rng.random())}
        if iou_type == 'segm':
            d['segmentation'] = {'size': rle['size'], 'counts': rle['counts'].decode()}
            d['bbox'] = [float(v) for v in mu.toBbox(rle)]
        else:
            xs, ys = poly[0::2], poly[1::2]
            d['bbox'] = [float(min(xs)), float(min(ys)), float(max(xs) - min(xs)), float(max(ys) - min(ys))]
        return d

    dets = []
    for a in gt['annotations']:
        if rng.random() < .15: continue  # missed
        x, y, w, h = a['bbox']
        s = a['segmentation']
        poly = np.array(s[0] if isinstance(s, list) else [x, y, x + w, y, x + w, y + h, x, y + h], float)
        poly[0::2] += rng.normal(0, .1) * w + rng.normal(0, .03 * w, len(poly) // 2)
        poly[1::2] += rng.normal(0, .1) * h + rng.normal(0, .03 * h, len(poly) // 2)
        cat = a['category_id'] if rng.random() > .1 else int(rng.choice(cat_ids))
        dets.append(det(a['image_id'], cat, poly))
    for img_id, im in imgs.items():
        pool = sorted(by_img.get(img_id, set()) | set(im.get('neg_category_ids', [])))
        n = fp_per_image + (320 if crowded_image and img_id == gt['images'][0]['id'] else 0)
        for _ in range(n):
            cat = int(rng.choice(pool)) if pool and rng.random() < .8 else int(rng.choice(cat_ids))
            bw, bh = rng.uniform(4, im['width'] / 2), rng.uniform(4, im['height'] / 2)
            x, y = rng.uniform(0, im['width'] - bw), rng.uniform(0, im['height'] - bh)
            dets.append(det(img_id, cat, [x, y, x + bw, y, x + bw, y + bh, x, y + bh]))
    return dets


def assert_agree(a, b, tol=1e-6):
    for k in METRICS: assert abs(a[k] - b[k]) <= tol, (k, a[k], b[k])


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_backends_agree_small_synthetic(iou_type):
    gt = small_lvis()
    dets = make_detections(gt, iou_type)
    assert max(np.bincount([d['image_id'] for d in dets])) > 300  # the per-image cap is exercised
    f = run_lvis_eval(gt, dets, iou_type, 'faster')
    l = run_lvis_eval(gt, dets, iou_type, 'lvis')
    assert_agree(f.metrics, l.metrics)
    np.testing.assert_allclose(f.per_class.AP.to_numpy(), l.per_class.AP.to_numpy(), atol=1e-6, equal_nan=True)
    assert 0 < f.metrics['AP'] < 1  # imperfect detections, but not useless
    assert all(f.metrics[k] > -1 for k in ('APr', 'APc', 'APf'))


@pytest.fixture(scope='module')
def synthetic_val(tmp_path_factory):
    from gol_nb.data import make_synthetic_lvis
    return make_synthetic_lvis(tmp_path_factory.mktemp('syn'), num_train=60, num_val=80, seed=3).val_json


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_backends_agree_make_synthetic_lvis(synthetic_val, iou_type):
    gt = load_lvis(synthetic_val)
    dets = make_detections(gt, iou_type, seed=8)
    f, l = evaluate_lvis(synthetic_val, dets, iou_type, 'faster'), evaluate_lvis(gt, dets, iou_type, 'lvis')
    assert_agree(f, l)
    assert 0 < f['AP'] < 1


@needs_real
@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_backends_agree_real_lvis(iou_type):
    gt = load_lvis(REAL)
    dets = make_detections(gt, iou_type, seed=1)
    f = evaluate_lvis(REAL, dets, iou_type, 'faster')
    l = evaluate_lvis(gt, dets, iou_type, 'lvis')
    assert_agree(f, l)
    assert 0.05 < f['AP'] < 0.95, f


@needs_real
@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # lvis-api calls logger.warn
def test_matches_raw_lvis_api_with_its_own_cap():
    "Our top-k + faster backend equals lvis-api run on the uncapped list (lvis-api caps per image itself)."
    from lvis import LVIS, LVISEval, LVISResults
    dets = make_detections(load_lvis(REAL), 'bbox', seed=2)
    ours = evaluate_lvis(REAL, dets, 'bbox', 'faster')
    with numpy_aliases():
        gt = LVIS(str(REAL))
        ev = LVISEval(gt, LVISResults(gt, json.loads(json.dumps(dets)), max_dets=300), 'bbox')
        ev.run()
    for k in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'APr', 'APc', 'APf'):
        assert abs(ours[k] - ev.results[k]) < 1e-6, k


def test_lvis_rules_neg_and_not_exhaustive():
    gt = small_lvis(n_images=3, seed=3)
    perfect = [{'image_id': a['image_id'], 'category_id': a['category_id'], 'bbox': a['bbox'], 'score': .5}
               for a in gt['annotations']]
    for be in ('faster', 'lvis'): assert evaluate_lvis(gt, perfect, backend=be)['AP'] == pytest.approx(1.)
    im = gt['images'][0]
    unknown = [c['id'] for c in gt['categories'] if c['id'] not in im['neg_category_ids']
               and c['id'] not in {a['category_id'] for a in gt['annotations'] if a['image_id'] == im['id']}]
    box = [0., 0., 3., 3.]
    if unknown:  # neither present nor negative: dropped, AP unchanged
        m = evaluate_lvis(gt, perfect + [{'image_id': im['id'], 'category_id': unknown[0], 'bbox': box, 'score': .9}])
        assert m['AP'] == pytest.approx(1.)
    # a class of the negative list: a false positive above every true positive of that class
    neg = im['neg_category_ids'][0]
    if any(a['category_id'] == neg for a in gt['annotations']):
        m = evaluate_lvis(gt, perfect + [{'image_id': im['id'], 'category_id': neg, 'bbox': box, 'score': .9}])
        assert m['AP'] < 1
    # a not-exhaustive class: an unmatched detection is ignored
    im3 = next(i for i in gt['images'] if i['not_exhaustive_category_ids'])
    c = im3['not_exhaustive_category_ids'][0]
    for be in ('faster', 'lvis'):
        m = evaluate_lvis(gt, perfect + [{'image_id': im3['id'], 'category_id': c, 'bbox': box, 'score': .9}], backend=be)
        assert m['AP'] == pytest.approx(1.)


def test_empty_detections_defined_and_consistent():
    gt = small_lvis()
    m0 = evaluate_lvis(gt, [])
    assert m0['AP'] == 0. and m0['APr'] == 0. and m0['APl'] in (0., -1.)
    # detections that the LVIS rules drop entirely give the same figures through both real backends
    present = {(a['image_id'], a['category_id']) for a in gt['annotations']}
    dropped = [{'image_id': im['id'], 'category_id': c['id'], 'bbox': [0., 0., 5., 5.], 'score': .5}
               for im in gt['images'] for c in gt['categories']
               if (im['id'], c['id']) not in present and c['id'] not in im['neg_category_ids']][:5]
    assert dropped
    for be in ('faster', 'lvis'): assert_agree(evaluate_lvis(gt, dropped, backend=be), m0, tol=0)
    # a group without ground truth is -1, not 0
    gt2 = small_lvis()
    gt2['annotations'] = [a for a in gt2['annotations'] if a['category_id'] not in (8, 9)]
    assert evaluate_lvis(gt2, [])['APr'] == -1.


def test_per_class_table_and_group_means():
    gt = small_lvis()
    r = run_lvis_eval(gt, make_detections(gt, seed=4))
    t = r.per_class
    assert list(t.columns[:5]) == ['category_id', 'name', 'frequency', 'image_count', 'AP'][:4] + ['num_gt']
    assert t.category_id.tolist() == [1, 2, 3, 5, 8, 9]
    assert t.num_gt.sum() == len(gt['annotations'])
    for g, key in zip('rcf', ('APr', 'APc', 'APf')):
        assert t[t.frequency == g].AP.mean() == pytest.approx(r.metrics[key], abs=1e-9)
    assert t.AP.mean() == pytest.approx(r.metrics['AP'], abs=1e-9)
    assert per_class_ap(gt, make_detections(gt, seed=4)).equals(t)


def test_save_is_atomic_and_complete(tmp_path):
    gt = small_lvis()
    dets = make_detections(gt, seed=5)
    p = tmp_path / 'dets.json'; p.write_text(json.dumps(dets))
    out = tmp_path / 'res' / 'bbox.json'
    m = evaluate_lvis(gt, p, save_to=out)  # detections read from a file
    assert json.loads(out.read_text()) == m
    assert (tmp_path / 'res' / 'bbox_per_class.csv').read_text().startswith('category_id,name,frequency')
    assert sorted(x.name for x in (tmp_path / 'res').iterdir()) == ['bbox.json', 'bbox_per_class.csv']


def test_numpy_aliases_restored():
    assert 'float' not in np.__dict__
    with numpy_aliases(): assert np.float is float
    assert 'float' not in np.__dict__
    gt = small_lvis(n_images=3)
    evaluate_lvis(gt, make_detections(gt, seed=6, crowded_image=False), backend='lvis')
    assert 'float' not in np.__dict__ and 'int' not in np.__dict__


def test_inputs_not_modified():
    gt = small_lvis(n_images=4)
    dets = make_detections(gt, 'segm', seed=7, crowded_image=False)
    g0, d0 = json.dumps(gt), json.dumps(dets)
    for be in ('faster', 'lvis'): evaluate_lvis(gt, dets, 'segm', be)
    assert json.dumps(gt) == g0 and json.dumps(dets) == d0


def test_top_k_per_image_vectorised_matches_sort():
    rng = np.random.default_rng(0)
    dets = [{'image_id': int(i), 'score': float(s)} for i, s in zip(rng.integers(0, 5, 2000), rng.random(2000).round(2))]
    kept = top_k_per_image(dets, 50)
    ref = []
    for i in range(5):
        mine = [d for d in dets if d['image_id'] == i]
        ref += sorted(mine, key=lambda d: d['score'], reverse=True)[:50]  # stable, like lvis-api
    key = lambda d: (d['image_id'], -d['score'])
    assert sorted(map(id, kept)) == sorted(map(id, ref))
    with pytest.raises(ValueError, match='max_dets'): top_k_per_image(dets, 0)


@pytest.mark.parametrize('bad, field', [
    ({'image_id': 999}, "'image_id'"), ({'category_id': 4}, "'category_id'"), ({'bbox': [1, 2, 3]}, "'bbox'"),
    ({'bbox': [1, 2, -3, 4]}, "'bbox'"), ({'score': float('nan')}, "'score'"), ({'score': None}, "'score'"),
    ({'score': '0.5'}, "'score'"), ({'image_id': '1'}, "'image_id'"), ({'bbox': None}, "'bbox'")])
def test_bad_detection_named(bad, field):
    gt = small_lvis(n_images=3)
    dets = [{'image_id': 1, 'category_id': 1, 'bbox': [0., 0., 4., 4.], 'score': .5} for _ in range(3)]
    dets[2] = {**dets[2], **bad}
    with pytest.raises(DetectionFormatError, match=rf"detections\[2\]: field {field}"): evaluate_lvis(gt, dets)


def test_bad_segm_and_arguments(tmp_path):
    gt = small_lvis(n_images=3)
    h, w = gt['images'][0]['height'], gt['images'][0]['width']
    rle = mu.encode(np.asfortranarray(np.ones((h + 1, w), np.uint8)))
    d = {'image_id': 1, 'category_id': 1, 'bbox': [0., 0., 4., 4.], 'score': .5}
    with pytest.raises(DetectionFormatError, match=r"detections\[0\]: field 'segmentation'"): evaluate_lvis(gt, [d], 'segm')
    d2 = {**d, 'segmentation': {'size': rle['size'], 'counts': rle['counts'].decode()}}
    with pytest.raises(DetectionFormatError, match="differs from image 1"): evaluate_lvis(gt, [d2], 'segm')
    with pytest.raises(DetectionFormatError, match="give it to all or none"):
        ok = mu.encode(np.asfortranarray(np.ones((h, w), np.uint8)))
        s = {'size': ok['size'], 'counts': ok['counts']}
        evaluate_lvis(gt, [{**d, 'segmentation': s}, {k: v for k, v in {**d, 'segmentation': s}.items() if k != 'bbox'}], 'segm')
    with pytest.raises(ValueError, match='iou_type'): evaluate_lvis(gt, [d], 'keypoints')
    with pytest.raises(ValueError, match='backend'): evaluate_lvis(gt, [d], backend='coco')
    with pytest.raises(FileNotFoundError, match='detections file'): evaluate_lvis(gt, tmp_path / 'none.json')
    (tmp_path / 'x.json').write_text('{"a": 1}')
    with pytest.raises(DetectionFormatError, match='must be a list'): evaluate_lvis(gt, tmp_path / 'x.json')
