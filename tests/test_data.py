"Tests of gol_nb.data: LVIS loading and validation, class statistics, repeat factors, the sampler, the dataset, the synthetic set."
import hashlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from gol_nb.data import (LVISDetection, LVISFormatError, RepeatFactorSampler, class_statistics, decode_segmentation,
                         detection_collate, find_shared_file, load_lvis, repeat_factors)
from gol_nb.data.lvis import tiny_lvis
from gol_nb.data.synthetic import make_synthetic_lvis


# ---------------------------------------------------------------- load_lvis: errors name file, record, field
def _write(tmp_path, d, name='bad.json'):
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


BROKEN = [  # (change to tiny_lvis(), expected fragments of the message)
    (lambda d: d['annotations'][1].update(category_id=99), ['annotations[1] (id=2)', "'category_id'", '99']),
    (lambda d: d['annotations'][2].update(bbox=[1, 2, 0, 3]), ['annotations[2] (id=3)', "'bbox'", 'degenerate']),
    (lambda d: d['annotations'][2].update(bbox=[1, 2, 3, -1]), ['annotations[2] (id=3)', "'bbox'", 'degenerate']),
    (lambda d: d['annotations'][0].update(bbox=[1, 2, 3]), ['annotations[0] (id=1)', "'bbox'", '4 finite numbers']),
    (lambda d: d['annotations'][0].update(bbox=[1, 2, float('nan'), 3]), ['annotations[0] (id=1)', "'bbox'"]),
    (lambda d: d['annotations'][1].pop('bbox'), ['annotations[1] (id=2)', "'bbox'"]),
    (lambda d: d['annotations'][1].pop('segmentation'), ['annotations[1] (id=2)', "'segmentation'"]),
    (lambda d: d['annotations'][1].update(segmentation=[[1, 2, 3, 4]]), ['annotations[1] (id=2)', "'segmentation'", '3 points']),
    (lambda d: d['annotations'][1].update(segmentation={'counts': 'abc'}), ['annotations[1] (id=2)', "'segmentation'", 'size']),
    (lambda d: d['annotations'][0].update(image_id=777), ['annotations[0] (id=1)', "'image_id'", '777']),
    (lambda d: d['annotations'][0].update(id='a'), ['annotations[0] (id=a)', "'id'", 'integer']),
    (lambda d: d['annotations'][2].update(id=1), ['annotations[2] (id=1)', "'id'", 'duplicates annotations[0]']),
    (lambda d: d['images'][0].pop('coco_url'), ['images[0] (id=1)', "'file_name'", 'coco_url']),
    (lambda d: d['images'][1].update(height=0), ['images[1] (id=2)', "'height'"]),
    (lambda d: d['images'][1].update(id=1), ['images[1] (id=1)', "'id'", 'duplicates images[0]']),
    (lambda d: d['images'][2].update(neg_category_ids=[1, 42]), ['images[2] (id=3)', "'neg_category_ids'", '42']),
    (lambda d: d['images'][2].update(not_exhaustive_category_ids=5), ['images[2] (id=3)', "'not_exhaustive_category_ids'"]),
    (lambda d: d['categories'][1].update(frequency='x'), ['categories[1] (id=2)', "'frequency'"]),
    (lambda d: d['categories'][1].update(id=1), ['categories[1] (id=1)', "'id'", 'duplicates']),
    (lambda d: d['categories'][0].pop('name'), ['categories[0] (id=1)', "'name'"]),
    (lambda d: d.pop('annotations'), ['top level', "'annotations'", 'list']),
]


@pytest.mark.parametrize('change,fragments', BROKEN)
def test_load_lvis_errors_name_file_record_field(tmp_path, change, fragments):
    d = tiny_lvis(3, 2)
    change(d)
    p = _write(tmp_path, d)
    with pytest.raises(LVISFormatError) as e:
        load_lvis(p)
    msg = str(e.value)
    assert str(p) in msg, msg
    for f in fragments: assert f in msg, msg
    assert isinstance(e.value, ValueError)


def test_load_lvis_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.json'): load_lvis(tmp_path / 'nope.json')
    p = tmp_path / 'trunc.json'
    p.write_text('{"images": [')
    with pytest.raises(LVISFormatError, match='trunc.json'): load_lvis(p)
    with pytest.raises(LVISFormatError, match='top level'): load_lvis(_write(tmp_path, [1, 2]))


