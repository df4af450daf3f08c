"Tests of gol_nb.evaluate: hotcoco agrees with lvis-api, LVIS semantics, per-class table, detection files, errors."
import json, os
import numpy as np
import pytest
from pycocotools import mask as mu

from gol_nb.data import find_shared_file, load_lvis
from gol_nb.evaluate import (METRICS, DetectionFormatError, DetectionWriter, Detections, LVISGroundTruth,
                             check_detections, detections_from_records, evaluate_lvis, numpy_aliases, per_class_ap,
                             read_detections, run_lvis_eval, top_k_per_image, write_lvis_results)

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
                     'neg_category_ids': absent[:2],
                     'not_exhaustive_category_ids': sorted(present)[:1] if i % 3 == 0 else []})
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


def assert_agree(a, b, tol=1e-9):
    for k in METRICS: assert abs(a[k] - b[k]) <= tol, (k, a[k], b[k])


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_backends_agree_small_synthetic(iou_type):
    gt = small_lvis()
    dets = make_detections(gt, iou_type)
    assert max(np.bincount([d['image_id'] for d in dets])) > 300  # the per-image cap is exercised
    f = run_lvis_eval(gt, dets, iou_type, 'hotcoco')
    l = run_lvis_eval(gt, dets, iou_type, 'lvis')
    assert_agree(f.metrics, l.metrics)
    np.testing.assert_allclose(f.per_class.AP.to_numpy(), l.per_class.AP.to_numpy(), atol=1e-9, equal_nan=True)
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
    f, l = evaluate_lvis(synthetic_val, dets, iou_type, 'hotcoco'), evaluate_lvis(gt, dets, iou_type, 'lvis')
    assert_agree(f, l)
    assert 0 < f['AP'] < 1


@needs_real
@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_backends_agree_real_lvis(iou_type):
    gt = load_lvis(REAL)
    dets = make_detections(gt, iou_type, seed=1)
    f = run_lvis_eval(REAL, dets, iou_type, 'hotcoco')
    l = run_lvis_eval(gt, dets, iou_type, 'lvis')
    assert_agree(f.metrics, l.metrics)
    np.testing.assert_allclose(f.per_class.AP.to_numpy(), l.per_class.AP.to_numpy(), atol=1e-9, equal_nan=True)
    assert 0.05 < f.metrics['AP'] < 0.95, f.metrics
    assert all(f.metrics[k] > 0 for k in ('APr', 'APc', 'APf'))  # every frequency group is exercised
    # hotcoco is fed a chunk of images at a time: chunks of 9 images give the same figures and precisions
    from gol_nb.evaluate import _eval_hotcoco
    prepared = LVISGroundTruth(gt)
    d = top_k_per_image(check_detections(dets, prepared, iou_type), 300)
    m9, p9 = _eval_hotcoco(prepared, d, iou_type, 300, chunk=9)
    m1, p1 = _eval_hotcoco(prepared, d, iou_type, 300)
    assert m9 == m1 == f.metrics and np.array_equal(p9, p1)


@needs_real
@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # lvis-api calls logger.warn
def test_matches_raw_lvis_api_with_its_own_cap():
    "Our top-k + hotcoco equals lvis-api run on the uncapped list (lvis-api caps per image itself)."
    from lvis import LVIS, LVISEval, LVISResults
    dets = make_detections(load_lvis(REAL), 'bbox', seed=2)
    ours = evaluate_lvis(REAL, dets, 'bbox', 'hotcoco')
    with numpy_aliases():
        gt = LVIS(str(REAL))
        ev = LVISEval(gt, LVISResults(gt, json.loads(json.dumps(dets)), max_dets=300), 'bbox')
        ev.run()
    for k in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'APr', 'APc', 'APf'):
        assert abs(ours[k] - ev.results[k]) < 1e-9, k


