"gol_nb.evidence: LVIS AP under image weights equals gol_nb.evaluate's, known bootstrap cases, verdict rules."
import json
import numpy as np
import pytest
from pycocotools import mask as mu

from gol_nb.data import find_shared_file, load_lvis
from gol_nb.evaluate import evaluate_lvis
from gol_nb.evidence import (REC_THRS, Matching, class_ap, compare_rows, lvis_ap, match_detections, paired_interval,
                             resample_weights, verdict)
from test_evaluate import make_detections, small_lvis

REAL = find_shared_file('lvis_val_100.json')
GROUPS = ('AP', 'APr', 'APc', 'APf')


def same(a, b, tol=1e-6):
    "Equal within tol, -1 (lvis: undefined) and NaN (here: undefined) counting as equal."
    return (np.isnan(a) and b == -1) or abs(a - b) <= tol


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_unit_weights_give_lvis_ap(iou_type, seed):
    gt = small_lvis(seed, 20)
    dets = make_detections(gt, iou_type, seed)
    m = match_detections(gt, dets, iou_type)
    mine = lvis_ap(m, np.ones(len(m.image_ids)))
    for backend in ('lvis', 'hotcoco'):
        ref = evaluate_lvis(gt, dets, iou_type, backend)
        assert all(same(float(mine[k]), ref[k]) for k in GROUPS), (backend, mine, ref)


@pytest.mark.skipif(REAL is None, reason='shared/data/lvis_val_100.json not found')
def test_unit_weights_give_lvis_ap_on_real_lvis():
    gt = load_lvis(REAL)
    for iou_type in ('bbox', 'segm'):
        dets = make_detections(gt, iou_type, 0)
        mine = lvis_ap(match_detections(gt, dets, iou_type), np.ones(len(gt['images'])))
        ref = evaluate_lvis(gt, dets, iou_type, 'hotcoco')
        assert all(same(float(mine[k]), ref[k]) for k in GROUPS), (mine, ref)


def duplicated(gt, dets, w):
    "The set with image i present w[i] times (copies side by side, new ids), its detections copied along."
    ims = sorted(gt['images'], key=lambda im: im['id'])
    images, anns, out = [], [], []
    for im, k in zip(ims, w):
        for _ in range(int(k)):
            nid = len(images) + 1
            images.append(dict(im, id=nid))
            anns += [dict(a, id=len(anns) + 1 + j, image_id=nid)
                     for j, a in enumerate(a for a in gt['annotations'] if a['image_id'] == im['id'])]
            out += [dict(d, image_id=nid) for d in dets if d['image_id'] == im['id']]
    return dict(gt, images=images, annotations=anns), out


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_weights_are_image_multiplicities(iou_type):
    "AP with integer weights equals lvis-api's AP on the set where each image is repeated that many times."
    rng = np.random.default_rng(3)
    gt = small_lvis(4, 10)
    dets = make_detections(gt, iou_type, 4)
    m = match_detections(gt, dets, iou_type)
    for _ in range(3):
        w = rng.integers(0, 3, len(m.image_ids))
        mine = lvis_ap(m, w)
        ref = evaluate_lvis(*duplicated(gt, dets, w), iou_type, 'lvis')
        assert all(same(float(mine[k]), ref[k], 1e-9) for k in GROUPS), (w, mine, ref)


def one_class_gt(n_images, boxes_per_image=1):
    poly = lambda x: [[x, x, x + 30, x, x + 30, x + 30, x, x + 30]]
    xs = [10., 55.][:boxes_per_image]
    return {'categories': [{'id': 1, 'name': 'a', 'frequency': 'r'}],
            'images': [{'id': i, 'height': 100, 'width': 100, 'file_name': f'{i}.jpg', 'neg_category_ids': [],
                        'not_exhaustive_category_ids': []} for i in range(1, n_images + 1)],
            'annotations': [{'id': 10 * i + j, 'image_id': i, 'category_id': 1, 'bbox': [x, x, 30., 30.],
                             'area': 900., 'segmentation': poly(x)}
                            for i in range(1, n_images + 1) for j, x in enumerate(xs)]}