def test_load_lvis_v05_and_v1_names_and_no_mutation(tmp_path):
    d = tiny_lvis(2, 2)
    d['images'][0].pop('coco_url')
    d['images'][0]['file_name'] = 'COCO_val2014_000000000001.jpg'  # v0.5 style
    lv = load_lvis(_write(tmp_path, d, 'ok.json'))
    assert lv.source.endswith('ok.json')
    assert load_lvis(lv) is lv
    from gol_nb.data import image_file_name
    assert [image_file_name(im) for im in lv['images']] == ['000000000001.jpg', '000000000002.jpg']
    lv2 = load_lvis(d)
    assert 'frequency' not in d['categories'][0] and lv2['categories'][0]['frequency'] == 'r'


def test_frequency_groups_recomputed_from_image_counts():
    # class k+1 is in n_k images; thresholds: rare <= 10 < common <= 100 < frequent
    ns = [1, 10, 11, 100, 101]
    d = tiny_lvis(sum(ns), len(ns))
    labels = np.repeat(np.arange(1, len(ns) + 1), ns)
    for a, c in zip(d['annotations'], labels): a['category_id'] = int(c)
    d['annotations'].append(dict(d['annotations'][0], id=10_000))  # a second box in an image: still one image
    lv = load_lvis(d)
    assert [c['frequency'] for c in lv['categories']] == list('rrccf')
    assert [c['image_count'] for c in lv['categories']] == ns
    st = class_statistics(d)
    assert st.image_counts.tolist() == ns and st.image_counts.dtype == np.int64
    assert st.frequency == list('rrccf') and st.num_images == sum(ns)


def test_class_statistics_sorted_ids_and_official_frequency():
    d = tiny_lvis(4, 3)
    for c, new in zip(d['categories'], (30, 10, 20)): c['id'] = new
    for a, c in zip(d['annotations'], (30, 10, 20, 30)): a['category_id'] = c
    for c, f in zip(d['categories'], 'fcr'): c['frequency'] = f
    st = class_statistics(d)
    assert st.category_ids.tolist() == [10, 20, 30]
    assert st.image_counts.tolist() == [1, 1, 2]
    assert st.frequency == ['c', 'r', 'f']  # the file's groups, in sorted id order
    assert class_statistics(d, recompute_frequency=True).frequency == ['r', 'r', 'r']
    assert st.group('f').tolist() == [2]


def test_real_lvis_val_100():
    p = find_shared_file('lvis_val_100.json')
    if p is None: pytest.skip('lvis_val_100.json not available')
    lv = load_lvis(p)
    st = class_statistics(lv)
    assert len(st.category_ids) == 1230 and st.num_images == 100
    assert (np.diff(st.category_ids) > 0).all()
    by_id = {c['id']: c for c in lv['categories']}
    assert st.image_counts.tolist() == [by_id[int(i)]['image_count'] for i in st.category_ids]
    assert {f: st.frequency.count(f) for f in 'rcf'} == {'r': 454, 'c': 461, 'f': 315}
    rf = repeat_factors(lv)
    assert len(rf) == 100 and min(rf.values()) >= 1.0


# ---------------------------------------------------------------- repeat factors
def _brute_repeat_factors(d, t):
    imgs = {}
    for a in d['annotations']: imgs.setdefault(a['category_id'], set()).add(a['image_id'])
    n = len(d['images'])
    r_c = {c: max(1.0, math.sqrt(t / (len(s) / n))) for c, s in imgs.items()}
    out = {im['id']: 1.0 for im in d['images']}
    for a in d['annotations']: out[a['image_id']] = max(out[a['image_id']], r_c[a['category_id']])
    return out


def test_repeat_factors_match_definition():
    rng = np.random.default_rng(0)
    d = tiny_lvis(300, 20)
    d['images'] = [dict(im, id=im['id'] * 7 + 3) for im in d['images']]  # sparse ids
    anns = []
    for k in range(900):
        c = int(min(rng.zipf(1.6), 20))
        anns.append(dict(d['annotations'][0], id=k + 1, image_id=int(rng.integers(1, 280)) * 7 + 3, category_id=c))
    d['annotations'] = anns
    for t in (0.001, 0.05, 0.3):
        rf = repeat_factors(d, thresh=t)
        ref = _brute_repeat_factors(d, t)
        assert rf.keys() == ref.keys()
        np.testing.assert_allclose([rf[k] for k in ref], list(ref.values()), rtol=1e-12)
    assert repeat_factors(d, 0.3)[300 * 7 + 3] == 1.0  # image without annotations
    assert max(repeat_factors(d, 0.3).values()) > 1.5