def test_lvis_rules_neg_and_not_exhaustive():
    gt = small_lvis(n_images=3, seed=3)
    perfect = [{'image_id': a['image_id'], 'category_id': a['category_id'], 'bbox': a['bbox'], 'score': .5}
               for a in gt['annotations']]
    for be in ('hotcoco', 'lvis'): assert evaluate_lvis(gt, perfect, backend=be)['AP'] == pytest.approx(1.)
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
    for be in ('hotcoco', 'lvis'):
        extra = [{'image_id': im3['id'], 'category_id': c, 'bbox': box, 'score': .9}]
        m = evaluate_lvis(gt, perfect + extra, backend=be)
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
    for be in ('hotcoco', 'lvis'): assert_agree(evaluate_lvis(gt, dropped, backend=be), m0, tol=0)
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
    for be in ('hotcoco', 'lvis'): evaluate_lvis(gt, dets, 'segm', be)
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
    with pytest.raises(DetectionFormatError, match=r"detections\[0\]: field 'segmentation'"):
        evaluate_lvis(gt, [d], 'segm')
    d2 = {**d, 'segmentation': {'size': rle['size'], 'counts': rle['counts'].decode()}}
    with pytest.raises(DetectionFormatError, match="differs from image 1"): evaluate_lvis(gt, [d2], 'segm')
    with pytest.raises(DetectionFormatError, match="give it to all or none"):
        ok = mu.encode(np.asfortranarray(np.ones((h, w), np.uint8)))
        s = {'size': ok['size'], 'counts': ok['counts']}
        with_s = {**d, 'segmentation': s}
        evaluate_lvis(gt, [with_s, {k: v for k, v in with_s.items() if k != 'bbox'}], 'segm')
    with pytest.raises(ValueError, match='iou_type'): evaluate_lvis(gt, [d], 'keypoints')
    with pytest.raises(ValueError, match='backend'): evaluate_lvis(gt, [d], backend='coco')
    with pytest.raises(FileNotFoundError, match='detections file'): evaluate_lvis(gt, tmp_path / 'none.json')
    (tmp_path / 'x.json').write_text('{"a": 1}')
    with pytest.raises(DetectionFormatError, match='must be a list'): evaluate_lvis(gt, tmp_path / 'x.json')
    (tmp_path / 'y.json').write_text('[{"a": ')
    with pytest.raises(DetectionFormatError, match='not valid json'): evaluate_lvis(gt, tmp_path / 'y.json')
    with pytest.raises(DetectionFormatError, match="needs a 'segmentation'"):
        evaluate_lvis(gt, detections_from_records([d]), 'segm')
    with pytest.raises(DetectionFormatError, match="needs a 'bbox'"):
        evaluate_lvis(gt, detections_from_records([{k: v for k, v in d2.items() if k != 'bbox'}], masks=True))


def test_detection_files_and_results_json_round_trip(tmp_path):
    gt = small_lvis()
    dets = make_detections(gt, 'segm', seed=9)
    assert any('\\' in r['segmentation']['counts'] for r in dets)  # json must escape some RLE strings
    d = detections_from_records(dets, masks=True)
    assert d.to_records() == dets
    paths = [tmp_path / 'eval' / 'rank0.dets', tmp_path / 'eval' / 'rank1.dets']
    with DetectionWriter(paths[0]) as w:
        w.write(d.select(slice(0, 10))); w.write(d.select(slice(10, 10))); w.write(d.select(slice(10, 100)))
    with DetectionWriter(paths[1]) as w: w.write(d.select(slice(100, None)))
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ['rank0.dets', 'rank1.dets']
    back = read_detections(paths)
    assert back.to_records() == dets and back.counts.dtype == object
    write_lvis_results(paths, tmp_path / 'results.json', chunk=7)
    assert json.loads((tmp_path / 'results.json').read_text()) == dets
    ref = evaluate_lvis(gt, dets, 'segm')
    for src in (d, paths, tmp_path / 'results.json', str(tmp_path / 'results.json')):
        assert evaluate_lvis(gt, src, 'segm') == ref
    assert evaluate_lvis(gt, paths, 'bbox') == evaluate_lvis(gt, [{k: v for k, v in r.items() if k != 'segmentation'}
                                                                  for r in dets], 'bbox')
    # a pass that fails leaves no file, and a batch without masks cannot join a file with masks
    with pytest.raises(RuntimeError):
        with DetectionWriter(tmp_path / 'crash.dets') as w:
            w.write(d.select(slice(0, 3))); raise RuntimeError('killed')
    assert not [p for p in tmp_path.iterdir() if 'crash' in p.name]
    w = DetectionWriter(tmp_path / 'mixed.dets'); w.write(d.select(slice(0, 3)))
    with pytest.raises(ValueError, match='masks'): w.write(d.without_masks())
    w.abort()
    (tmp_path / 'not.dets').write_bytes(b'xyz')
    with pytest.raises(DetectionFormatError, match='not a detection file'): read_detections(tmp_path / 'not.dets')
    with pytest.raises(FileNotFoundError, match='detection file not found'): read_detections(tmp_path / 'gone.dets')