def test_every_resample_of_a_two_image_case():
    "Image 1: a hit (score 0.9); image 2: a miss (0.8). Counted a and b times, AP = #{r <= a/(a+b)}/101."
    gt = one_class_gt(2)
    dets = [{'image_id': 1, 'category_id': 1, 'score': 0.9, 'bbox': [10., 10., 30., 30.]},
            {'image_id': 2, 'category_id': 1, 'score': 0.8, 'bbox': [60., 60., 30., 30.]}]
    m = match_detections(gt, dets, 'bbox')
    w = resample_weights(2, 2000, seed=5)
    ap = lvis_ap(m, w)['AP']
    expected = [0. if a == 0 else (REC_THRS <= a / (a + b) + 1e-12).sum() / 101 for a, b in w]
    np.testing.assert_allclose(ap, expected, atol=1e-12)
    freq = {v: np.mean(np.isclose(ap, v)) for v in (0., 51 / 101, 1.)}  # resamples (0,2), (1,1), (2,0)
    assert abs(freq[0.] - .25) < .04 and abs(freq[51 / 101] - .5) < .04 and abs(freq[1.] - .25) < .04, freq


def runs_of(gt, dets, iou_type='bbox'):
    return {'segm': match_detections(gt, dets, iou_type), 'bbox': match_detections(gt, dets, iou_type)}


def test_identical_rows_give_zero_and_extra_true_positives_exclude_zero():
    gt = small_lvis(1, 30)
    base = make_detections(gt, 'bbox', 1)
    extra = [{'image_id': a['image_id'], 'category_id': a['category_id'], 'score': 1.0, 'bbox': a['bbox']}
             for a in gt['annotations']]
    c = compare_rows({'base': [runs_of(gt, base)], 'twin': [runs_of(gt, base)], 'better': [runs_of(gt, base + extra)]},
                     {'base': 'base', 'twin': 'base', 'better': 'base'}, resamples=1000)
    assert c.loc['twin', ['dAP', 'dAP_lo', 'dAP_hi', 'dAPb_lo', 'dAPb_hi']].tolist() == [0.] * 5
    assert c.at['better', 'dAP_lo'] > 0 and c.at['better', 'dAPb_lo'] > 0, c
    assert c.at['better', 'dAP_lo'] <= c.at['better', 'dAP'] <= c.at['better', 'dAP_hi']
    assert c.at['base', 'dAP_resamples'] == 1000


def test_seeds_averaged_within_each_resample():
    "Two seeds of a row: its curve per resample is their mean; drawing the seeds too widens the interval."
    rng = np.random.default_rng(0)
    base = rng.random((1, 2000))
    row = base + np.array([[0.0], [0.2]])  # seed 0 equals the baseline, seed 1 is 0.2 better on every resample
    lo, hi, n = paired_interval(row, base)
    assert (lo, hi, n) == pytest.approx((0.1, 0.1, 2000))
    lo, hi, _ = paired_interval(row, base, seeds='resample')
    assert lo == pytest.approx(0.) and hi == pytest.approx(0.2)


def test_undefined_resamples_left_out_and_counted():
    row, base = np.array([[1., np.nan, 3.]]), np.array([[0., 0., 0.]])
    assert paired_interval(row, base, level=0.5) == pytest.approx((1.5, 2.5, 2))
    assert paired_interval(np.full((1, 3), np.nan), base)[2] == 0


def test_matching_save_load_and_other_validation_sets_refused(tmp_path):
    gt = small_lvis(2, 8)
    m = match_detections(gt, make_detections(gt, 'segm', 2), 'segm')
    m.save(tmp_path / 'm.npz')
    m2 = Matching.load(tmp_path / 'm.npz')
    assert m2.iou_type == 'segm' and all(np.array_equal(getattr(m, k), getattr(m2, k))
                                         for k in ('tp', 'fp', 'det_image', 'gt_count', 'class_start'))
    (tmp_path / 'bad.npz').write_bytes(b'not a zip')
    with pytest.raises(Exception): Matching.load(tmp_path / 'bad.npz')
    other = small_lvis(2, 7)
    m3 = match_detections(other, make_detections(other, 'segm', 2), 'segm')
    with pytest.raises(ValueError, match='other images'):
        compare_rows({'a': [{'segm': m}], 'b': [{'segm': m3}]}, {'a': 'a', 'b': 'a'}, resamples=10)
    with pytest.raises(ValueError, match=r'weights: expected shape'): class_ap(m, np.ones(3))


@pytest.mark.parametrize('lo,hi,paper,expected', [
    (0.2, 1.5, 3.8, 'reproduced'), (-1.5, -0.2, 3.8, 'contradicted'), (-0.2, 1.5, 3.8, 'inconclusive'),
    (-2., -1., -0.5, 'reproduced'), (1., 2., -0.5, 'contradicted'), (0., 1., 2., 'inconclusive'),
    (-1., 1., float('nan'), 'no paper figure'), (-1., 1., None, 'no paper figure'),
    (-1., 1., 0., 'reproduced'), (0.5, 1., 0., 'contradicted'), (float('nan'), float('nan'), 1., 'inconclusive')])
def test_verdict_rules(lo, hi, paper, expected):
    assert verdict(lo, hi, paper) == expected