# ---------------------------------------------------------------- sampler
def test_sampler_mmdet_counts_and_epochs():
    f = [1.0, 1.01, 2.0, 2.5, 0.2]
    s = RepeatFactorSampler(f, rule='mmdet', seed=3)
    assert np.bincount(list(s), minlength=5).tolist() == [1, 2, 2, 3, 1]
    s.set_epoch(0); a = list(s); s.set_epoch(0); b = list(s); s.set_epoch(1); c = list(s)
    assert a == b and a != c and sorted(a) == sorted(c)
    assert list(RepeatFactorSampler(f, rule='mmdet', seed=3)) == a  # determinism across instances
    assert list(RepeatFactorSampler(f, rule='mmdet', shuffle=False)) == [0, 1, 1, 2, 2, 3, 3, 3, 4]


def test_sampler_detectron2_stochastic_rounding():
    f = np.array([1.0, 1.3, 2.75, 0.5])
    s = RepeatFactorSampler(f, rule='detectron2', seed=1)
    counts = []
    for e in range(3000):
        s.set_epoch(e)
        counts.append(np.bincount(list(s), minlength=4))
    counts = np.array(counts)
    np.testing.assert_allclose(counts.mean(0), f, atol=0.04)
    assert counts.min(0).tolist() == [1, 1, 2, 0] and counts.max(0).tolist() == [1, 2, 3, 1]
    assert len({len(c) for c in counts.tolist()}) == 1 and len(set(counts.sum(1))) > 1  # epoch length varies


@pytest.mark.parametrize('rule', ['mmdet', 'detectron2'])
@pytest.mark.parametrize('world', [2, 3, 4])
def test_sampler_shards_disjoint_equal(rule, world):
    f = np.random.default_rng(0).uniform(1, 4, 37)
    shards = [RepeatFactorSampler(f, rule=rule, seed=9, num_replicas=world, rank=k) for k in range(world)]
    for s in shards: s.set_epoch(4)
    lists = [list(s) for s in shards]
    assert len({len(x) for x in lists}) == 1 and all(len(x) == len(s) for x, s in zip(lists, shards))
    full = RepeatFactorSampler(f, rule=rule, seed=9, num_replicas=1, rank=0)
    full.set_epoch(4)
    ref = list(full)
    merged = [x for t in zip(*lists) for x in t]  # positions k, k + world, ...: disjoint by construction
    assert merged[:len(ref)] == ref and len(merged) - len(ref) < world
    assert merged[len(ref):] == ref[:len(merged) - len(ref)]  # padding wraps around


def test_sampler_fixed_budget_and_errors():
    s = RepeatFactorSampler([1.0] * 5 + [3.0], rule='detectron2', num_samples=101, num_replicas=2, rank=0)
    assert len(s) == 51 and len(list(s)) == 51
    with pytest.raises(TypeError, match='dict'): RepeatFactorSampler({1: 1.0})
    with pytest.raises(ValueError, match=r'factors\[1\]'): RepeatFactorSampler([1.0, -1.0])
    with pytest.raises(ValueError, match='rule'): RepeatFactorSampler([1.0], rule='ceil')
    with pytest.raises(ValueError, match='rank'): RepeatFactorSampler([1.0], num_replicas=2, rank=-1)
    with pytest.raises(ValueError, match='empty'): RepeatFactorSampler([])


# ---------------------------------------------------------------- dataset
def _uncompressed_rle(m):
    flat = np.asarray(m, np.uint8).flatten(order='F')
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, change, len(flat)]).tolist()
    return {'size': list(m.shape), 'counts': ([0] if flat[0] else []) + runs}


def test_decode_segmentation_polygon_and_rle():
    m = np.zeros((20, 30), np.uint8); m[3:9, 4:20] = 1; m[15:, 25:] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    assert (decode_segmentation(rle, 20, 30) == m).all()
    assert (decode_segmentation({'size': rle['size'], 'counts': rle['counts'].decode()}, 20, 30) == m).all()
    assert (decode_segmentation(_uncompressed_rle(m), 20, 30) == m).all()
    p = decode_segmentation([[4, 3, 20, 3, 20, 9, 4, 9], [25, 15, 30, 15, 30, 20, 25, 20]], 20, 30)
    assert (p.astype(bool) == m.astype(bool)).mean() > 0.9 and p[5, 10] == 1 and p[0, 0] == 0
    with pytest.raises(ValueError, match='size'): decode_segmentation(rle, 21, 30)