def test_segm_without_boxes_and_other_max_dets_agree_with_lvis_api():
    gt = small_lvis(seed=4)
    dets = make_detections(gt, 'segm', seed=10)
    no_box = [{k: v for k, v in r.items() if k != 'bbox'} for r in dets]
    d = detections_from_records(no_box, masks=True)
    assert d.box_from_mask and 'bbox' not in d.to_records()[0]
    assert_agree(evaluate_lvis(gt, no_box, 'segm', 'hotcoco'), evaluate_lvis(gt, no_box, 'segm', 'lvis'))
    for k in (20, 500):
        assert_agree(evaluate_lvis(gt, dets, 'bbox', 'hotcoco', max_dets=k),
                     evaluate_lvis(gt, dets, 'bbox', 'lvis', max_dets=k))
    assert evaluate_lvis(gt, dets, 'bbox', max_dets=20)['AR'] < evaluate_lvis(gt, dets, 'bbox', max_dets=500)['AR']


def test_ground_truth_prepared_once():
    gt = small_lvis()
    prepared = LVISGroundTruth(gt)
    dets = make_detections(gt, 'segm', seed=11)
    for t in ('segm', 'bbox', 'segm'):
        assert evaluate_lvis(prepared, dets, t) == evaluate_lvis(gt, dets, t)
    assert prepared.records() is prepared.records()
    sub = prepared.subset([1, 2, 3])
    assert sorted(im['id'] for im in sub.data['images']) == [1, 2, 3]
    assert {a['image_id'] for a in sub.data['annotations']} <= {1, 2, 3}
    kept = [r for r in dets if r['image_id'] <= 3]
    assert evaluate_lvis(sub, kept, 'segm') == evaluate_lvis({**gt, 'images': gt['images'][:3],
        'annotations': [a for a in gt['annotations'] if a['image_id'] <= 3]}, kept, 'segm')


def test_ground_truth_file_read_by_orjson_named_as_the_file(tmp_path):
    "An annotation file parsed by orjson gives load_lvis's dict; its warnings, counts and errors still name the file."
    from gol_nb.data import LVISFormatError
    gt, p = small_lvis(), tmp_path / 'gt.json'
    p.write_text(json.dumps(gt))
    prepared = LVISGroundTruth(p)
    assert prepared.data == load_lvis(p) and prepared.data.source == str(p)
    shared = [dict(im, coco_url=gt['images'][0]['coco_url']) if im['id'] == 2 else im for im in gt['images']]
    p.write_text(json.dumps({**gt, 'images': shared}))
    with pytest.warns(UserWarning, match=f"{p}: images 1 and 2"): LVISGroundTruth(p)
    p.write_text(json.dumps({**gt, 'categories': [{'id': c['id'], 'name': c['name']} for c in gt['categories']]}))
    assert LVISGroundTruth(p).data.frequency_source == f"counted from the annotations of {p}"
    p.write_text('{"images": [}')
    with pytest.raises(LVISFormatError, match=f"{p}: not valid json"): LVISGroundTruth(p)