@pytest.fixture()
def tiny_root(tmp_path):
    "4 images 60x40 (v0.5 file_name for one, v1 coco_url for the others), a red rectangle each; non-contiguous ids."
    d = tiny_lvis(4, 2)
    for c, new in zip(d['categories'], (17, 5)): c['id'] = new
    (tmp_path / 'val2017').mkdir()
    box = [10, 6, 24, 14]  # x, y, w, h
    m = np.zeros((40, 60), np.uint8); m[6:20, 10:34] = 1
    for k, (im, a) in enumerate(zip(d['images'], d['annotations'])):
        im.update(width=60, height=40)
        if k == 0: im.pop('coco_url'); im['file_name'] = f"COCO_val2014_{im['id']:012d}.jpg"
        else: im['coco_url'] = f"http://x/val2017/{im['id']:012d}.png"
        pic = Image.new('RGB', (60, 40), (10, 10, 10)); ImageDraw.Draw(pic).rectangle([10, 6, 33, 19], fill=(255, 0, 0))
        pic.save(tmp_path / 'val2017' / (f"{im['id']:012d}.jpg" if k == 0 else f"{im['id']:012d}.png"))
        a.update(bbox=box, category_id=(17, 5)[k % 2], segmentation=[
            [[10, 6, 34, 6, 34, 20, 10, 20]],
            {k2: (v.decode() if k2 == 'counts' else v) for k2, v in mask_utils.encode(np.asfortranarray(m)).items()},
            _uncompressed_rle(m), [[10, 6, 34, 6, 34, 20, 10, 20]]][k])
    d['annotations'].append(dict(d['annotations'][0], id=50, iscrowd=1))
    d['images'].append(dict(d['images'][1], id=9, coco_url='http://x/val2017/000000000009.png'))  # no annotations
    Image.new('RGB', (60, 40)).save(tmp_path / 'val2017' / '000000000009.png')
    return d, tmp_path


def _mask_box(m):
    ys, xs = torch.nonzero(m, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.mark.parametrize('flip', [0.0, 1.0])
def test_dataset_targets_and_flip_consistency(tiny_root, flip):
    d, root = tiny_root
    ds = LVISDetection(d, root / 'val2017', train=True, scales=(80, 120), max_size=150, flip_prob=flip, seed=0)
    assert len(ds) == 5 and ds.num_classes == 2 and ds.category_ids == [5, 17]
    for i in range(4):
        img, t = ds[i]
        H, W = t['size'].tolist()
        assert img.shape == (3, H, W) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
        assert (H, W) in {(80, 120), (100, 150)}  # short 80, or short 120 capped by max_size 150
        assert t['labels'].dtype == torch.int64 and t['labels'].tolist() == [2 if i % 2 == 0 else 1]  # crowd skipped
        assert ds.category_ids[t['labels'][0] - 1] == d['annotations'][i]['category_id']
        assert t['masks'].shape == (1, H, W) and t['masks'].dtype == torch.uint8
        assert t['flipped'] == bool(flip)
        b = t['boxes'][0].tolist()
        assert np.allclose(_mask_box(t['masks'][0]), b, atol=1.01), (i, _mask_box(t['masks'][0]), b)
        cy, cx = int((b[1] + b[3]) / 2), int((b[0] + b[2]) / 2)
        assert img[0, cy, cx] > 0.9 and img[1, cy, cx] < 0.1  # the red rectangle is under the box
        x1, y1, x2, y2 = b
        if flip: x1, x2 = W - x2, W - x1
        np.testing.assert_allclose(np.array([x1, y1, x2, y2]) / t['scale_factor'].numpy(), [10, 6, 34, 20], atol=1e-3)
        assert t['orig_size'].tolist() == [40, 60] and t['image_id'] == d['images'][i]['id']
    img, t = ds[4]
    assert t['boxes'].shape == (0, 4) and t['labels'].shape == (0,) and t['masks'].shape[0] == 0


def test_dataset_eval_scale_seed_and_filter(tiny_root):
    d, root = tiny_root
    ev = LVISDetection(d, root, train=False, scales=(20, 40, 30), max_size=1000)  # v1: found via coco_url's split folder
    assert all(ev[i][1]['size'].tolist() == [40, 60] and not ev[i][1]['flipped'] for i in range(1, 4))
    with pytest.raises(FileNotFoundError, match='000000000001.jpg'): ev[0]  # v0.5 file_name: no split folder
    ds = LVISDetection(d, root / 'val2017', scales=(20, 30, 40), seed=3)
    assert [ds[i][1]['size'].tolist() for i in range(4)] == [ds[i][1]['size'].tolist() for i in range(4)]
    draws = set()
    for e in range(60):
        ds.set_epoch(e)
        draws.add((tuple(ds[0][1]['size'].tolist()), ds[0][1]['flipped']))
    assert len(draws) == 6
    assert len(LVISDetection(d, root, filter_empty=True)) == 4
    rf = ds.repeat_factors(thresh=1.0)
    assert rf.shape == (5,) and rf[4] == 1.0 and rf[0] > 1.0
    with pytest.raises(FileNotFoundError, match='image_root'): LVISDetection(d, root / 'missing')
    with pytest.raises(ValueError, match='flip_prob'): LVISDetection(d, root, flip_prob=2)
    (root / 'val2017' / '000000000002.png').unlink()
    with pytest.raises(FileNotFoundError, match='000000000002.png'): ds[1]


def test_dataset_multiprocess_loader_reproducible(tiny_root):
    d, root = tiny_root
    ds = LVISDetection(d, root / 'val2017', scales=(20, 30, 40, 50), flip_prob=0.5)  # torch's per-worker RNG

    def run():
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=detection_collate)
        return [(t['image_id'], tuple(t['size'].tolist()), t['flipped']) for _, ts in loader for t in ts]

    a, b = run(), run()
    assert a == b and [x[0] for x in a] == [1, 2, 3, 4, 9]
    imgs, tgts = detection_collate([ds[0], ds[1]])
    assert isinstance(imgs, list) and len(tgts) == 2