def test_columns_checked_and_named():
    gt = small_lvis(n_images=3)
    h, w = gt['images'][0]['height'], gt['images'][0]['width']
    rle = mu.encode(np.asfortranarray(np.ones((h, w), np.uint8)))
    n = 6
    d = Detections(np.ones(n), np.ones(n), np.full(n, .5), np.tile([0., 0., 4., 4.], (n, 1)),
                   np.tile([h, w], (n, 1)), [rle['counts']] * n)
    assert evaluate_lvis(gt, d, 'segm')['AP'] >= 0
    for field, change in [('image_id', lambda d: d.image_id.__setitem__(4, 77)),
                          ('category_id', lambda d: d.category_id.__setitem__(4, 4)),
                          ('score', lambda d: d.score.__setitem__(4, np.inf)),
                          ('bbox', lambda d: d.bbox.__setitem__((4, 2), -1.)),
                          ('segmentation', lambda d: d.mask_size.__setitem__((4, 0), h + 1))]:
        bad = d.select(slice(None)); bad.image_id, bad.category_id = bad.image_id.copy(), bad.category_id.copy()
        bad.score, bad.bbox, bad.mask_size = bad.score.copy(), bad.bbox.copy(), bad.mask_size.copy()
        change(bad)
        with pytest.raises(DetectionFormatError, match=rf"detections\[4\]: field '{field}'"):
            evaluate_lvis(gt, bad, 'segm')
    with pytest.raises(ValueError, match='Detections.score'):
        Detections(np.ones(3), np.ones(3), np.ones(2), np.zeros((3, 4)))


def test_results_json_read_in_pieces_equals_one_go(tmp_path, monkeypatch):
    "A large results json is parsed a piece at a time; pieces cut anywhere odd fall back to the whole file."
    import gol_nb.evaluate.files as ev  # JSON_PIECE, the piece size, is a global of the files module
    gt = small_lvis()
    dets = make_detections(gt, 'segm', seed=12)
    dets[3]['note'] = 'a string with }, { inside'  # a '}, {' gap that is no record boundary
    p = tmp_path / 'dets.json'; p.write_text(json.dumps(dets))
    whole = ev.load_detections(p)
    monkeypatch.setattr(ev, 'JSON_PIECE', 300)  # a few records a piece
    assert len(list(ev._json_pieces(p.read_bytes(), 1, 300))) > 10
    pieced = ev.load_detections(p)
    assert pieced.to_records() == whole.to_records() == detections_from_records(dets, masks=True).to_records()
    clean = [{k: v for k, v in r.items() if k != 'note'} for r in dets]
    p.write_text(json.dumps(clean))
    assert ev._pieces_to_detections(p.read_bytes(), True) is not None  # the pieced path itself is taken
    assert evaluate_lvis(gt, p, 'segm') == evaluate_lvis(gt, clean, 'segm')
    # a bad record far into the file is named by its index in the whole file
    clean[40]['score'] = 'high'
    p.write_text(json.dumps(clean))
    with pytest.raises(DetectionFormatError, match=r"detections\[40\]: field 'score'"): evaluate_lvis(gt, p, 'segm')
    # mask results with boxes in some pieces only: refused as in one go
    mixed = [dict(r) for r in dets[:30]] + [{k: v for k, v in r.items() if k != 'bbox'} for r in dets[30:60]]
    p.write_text(json.dumps(mixed))
    with pytest.raises(DetectionFormatError, match='give it to all or none'): evaluate_lvis(gt, p, 'segm')