# ---------------------------------------------------------------- synthetic set
def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob('*')):
        if p.is_file(): h.update(p.relative_to(root).as_posix().encode()); h.update(p.read_bytes())
    return h.hexdigest()


def test_synthetic_deterministic_layout_and_cache(tmp_path):
    kw = dict(num_train=40, num_val=15, num_classes=12, image_size=64)
    a = make_synthetic_lvis(tmp_path / 'a', seed=0, **kw)
    make_synthetic_lvis(tmp_path / 'b', seed=0, **kw)
    make_synthetic_lvis(tmp_path / 'c', seed=1, **kw)
    assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b') != _digest(tmp_path / 'c')
    assert a.train_json == tmp_path / 'a' / 'annotations' / 'lvis_v1_train.json'
    tr, va = load_lvis(a.train_json), load_lvis(a.val_json)
    assert len(tr['images']) == 40 and len(va['images']) == 15
    assert {a2['category_id'] for a2 in va['annotations']} == set(range(1, 13))
    assert {a2['category_id'] for a2 in tr['annotations']} == set(range(1, 13))
    assert not {im['id'] for im in tr['images']} & {im['id'] for im in va['images']}
    ds = LVISDetection(a.val_json, tmp_path / 'a', train=False, scales=(64,), max_size=64)
    img, t = ds[0]
    assert img.shape == (3, 64, 64) and len(t['boxes']) >= 1
    for m, b in zip(t['masks'], t['boxes']):
        assert np.allclose(_mask_box(m), b.tolist(), atol=1.01)
    before = a.train_json.stat().st_mtime_ns
    make_synthetic_lvis(tmp_path / 'a', seed=0, **kw)
    assert a.train_json.stat().st_mtime_ns == before
    make_synthetic_lvis(tmp_path / 'a', seed=0, **dict(kw, num_val=16))
    assert len(load_lvis(a.val_json)['images']) == 16
    with pytest.raises(ValueError, match='objects_per_image'): make_synthetic_lvis(tmp_path / 'd', objects_per_image=(3, 1))


def test_synthetic_default_has_all_frequency_groups(tmp_path):
    s = make_synthetic_lvis(tmp_path / 'syn')
    st = class_statistics(s.train_json, recompute_frequency=True)
    groups = {g: len(st.group(g)) for g in 'rcf'}
    assert all(groups.values()), groups
    assert st.frequency == class_statistics(s.train_json).frequency  # the json's field is the image-count group
    assert len({a['category_id'] for a in load_lvis(s.val_json)['annotations']}) == len(st.category_ids)