def test_large_results_json_read_in_pieces_by_default(tmp_path):
    "A results json over JSON_PIECE is read a piece at a time: the records' Detections and figures; a bad record named."
    import gol_nb.evaluate.files as ev
    gt = small_lvis()
    dets = make_detections(gt, 'bbox', seed=13)
    recs = dets * (ev.JSON_PIECE // len(json.dumps(dets)) + 2)  # repeated past one piece
    p = tmp_path / 'dets.json'; p.write_text(json.dumps(recs))
    assert p.stat().st_size > ev.JSON_PIECE and len(list(ev._json_pieces(p.read_bytes(), 1, ev.JSON_PIECE))) > 1
    assert ev.load_detections(p, masks=False).to_records() == detections_from_records(recs).to_records()
    assert evaluate_lvis(gt, p) == evaluate_lvis(gt, recs)
    bad = [dict(r) for r in recs]; bad[-3]['score'] = 'x'
    p.write_text(json.dumps(bad))
    with pytest.raises(DetectionFormatError, match=rf"detections\[{len(bad) - 3}\]: field 'score' must be a finite"):
        ev.load_detections(p, masks=False)


@pytest.mark.parametrize('bad, field', [({'image_id': True}, "'image_id'"), ({'score': False}, "'score'"),
                                        ({'bbox': [0, 0, True, 4]}, "'bbox'"), ({'category_id': 1.0}, "'category_id'")])
def test_column_type_checks_name_the_record(bad, field, tmp_path):
    "Types are checked a column at a time: a bool or a float id still sends the reading record by record."
    gt = small_lvis(n_images=3)
    dets = [{'image_id': 1, 'category_id': 1, 'bbox': [0., 0., 4., 4.], 'score': .5} for _ in range(3)]
    dets[1] = {**dets[1], **bad}
    p = tmp_path / 'd.json'; p.write_text(json.dumps(dets))
    for src in (dets, p):
        with pytest.raises(DetectionFormatError, match=rf"detections\[1\]: field {field}"): evaluate_lvis(gt, src)
    p.write_text(json.dumps(dets[:1])[:-1] + ', {"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "score": NaN}]')
    with pytest.raises(DetectionFormatError, match=r"detections\[1\]: field 'score' must be a finite number"):
        evaluate_lvis(gt, p)  # NaN is no json (orjson refuses it); Python's json reads it, and the check names it


def one_class_gt():
    imgs = [{'id': i, 'height': 100, 'width': 100, 'file_name': f'{i}.jpg'} for i in (1, 2, 3)]
    anns = [{'id': i, 'image_id': i, 'category_id': 1, 'bbox': [10., 10., 40., 40.], 'area': 1600.,
             'segmentation': [[10., 10., 50., 10., 50., 50., 10., 50.]]} for i in (1, 2, 3)]
    return {'images': imgs, 'annotations': anns, 'categories': [{'id': 1, 'name': 'a', 'frequency': 'f'}]}


@pytest.mark.parametrize('backend', ['hotcoco', 'lvis'])
def test_fixed_ap_by_hand(backend):
    "Hit .9, miss .8, hit .3, hit .2 of one class over three images: the 101-point APs worked out by hand."
    hit, miss = [10., 10., 40., 40.], [60., 60., 30., 30.]
    dets = [{'image_id': i, 'category_id': 1, 'bbox': b, 'score': s}
            for i, b, s in [(1, hit, .9), (2, miss, .8), (2, hit, .3), (3, hit, .2)]]
    ap = lambda **kw: evaluate_lvis(one_class_gt(), dets, backend=backend, **kw)['AP']
    assert ap() == pytest.approx((34 + 67 * .75) / 101, abs=1e-9)  # precision 1, 2/3, 3/4 -> interpolated 1, 3/4, 3/4
    assert ap(protocol='fixed', dets_per_class=2) == pytest.approx(34 / 101, abs=1e-9)  # budget: the hit and the miss
    assert ap(max_dets=1) == pytest.approx((34 + 33 * 2 / 3) / 101, abs=1e-9)  # image 2 keeps its miss only
    assert ap(protocol='fixed') == pytest.approx((34 + 67 * .75) / 101, abs=1e-9)  # no per-image cap
    with pytest.raises(ValueError, match='protocol must be one of'): ap(protocol='pooled')
    with pytest.raises(ValueError, match='dets_per_class must be an integer >= 1'):
        ap(protocol='fixed', dets_per_class=0)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_fixed_ap_equals_lvis_api_run_as_its_authors_do():
    "Fixed AP = lvis-api on the top K detections of each class (stable sort by score), without a per-image cap."
    from collections import defaultdict
    from lvis import LVIS, LVISEval, LVISResults
    gt = small_lvis(seed=5)
    dets = make_detections(gt, 'bbox', seed=13)
    k = 25
    by_cat = defaultdict(list)
    for r in dets: by_cat[r['category_id']].append(r)
    assert max(map(len, by_cat.values())) > k and max(np.bincount([r['image_id'] for r in dets])) > 300
    kept = [r for v in by_cat.values() for r in sorted(v, key=lambda r: r['score'], reverse=True)[:k]]
    lv = LVIS.__new__(LVIS)
    import logging
    lv.logger, lv.dataset = logging.getLogger('lvis.lvis'), json.loads(json.dumps(gt))
    with numpy_aliases():
        lv._create_index()
        ev = LVISEval(lv, LVISResults(lv, json.loads(json.dumps(kept)), max_dets=-1), 'bbox')
        ev.params.max_dets = -1
        ev.run()
    for be in ('hotcoco', 'lvis'):
        ours = evaluate_lvis(gt, dets, 'bbox', be, protocol='fixed', dets_per_class=k)
        for m in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'APr', 'APc', 'APf'):
            assert abs(ours[m] - ev.results[m]) < 1e-9, (be, m)
    assert ours['AP'] != evaluate_lvis(gt, dets, 'bbox')['AP']  # the protocols differ on this set


def small_coco(seed=0, n_images=10):
    "A COCO-format dict: 4 classes, polygon objects, one crowd region (uncompressed RLE), images without some classes."
    rng = np.random.default_rng(seed)
    cats = [{'id': c, 'name': f'c{c}', 'supercategory': 'x'} for c in (1, 2, 4, 7)]
    imgs, anns = [], []
    for i in range(1, n_images + 1):
        h, w = int(rng.integers(120, 240)), int(rng.integers(120, 240))
        imgs.append({'id': i, 'height': h, 'width': w, 'file_name': f'{i:012d}.jpg'})
        for _ in range(int(rng.integers(1, 7))):
            c = int(rng.choice([1, 1, 2, 4, 7]))
            bw, bh = float(rng.uniform(6, w / 2)), float(rng.uniform(6, h / 2))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            poly = [x, y, x + bw, y, x + bw * .7, y + bh, x, y + bh * .8]
            rle = mu.merge(mu.frPyObjects([poly], h, w))
            anns.append({'id': len(anns) + 1, 'image_id': i, 'category_id': c, 'bbox': [x, y, bw, bh],
                         'area': float(mu.area(rle)), 'segmentation': [poly], 'iscrowd': 0})
    m = np.zeros((imgs[0]['height'], imgs[0]['width']), np.uint8); m[5:60, 5:80] = 1
    crowd = mu.encode(np.asfortranarray(m))
    flat = m.ravel(order='F')
    runs = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()  # uncompressed RLE, zeros first
    anns.append({'id': len(anns) + 1, 'image_id': 1, 'category_id': 1, 'bbox': [5., 5., 75., 55.],
                 'area': float(mu.area(crowd)), 'segmentation': {'size': list(m.shape), 'counts': runs}, 'iscrowd': 1})
    return {'images': imgs, 'annotations': anns, 'categories': cats}


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_coco_mode_equals_pycocotools(iou_type, tmp_path):
    "COCO's rules (hotcoco's COCO mode) on a COCO-format file: the figures of pycocotools' COCOeval."
    import contextlib, io
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from gol_nb.evaluate import COCO_METRICS, evaluate_coco
    gt = small_coco()
    dets = make_detections({**gt, 'images': [{**im, 'neg_category_ids': []} for im in gt['images']]}, iou_type,
                           seed=3, crowded_image=False)
    dets += [{'image_id': 1, 'category_id': 1, 'bbox': [6., 6., 30., 30.], 'score': .99}]  # inside the crowd
    if iou_type == 'segm':
        im = gt['images'][0]
        rle = mu.frPyObjects([[6., 6., 36., 6., 36., 36., 6., 36.]], im['height'], im['width'])
        dets[-1]['segmentation'] = {'size': rle[0]['size'], 'counts': rle[0]['counts'].decode()}
    gp, dp = tmp_path / 'coco.json', tmp_path / 'dets.json'
    gp.write_text(json.dumps(gt)); dp.write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO(str(gp)); ev = COCOeval(g, g.loadRes(str(dp)), iou_type)
        ev.evaluate(); ev.accumulate(); ev.summarize()
    ours = evaluate_coco(gp, dp, iou_type)
    assert list(ours) == list(COCO_METRICS)
    np.testing.assert_allclose([ours[k] for k in COCO_METRICS], ev.stats, atol=1e-9)
    assert 0 < ours['AP'] < 1 and ours['APs'] > -1


def test_fractal_dimensions_by_hand():
    "Centres in the four quadrants: 1 cell at d=1, 4 at d=2, slope 2; on a diagonal: 1 then 2, slope 1; 3 objects: 1."
    from gol_nb.evaluate import fractal_dimensions
    centres = {1: [(.25, .25), (.75, .25), (.25, .75), (.75, .75)], 2: [(.1, .1), (.3, .3), (.6, .6), (.9, .9)],
               3: [(.5, .5)] * 3}
    anns = []
    for c, pts in centres.items():
        for x, y in pts:  # a 2 x 2 box around the centre, in a 100 x 200 image
            x0, y0 = x * 100 - 1, y * 200 - 1
            anns.append({'id': len(anns) + 1, 'image_id': 1, 'category_id': c, 'bbox': [x0, y0, 2., 2.], 'area': 4.,
                         'segmentation': [[x0, y0, x0 + 2, y0, x0 + 2, y0 + 2]]})
    gt = {'images': [{'id': 1, 'height': 200, 'width': 100, 'file_name': '1.jpg'}], 'annotations': anns,
          'categories': [{'id': c, 'name': str(c)} for c in (3, 1, 2)]}
    np.testing.assert_allclose(fractal_dimensions(gt), [2., 1., 1.], atol=1e-12)  # sorted ids 1, 2, 3


def test_calibration_formula_monotone_per_class_and_errors():
    from gol_nb.data import ClassStatistics
    from gol_nb.evaluate import calibrate_detections, calibration_offsets
    stats = ClassStatistics(np.array([1, 2, 3, 5, 8, 9]), np.array([900, 300, 40, 12, 3, 0]), 1000, list('ffccrr'))
    phi = np.array([2., 1.9, 1.5, 1.2, 1., 1.])
    off = calibration_offsets(stats, phi, lam=2.)
    C = 6
    w = -np.log10(C * np.array([900, 300, 40, 12, 3, 1]) / 1000)  # an unseen class counts as seen in one image
    f = -np.log10(C * phi ** 2 / (phi ** 2).sum())
    np.testing.assert_allclose(off, w + f, rtol=1e-12)
    assert np.all(np.diff(calibration_offsets(stats)) > 0)  # rarer class, larger offset
    d = Detections([1, 1, 2], [1, 8, 8], [.7, .2, .9], np.zeros((3, 4)))
    g = calibrate_detections(d, stats, 'gumbel', phi)
    G = lambda x: np.exp(-np.exp(-x))
    z = -np.log(-np.log(d.score))
    np.testing.assert_allclose(g.score, G(z) * G(z + off[[0, 4, 4]]), rtol=1e-12)
    assert d.score.tolist() == [.7, .2, .9]  # the input is not modified
    # increasing in the score within a class: each class's AP is unchanged (the per-image cap aside)
    gt = small_lvis(seed=6)
    dets = make_detections(gt, 'bbox', seed=14, crowded_image=False)
    cal = calibrate_detections(detections_from_records(dets), stats, 'sigmoid', phi)
    assert not np.allclose(cal.score, detections_from_records(dets).score)
    assert_agree(evaluate_lvis(gt, dets), evaluate_lvis(gt, cal), tol=1e-12)
    with pytest.raises(ValueError, match='softmax score cannot be rescored'): calibrate_detections(d, stats, 'softmax')
    with pytest.raises(DetectionFormatError, match=r"detections\[1\]: field 'category_id' is not a class"):
        calibrate_detections(Detections([1, 1], [1, 4], [.5, .5], np.zeros((2, 4))), stats)


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_zero_area_box_scored_as_lvis_api_does(iou_type):
    "A zero-width or zero-height box: lvis-api never fetches it (area > 0); hotcoco counted it a false positive."
    gt = small_lvis(n_images=3, seed=3)
    dets = make_detections(gt, iou_type, seed=15, crowded_image=False)
    a = gt['annotations'][0]
    for box in ([a['bbox'][0], a['bbox'][1], 0., a['bbox'][3]], [5., 5., 4., 0.]):
        extra = dict(dets[0], image_id=a['image_id'], category_id=a['category_id'], bbox=box, score=.99)
        h, l = (evaluate_lvis(gt, dets + [extra], iou_type, be) for be in ('hotcoco', 'lvis'))
        assert_agree(h, l)
        assert_agree(h, evaluate_lvis(gt, dets, iou_type))  # as if it were not there
    # it still takes its place under the per-image cap, as in lvis-api
    n1 = sum(r['image_id'] == a['image_id'] for r in dets)
    assert_agree(evaluate_lvis(gt, dets + [extra], iou_type, 'hotcoco', max_dets=n1),
                 evaluate_lvis(gt, dets + [extra], iou_type, 'lvis', max_dets=n1))


@pytest.mark.timeout(120)
@pytest.mark.parametrize('counts, why', [('PP', 'ends in the middle of a number'), ('P' * 7 + '0', 'longer than 6'),
                                         ('12' * 30, 'runs sum to'), ('@', 'negative run length'),
                                         ('\u00e9\u00e9', "outside '0'..'o'")])
def test_bad_compressed_rle_refused_before_any_backend(counts, why, tmp_path):
    gt = small_lvis(n_images=3)
    h, w = gt['images'][1]['height'], gt['images'][1]['width']
    dets = make_detections(gt, 'segm', seed=16, crowded_image=False)[:5]
    dets[3] = dict(dets[3], image_id=2, segmentation={'size': [h, w], 'counts': counts})
    decoded = why in ('runs sum to', 'negative run length')  # found by decoding: before lvis-api only
    for be in ('lvis',) if decoded else ('hotcoco', 'lvis'):  # hotcoco decodes (and checks) them itself
        with pytest.raises(DetectionFormatError, match=rf"detections\[3\]: field 'segmentation' compressed RLE .*{why}"
                          ):
            evaluate_lvis(gt, dets, 'segm', be)
    p = tmp_path / 'd.json'; p.write_text(json.dumps(dets))
    with pytest.raises(DetectionFormatError, match=r"detections\[3\]: field 'segmentation'"):
        evaluate_lvis(gt, p, 'segm', 'lvis')


def test_rle_check_agrees_with_the_full_decoder():
    "The evaluator's quick check of compressed RLE flags exactly the strings the data module's decoder rejects."
    from gol_nb.data.lvis import _decode_rle_strings
    from gol_nb.evaluate import _rle_counts_problem
    rng = np.random.default_rng(0)
    h, w = 37, 41
    good = [mu.encode(np.asfortranarray(rng.random((h, w)) < p))['counts'] for p in rng.random(40)]
    good += [mu.encode(np.asfortranarray(np.zeros((h, w), np.uint8)))['counts'],
             mu.encode(np.asfortranarray(np.ones((h, w), np.uint8)))['counts']]
    strs = list(good)
    for s in good[:30]:  # mutated copies: a changed, dropped or added character
        b = bytearray(s); k = int(rng.integers(len(b)))
        op = rng.integers(3)
        if op == 0: b[k] = int(rng.integers(48, 112))
        elif op == 1: del b[k]
        else: b.insert(k, int(rng.integers(48, 112)))
        strs.append(bytes(b))
    strs += [b'PP', b'@', b'', b'P' * 7 + b'0', b'12' * 30]
    area = np.full(len(strs), h * w, np.float64)
    runs, owner, why = _decode_rle_strings(strs)
    neg = np.bincount(owner[runs < 0], minlength=len(strs)) > 0
    tot = np.bincount(owner, runs.astype(np.float64), minlength=len(strs))
    ref = [bool(why[i] or neg[i] or tot[i] != area[i]) for i in range(len(strs))]
    assert not any(ref[:len(good)]) and sum(ref) > 10
    ours = [_rle_counts_problem([s], area[:1]) is not None for s in strs]
    assert ours == ref
    first = _rle_counts_problem(strs, area)
    assert first is not None and first[0] == ref.index(True)


def test_rle_syntax_check_of_a_few_short_strings():
    "Under six characters in all (a chunk of tiny masks) the syntax check still answers instead of crashing."
    from gol_nb.evaluate.checks import _rle_syntax_problem
    assert _rle_syntax_problem([b'1', b'2']) is None
    assert _rle_syntax_problem([b'0', b'P']) == (1, 'ends in the middle of a number (truncated)')
    assert _rle_syntax_problem([b'0', b'ooooooo1']) == (1, 'holds a number longer than 6 characters')
