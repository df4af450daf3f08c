"Tests of gol_nb.data: LVIS loading and validation, class statistics, repeat factors, the sampler, the dataset, the synthetic set."
import hashlib
import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from gol_nb.data import (DatasetError, ImageReadError, LVISDetection, LVISFormatError, RepeatFactorSampler,
                         check_images, check_train_set, check_train_val, class_statistics, decode_segmentation,
                         detection_collate, filter_images_without_annotations, find_shared_file, load_lvis, open_image,
                         repeat_factors, segmentation_problem, with_train_frequencies)
from gol_nb.data.lvis import _decode_rle_strings, tiny_lvis
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


@pytest.mark.parametrize('content', [b'\x1f\x8b\x08\x00 gzip', b'\x00\xff\xfe\x80 binary'], ids=['gzip', 'binary'])
def test_binary_annotation_file_is_named(tmp_path, content):
    "A binary file raised a bare UnicodeDecodeError that named no file."
    p = tmp_path / 'lvis_v1_train.json'
    p.write_bytes(content)
    with pytest.raises(LVISFormatError, match=r'lvis_v1_train.json: not a text file .*expected an LVIS annotation file'):
        load_lvis(p)


def test_utf8_bom_annotation_file_is_read(tmp_path):
    p = tmp_path / 'bom.json'
    p.write_bytes(b'\xef\xbb\xbf' + json.dumps(tiny_lvis(2, 2)).encode())
    assert len(load_lvis(p)['images']) == 2


def test_two_image_records_of_one_file_warn_once_naming_ids_and_file(tmp_path):
    d = tiny_lvis(5, 2)
    d['images'][3]['coco_url'] = d['images'][1]['coco_url']
    d['images'][4]['coco_url'] = d['images'][0]['coco_url']
    p = _write(tmp_path, d, 'dup.json')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        load_lvis(p)
    msgs = [str(x.message) for x in w]
    assert len(msgs) == 1, msgs
    assert f"{p}: images 2 and 4 (images[1] and images[3]) both point at the file '000000000002.jpg'" in msgs[0], msgs
    assert '(1 more records share a file too)' in msgs[0], msgs
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        load_lvis(tiny_lvis(5, 2))  # distinct files: no warning
        d = tiny_lvis(2, 1)
        d['images'][1]['coco_url'] = d['images'][0]['coco_url'].replace('train2017', 'val2017')[:-5] + '3.jpg'
        load_lvis(d)

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
    assert len(st.category_ids) == 1230 and len(lv['images']) == 100
    assert st.num_images == 93 and '93 images holding >= 1 annotation (of 100' in st.num_images_note  # 7 hold none
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
    n = len({a['image_id'] for a in d['annotations']})  # the training images: those holding annotations
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
    ds = LVISDetection(d, root / 'val2017', train=True, scales=(80, 120), max_size=150, flip_prob=flip, seed=0,
                       filter_empty=False)
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
    ds = LVISDetection(d, root / 'val2017', scales=(20, 30, 40), seed=3, filter_empty=False)
    assert [ds[i][1]['size'].tolist() for i in range(4)] == [ds[i][1]['size'].tolist() for i in range(4)]
    draws = set()
    for e in range(60):
        ds.set_epoch(e)
        draws.add((tuple(ds[0][1]['size'].tolist()), ds[0][1]['flipped']))
    assert len(draws) == 6
    assert len(LVISDetection(d, root)) == 4 and len(LVISDetection(d, root, train=False)) == 5  # filtered for training
    assert len(LVISDetection(d, root, train=False, filter_empty=True)) == 4
    rf = ds.repeat_factors(thresh=1.0)
    assert rf.shape == (5,) and rf[4] == 1.0 and rf[0] > 1.0
    np.testing.assert_allclose(LVISDetection(d, root, seed=3).repeat_factors(thresh=1.0), rf[:4])  # same N either way
    with pytest.raises(FileNotFoundError, match='image_root'): LVISDetection(d, root / 'missing')
    with pytest.raises(ValueError, match='flip_prob'): LVISDetection(d, root, flip_prob=2)
    (root / 'val2017' / '000000000002.png').unlink()
    with pytest.raises(FileNotFoundError, match='000000000002.png'): ds[1]  # opened lazily: the error names the file


def test_dataset_multiprocess_loader_reproducible(tiny_root):
    d, root = tiny_root
    ds = LVISDetection(d, root / 'val2017', scales=(20, 30, 40, 50), flip_prob=0.5, filter_empty=False)  # torch's RNG

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


# ---------------------------------------------------------------- geometry: polygons and RLE refused before any decode
def _coord(d, value, ann=1, k=3):
    d['annotations'][ann]['segmentation'][0][k] = value


BAD_POLYGONS = [  # (coordinate value, fragment of the reason)
    (float('nan'), 'is nan'), (float('inf'), 'is inf'), (float('-inf'), 'is -inf'), (1e12, 'within [-30, 60]'),
    (-31.0, 'within [-30, 60]'), (10 ** 30, 'within [-30, 60]'), ('12.5', "'12.5' (str)"), ('abc', "'abc' (str)"),
    (True, 'True (bool)'), (None, 'None (NoneType)'), ([1, 2], '(list)'),
]


@pytest.mark.parametrize('value,why', BAD_POLYGONS)
def test_polygon_coordinates_refused_with_file_record_field(tmp_path, value, why):
    d = tiny_lvis(3, 2)
    _coord(d, value)  # annotation id 2, coordinate 3 is a y of a 40 x 30 image
    p = _write(tmp_path, d)
    with pytest.raises(LVISFormatError) as e: load_lvis(p)
    msg = str(e.value)
    for f in (str(p), 'annotations[1] (id=2)', "field 'segmentation'", 'polygon 0', 'coordinate 3 (y)', why): assert f in msg, msg


@pytest.mark.parametrize('value', [float('nan'), 1e12, '3', True])
def test_polygon_check_is_vectorised_and_names_the_record_among_many(value):
    d = tiny_lvis(3000, 5)
    for a in d['annotations']: a['segmentation'] = [[5., 5., 15., 5., 15., 13.], [5, 5, 6, 6, 5, 7, 4, 6]]
    assert load_lvis(d)  # fine as it is
    d['annotations'][2345]['segmentation'][1][4] = value
    with pytest.raises(LVISFormatError, match=r"annotations\[2345\] \(id=2346\): field 'segmentation' polygon 1: coordinate 4 \(x\)"):
        load_lvis(d)


def test_polygons_slightly_outside_the_image_are_accepted():
    d = tiny_lvis(3, 2)  # 40 x 30 images
    d['annotations'][0]['segmentation'] = [[-1.5, -0.5, 41, 0, 80, 60, -40, -30]]  # the limits themselves are fine
    assert load_lvis(d)['annotations'][0]['segmentation'][0][4] == 80


def _uncompressed_rle_of(m):
    flat = np.asarray(m, np.uint8).flatten(order='F')
    runs = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
    return ([0] if flat[0] else []) + runs


def test_rle_string_decoder_matches_pycocotools_many_at_once():
    rng = np.random.default_rng(1)
    masks = []
    for k in range(60):
        h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if k % 3 == 0: m[:, : w // 2] = 1  # long runs: numbers of several characters
        masks.append(m)
    strs = [mask_utils.encode(np.asfortranarray(m))['counts'] for m in masks]
    strs[::2] = [s.decode() for s in strs[::2]]  # str and bytes alike
    runs, owner, problems = _decode_rle_strings(strs)
    assert problems == [None] * 60
    for k, m in enumerate(masks): assert runs[owner == k].tolist() == _uncompressed_rle_of(m), k
    for k in (0, 7, 33):  # and each decodes through pycocotools to the same mask
        rle = {'size': list(masks[k].shape), 'counts': strs[k]}
        assert segmentation_problem(rle, *masks[k].shape) is None
        assert (decode_segmentation(rle, *masks[k].shape) == masks[k]).all()


GOOD_RLE = {'size': [30, 40], 'counts': [100, 50, 1050]}
BAD_RLE = [  # (segmentation of a 30 x 40 image, fragment of the reason)
    ({'size': [30, 40], 'counts': [100, 50]}, 'sum to 150, not h * w = 1200'),  # would decode uninitialised memory
    ({'size': [30, 40], 'counts': [100, 50, 2000]}, 'sum to 2150'),  # would write past the mask
    ({'size': [30, 40], 'counts': [1300, -100]}, 'negative run length'),
    ({'size': [30, 40], 'counts': [100.0, 50, 1050]}, 'must be integers'),
    ({'size': [30, 40], 'counts': ['100', 50, 1050]}, 'must be integers'),
    ({'size': [30, 40], 'counts': [True, 50, 1149]}, 'must be integers'),
    ({'size': [30, 40], 'counts': []}, 'sum to 0'),
    ({'size': [40, 30], 'counts': [100, 50, 1050]}, "differs from the image's [h, w] = [30, 40]"),
    ({'size': [30.0, 40], 'counts': [100, 50, 1050]}, 'differs from the image'),
    ({'size': [30], 'counts': [1200]}, "'counts' and 'size'"),
    ({'counts': [1200]}, "'counts' and 'size'"),
    ({'size': [30, 40], 'counts': 1200}, 'got int'),
    ({'size': [30, 40], 'counts': 'ab~c'}, "outside '0'..'o'"),
    ({'size': [30, 40], 'counts': 'a\x00c'}, "outside '0'..'o'"),
    ({'size': [30, 40], 'counts': 'Xo'}, 'truncated'),
    ({'size': [30, 40], 'counts': 'ooooooooo0'}, 'longer than 6 characters'),
    ({'size': [30, 40], 'counts': '1'}, 'sum to 1, not h * w = 1200'),
    ({'size': [30, 40], 'counts': '0@'}, 'negative run length'),  # '@' = 16: the sign bit, run 1 = -16
]


@pytest.mark.parametrize('seg,why', BAD_RLE)
def test_rle_refused_with_file_record_field(tmp_path, seg, why):
    d = tiny_lvis(3, 2)
    d['annotations'][2]['segmentation'] = GOOD_RLE
    load_lvis(d)
    d['annotations'][2]['segmentation'] = seg
    p = _write(tmp_path, d)
    with pytest.raises(LVISFormatError) as e: load_lvis(p)
    msg = str(e.value)
    for f in (str(p), 'annotations[2] (id=3)', "field 'segmentation'", why): assert f in msg, msg
    with pytest.raises(ValueError, match='segmentation'): decode_segmentation(seg, 30, 40)  # the public decoder checks too


def test_rle_good_forms_accepted_and_vectorised():
    m = np.zeros((30, 40), np.uint8); m[5:13, 5:15] = 1
    enc = mask_utils.encode(np.asfortranarray(m))
    d = tiny_lvis(2000, 2)
    for k, a in enumerate(d['annotations']):
        a['segmentation'] = [{'size': [30, 40], 'counts': enc['counts'].decode()}, {'size': [30, 40], 'counts': enc['counts']},
                             {'size': [30, 40], 'counts': _uncompressed_rle_of(m)}, a['segmentation']][k % 4]
    load_lvis(d)
    d['annotations'][1501]['segmentation'] = {'size': [30, 40], 'counts': _uncompressed_rle_of(m)[:-1]}  # one run short
    with pytest.raises(LVISFormatError, match=r'annotations\[1501\] \(id=1502\).*not h \* w = 1200'): load_lvis(d)


# ---------------------------------------------------------------- boxes a detector cannot learn from
def test_unusable_boxes_dropped_and_counted_once(tiny_root):
    d, root = tiny_root  # images 60 x 40
    bad = [[10, 6, 0.4, 14], [10, 6, 24, 0.9], [-40, 6, 30, 14], [10, 45, 24, 14], [59.5, 6, 24, 14], [10, -13.6, 24, 14]]
    d['annotations'] += [dict(d['annotations'][0], id=100 + k, bbox=b) for k, b in enumerate(bad)]
    d['annotations'].append(dict(d['annotations'][0], id=200, bbox=[59, 39, 5, 5]))  # keeps 1 x 1 pixel: fine
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        ds = LVISDetection(d, root / 'val2017', scales=(30, 80), flip_prob=0.5, seed=1)
    assert ds.dropped_boxes == {'thin': 2, 'collapsed': 2, 'outside': 2}
    msgs = [str(x.message) for x in w if 'boxes dropped' in str(x.message)]
    assert len(msgs) == 1 and '6 of 11 boxes dropped' in msgs[0], msgs
    for e in range(4):  # never a box torchvision's detectors would assert on, at any scale or flip
        ds.set_epoch(e)
        for i in range(len(ds)):
            with warnings.catch_warnings():
                warnings.simplefilter('error')  # and nothing more is reported per item
                t = ds[i][1]
            b = t['boxes']
            assert (b[:, 2:] > b[:, :2]).all() and len(b) == len(t['labels']) == len(t['masks']) == len(t['polygons'])
    assert len(ds[0][1]['boxes']) == 2  # image 1 keeps its own box and the 1-pixel one


def test_training_set_with_only_unusable_boxes_refused(tiny_root):
    d, root = tiny_root
    for a in d['annotations']: a['bbox'] = [100, 100, 5, 5]  # all outside the 60 x 40 images
    with pytest.warns(UserWarning, match='boxes dropped'), pytest.raises(DatasetError, match='none of the 4 boxes is usable'):
        LVISDetection(d, root / 'val2017')


# ---------------------------------------------------------------- image files: lazy, every error names the file
def _png16(arr):
    "A 16-bit RGB PNG written by hand (Pillow cannot write one)."
    import struct, zlib
    h, w, _ = arr.shape
    raw = b''.join(b'\x00' + arr[y].astype('>u2').tobytes() for y in range(h))
    chunk = lambda t, data: struct.pack('>I', len(data)) + t + data + struct.pack('>I', zlib.crc32(t + data) & 0xffffffff)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, 2, 0, 0, 0)) +
            chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))


@pytest.fixture()
def image_set(tmp_path):
    "Eleven 40 x 30 images in the v1 layout, each a different kind of file; the LVIS dict names them."
    d = tiny_lvis(11, 2)
    root = tmp_path / 'imgs'
    (root / 'train2017').mkdir(parents=True)
    pic = Image.new('RGB', (40, 30), (20, 120, 220))
    jpg = root / 'x.jpg'; pic.save(jpg, quality=95); jpg_bytes = jpg.read_bytes(); jpg.unlink()
    a16 = (np.arange(1200, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)
    rgb16 = np.zeros((30, 40, 3), np.uint16); rgb16[..., 0] = 65535; rgb16[..., 1] = 32896; rgb16[..., 2] = 257
    files = {  # name: (writer, expectation: None = readable, else fragment of the error)
        'ok.jpg': (lambda p: p.write_bytes(jpg_bytes), None),
        'truncated.jpg': (lambda p: p.write_bytes(jpg_bytes[: len(jpg_bytes) * 2 // 3]), 'truncated'),
        'notimage.jpg': (lambda p: p.write_text('<html>404</html>'), 'not an image file'),
        'empty.jpg': (lambda p: p.write_bytes(b''), 'not an image file'),
        'gray16.png': (lambda p: Image.fromarray(a16).save(p), None),
        'rgb16.png': (lambda p: p.write_bytes(_png16(rgb16)), None),
        'float.tif': (lambda p: Image.fromarray(np.ones((30, 40), np.float32)).save(p), "mode 'F'"),
        'cmyk.jpg': (lambda p: pic.convert('CMYK').save(p), None),
        'palette.png': (lambda p: pic.convert('P').save(p), None),
        'wrongsize.png': (lambda p: Image.new('RGB', (30, 40)).save(p), 'size 40x30 differs from the annotation'),
        'missing.jpg': (None, 'not found'),
    }
    for im, (name, (write, _)) in zip(d['images'], files.items()):
        im['coco_url'] = f'http://x/train2017/{name}'
        if write: write(root / 'train2017' / name)
    return d, root, files, a16


def test_open_image_errors_name_the_file_and_16_bit_is_scaled(image_set):
    d, root, files, a16 = image_set
    ds = LVISDetection(d, root, train=False, scales=(30,))  # nothing is opened here
    for i, (name, (_, why)) in enumerate(files.items()):
        if why is None:
            img, t = ds[i]
            assert img.shape == (3, 30, 40), name
            continue
        with pytest.raises(OSError) as e: ds[i]
        assert name in str(e.value) and f'image id {i + 1}' in str(e.value) and why in str(e.value), str(e.value)
        assert isinstance(e.value, FileNotFoundError if name == 'missing.jpg' else ImageReadError)
    g = np.asarray(open_image(root / 'train2017' / 'gray16.png'))
    np.testing.assert_array_equal(g[..., 0], np.round(a16 / 257).astype(np.uint8))  # not clipped to 255
    assert g.min() == 0 and g.max() == 252 and (g[..., 0] == g[..., 2]).all()  # 64746 / 257 = 251.9
    assert np.asarray(open_image(root / 'train2017' / 'rgb16.png'))[0, 0].tolist() == [255, 128, 1]


def test_decompression_bomb_refused_naming_the_file(image_set, monkeypatch):
    d, root, files, _ = image_set
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # 1200 pixels: above the limit, under twice it
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageReadError, match=r'ok.jpg.*decompression-bomb limit'):
        open_image(root / 'train2017' / 'ok.jpg')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 500)  # above twice the limit: Pillow's own error, converted
    with pytest.raises(ImageReadError, match=r'ok.jpg.*decompression bomb'): open_image(root / 'train2017' / 'ok.jpg')


def test_check_images_reports_every_bad_file(image_set):
    d, root, files, _ = image_set
    rep = check_images(d, root, workers=2)
    bad = {name: why for name, (_, why) in files.items() if why}
    assert rep.checked == 11 and not rep.ok and len(rep.problems) == len(bad)
    assert [i for i, _ in rep.problems] == [i + 1 for i, (_, why) in enumerate(files.values()) if why]  # file order
    for (_, msg), (name, why) in zip(rep.problems, bad.items()): assert name in msg and why in msg, msg
    assert f'{len(bad)} of 11 images are unusable' in str(rep)
    with pytest.raises(ImageReadError, match='truncated.jpg'): rep.raise_if_bad()
    good = dict(d, images=[im for im, (_, why) in zip(d['images'], files.values()) if why is None], annotations=[])
    rep = check_images(good, root)
    assert rep.ok and rep.checked == 5 and 'all readable' in str(rep)
    rep.raise_if_bad()
    with pytest.raises(FileNotFoundError, match='image_root'): check_images(d, root / 'nope')


# ---------------------------------------------------------------- empty training files
@pytest.mark.parametrize('empty', ['images', 'categories', 'annotations'])
def test_empty_training_file_refused_with_a_sentence(tmp_path, empty):
    d = tiny_lvis(3, 2)
    d[empty] = []
    d['annotations'] = [] if empty != 'annotations' else d['annotations'][:0]
    p = _write(tmp_path, d, 'train.json')
    root = tmp_path / 'imgs'; root.mkdir()
    for call in (lambda: check_train_set(p), lambda: LVISDetection(p, root), lambda: check_train_val(p, tiny_lvis())):
        with pytest.raises(DatasetError) as e: call()
        assert str(p) in str(e.value) and f'the training file holds no {empty}' in str(e.value), str(e.value)
    LVISDetection(p, root, train=False)  # an empty evaluation file is not refused by the dataset


# ---------------------------------------------------------------- N = training images holding annotations (issue 8 item 5)
def test_class_statistics_denominator_counts_annotated_images():
    d = tiny_lvis(10, 2)
    d['annotations'] = [a for a in d['annotations'] if a['image_id'] <= 6]
    d['annotations'].append(dict(d['annotations'][0], id=99))  # two boxes in one image: still one image
    st = class_statistics(d)
    assert st.num_images == 6 and st.image_counts.tolist() == [3, 3]
    assert st.num_images_note == '6 images holding >= 1 annotation (of 10 in <dict>)'
    np.testing.assert_allclose(st.image_fraction, [0.5, 0.5])
    assert st.fraction_below(0.6).tolist() == [True, True] and not st.fraction_below(0.5).any()
    given = class_statistics(d, num_images=10)
    assert given.num_images == 10 and 'as given' in given.num_images_note and '6 images holding annotations' in given.num_images_note
    for bad in (2, 0, 2.5, True, '10'):
        with pytest.raises(ValueError, match='num_images'): class_statistics(d, num_images=bad)
    with pytest.raises(DatasetError, match='no image holds an annotation'): class_statistics(dict(d, annotations=[]))


def test_real_lvis_v1_counts_give_815_rare_classes():
    p = find_shared_file('lvis_v1_categories.json')
    if p is None: pytest.skip('lvis_v1_categories.json not available')
    meta = json.loads(p.read_text())
    cats, n_img, n_ann = meta['categories'], meta['num_images'], meta['num_images_with_annotations']
    assert (n_img, n_ann, len(cats)) == (100_170, 99_388, 1203)
    # a file with LVIS v1 train's image counts: class c in image_count_c consecutive images (cycling over the
    # 99,388 annotated ones, so every one holds a class), and 782 images without annotations
    counts = np.array([c['image_count'] for c in cats])
    img = (np.arange(counts.sum()) % n_ann) + 1
    cat = np.repeat([c['id'] for c in cats], counts)
    d = {'images': [{'id': i} for i in range(1, n_img + 1)], 'categories': [dict(c) for c in cats],
         'annotations': [{'image_id': i, 'category_id': c} for i, c in zip(img.tolist(), cat.tolist())]}
    st = class_statistics(d)
    assert st.num_images == 99_388 and st.image_counts.tolist() == counts.tolist()
    assert '99,388 images holding >= 1 annotation (of 100,170' in st.num_images_note
    assert st.fraction_below(0.0011).sum() == 815
    assert {f: st.frequency.count(f) for f in 'rcf'} == {'r': 337, 'c': 461, 'f': 405}
    old = class_statistics(d, num_images=n_img)  # the denominator used before: every image in the file
    flipped = np.flatnonzero(old.fraction_below(0.0011) != st.fraction_below(0.0011))
    assert old.fraction_below(0.0011).sum() == 817 and sorted(cats[i]['name'] for i in flipped) == ['celery', 'oar']


# ---------------------------------------------------------------- images without annotations filtered out (item 9)
def test_filter_images_without_annotations_and_repeat_factors_over_the_filtered_set():
    rng = np.random.default_rng(3)
    d = tiny_lvis(400, 12)
    d['annotations'] = [dict(a, id=k + 1, image_id=int(rng.integers(1, 301)), category_id=int(min(rng.zipf(1.5), 12)))
                        for k, a in enumerate(d['annotations'] * 2)]  # images 301..400 and some others: empty
    f = filter_images_without_annotations(d)
    held = {a['image_id'] for a in d['annotations']}
    assert [im['id'] for im in f['images']] == sorted(held) and len(held) < 300 and len(d['images']) == 400
    assert f.source == '<dict>' and f['annotations'] is d['annotations']
    assert filter_images_without_annotations(f) is f  # nothing left to filter
    rf_all, rf_f = repeat_factors(d, 0.3), repeat_factors(f, 0.3)
    ref = _brute_repeat_factors(f, 0.3)
    assert rf_f.keys() == ref.keys() and all(rf_f[k] == pytest.approx(ref[k], rel=1e-12) for k in ref)
    assert all(rf_all[k] == rf_f[k] for k in rf_f) and all(rf_all[k] == 1.0 for k in rf_all.keys() - rf_f.keys())
    assert max(rf_f.values()) > 1.5
    assert class_statistics(d).num_images == class_statistics(f).num_images == len(held)


# ---------------------------------------------------------------- train/val categories by id; custom COCO sets (issue 13)
def _coco_pair():
    "A COCO-format pair (no frequency/image_count, no LVIS negative lists); train counts 12, 3, 30 images; ids 7, 3, 11."
    tr, va = tiny_lvis(45, 3), tiny_lvis(6, 3)
    ids, names = [7, 3, 11], ['cat', 'dog', 'eel']
    for dd in (tr, va):
        for c, i, nm in zip(dd['categories'], ids, names): c.update(id=i, name=nm)
        for im in dd['images']: im.pop('neg_category_ids'); im.pop('not_exhaustive_category_ids')
    for k, a in enumerate(tr['annotations']): a['category_id'] = 7 if k < 12 else 3 if k < 15 else 11
    for k, a in enumerate(va['annotations']): a['category_id'] = ids[k % 3]
    return tr, va


def test_with_train_frequencies_for_a_coco_format_set():
    tr, va = _coco_pair()
    assert [c['image_count'] for c in load_lvis(va)['categories']] == [2, 2, 2]  # val's own counts: not the groups
    v = with_train_frequencies(va, tr)
    by = {c['id']: (c['image_count'], c['frequency']) for c in v['categories']}
    assert by == {7: (12, 'c'), 3: (3, 'r'), 11: (30, 'c')}
    assert v.frequency_source == 'training file <dict>'
    assert v['images'][0]['neg_category_ids'] == [3, 11] and v['images'][0]['not_exhaustive_category_ids'] == []
    assert 'neg_category_ids' not in va['images'][0]  # the input is not modified
    assert 'neg_category_ids' not in with_train_frequencies(va, tr, exhaustive=False)['images'][0]
    lvis_style = tiny_lvis(6, 3)  # LVIS files keep their own negative lists
    for c, i in zip(lvis_style['categories'], [7, 3, 11]): c['id'] = i
    for a in lvis_style['annotations']: a['category_id'] = [7, 3, 11][a['id'] % 3]
    lvis_style['images'][0]['neg_category_ids'] = [11]
    w = with_train_frequencies(lvis_style, tr)
    assert [im['neg_category_ids'] for im in w['images'][:2]] == [[11], []]
    for c, (n, g) in zip(lvis_style['categories'], [(12, 'c'), (999, 'f'), (30, 'c')]): c.update(image_count=n, frequency=g)
    # the file's own fields: another group for id 3 is warned about and replaced
    with pytest.warns(UserWarning, match='1 categories'):
        assert {c['id']: c['frequency'] for c in with_train_frequencies(lvis_style, tr)['categories']}[3] == 'r'
    with pytest.raises(DatasetError, match='check_train_val'): with_train_frequencies(tiny_lvis(2, 2), tr)


def test_check_train_val_matches_categories_by_id_not_position(tmp_path):
    tr, va = _coco_pair()
    va['categories'] = va['categories'][::-1]  # another order in the file
    root = tmp_path / 'imgs'; root.mkdir()
    v = check_train_val(tr, va)
    tds, vds = LVISDetection(tr, root), LVISDetection(v, root, train=False)
    assert tds.category_ids == vds.category_ids == [3, 7, 11] and tds.cat_to_label == vds.cat_to_label
    assert [c['id'] for c in v['categories']] == [3, 7, 11]
    assert [(c['name'], c['frequency']) for c in v['categories']] == [('dog', 'r'), ('cat', 'c'), ('eel', 'c')]
    va2 = json.loads(json.dumps(va)); va2['categories'][0]['name'] = 'ferret'  # id 11 names another class
    with pytest.raises(DatasetError, match="id 11: 'ferret' here, 'eel' in training"): check_train_val(tr, va2)
    va3 = json.loads(json.dumps(va)); va3['categories'].append({'id': 99, 'name': 'yak'})
    va3['annotations'].append(dict(va3['annotations'][0], id=500, category_id=99))
    va3['images'][0]['neg_category_ids'] = [99, 3]
    with pytest.raises(DatasetError, match=r"1 categories \(ids \[99\]\) with 1 annotations are not in the training file"):
        check_train_val(tr, va3)
    with pytest.warns(UserWarning, match='dropped 1 categories'):
        v3 = check_train_val(tr, va3, extra_categories='drop')
    assert [c['id'] for c in v3['categories']] == [3, 7, 11] and len(v3['annotations']) == 6
    assert v3['images'][0]['neg_category_ids'] == [3]
    va4 = json.loads(json.dumps(va)); va4['categories'] = [c for c in va4['categories'] if c['id'] != 3]
    va4['annotations'] = [a for a in va4['annotations'] if a['category_id'] != 3]
    with pytest.warns(UserWarning, match='1 training categories'):
        v4 = check_train_val(tr, va4)
    assert [c['id'] for c in v4['categories']] == [3, 7, 11] and v4['categories'][0]['frequency'] == 'r'
    with pytest.raises(ValueError, match='extra_categories'): check_train_val(tr, va, extra_categories='keep')
    with pytest.raises(DatasetError, match='the validation file holds no annotations'):
        check_train_val(tr, dict(va, annotations=[]))


def test_checked_val_gives_meaningful_ap_by_group():
    "End to end with the evaluator: groups from training counts, and false positives on unannotated classes count."
    from gol_nb.evaluate import evaluate_lvis
    tr, va = _coco_pair()  # val: image i holds one box [5, 5, 10, 8] of class [7, 3, 11][i % 3]
    v = check_train_val(tr, va)
    dets = [{'image_id': a['image_id'], 'category_id': a['category_id'], 'bbox': a['bbox'], 'score': 0.9}
            for a in va['annotations']]
    m = evaluate_lvis(v, dets, 'bbox')
    assert m['AP'] == pytest.approx(1.0) and m['APr'] == pytest.approx(1.0) and m['APc'] == pytest.approx(1.0)
    assert m['APf'] == -1  # no class has more than 100 training images
    fp = dets + [{'image_id': 2, 'category_id': 7, 'bbox': [5, 5, 10, 8], 'score': 0.95}]  # class 7 is not in image 2
    assert evaluate_lvis(v, fp, 'bbox')['APc'] < 0.9  # counted: COCO labels are exhaustive
    unchecked = evaluate_lvis(va, fp, 'bbox')  # without negatives the false positive would be ignored
    assert unchecked['AP'] == pytest.approx(1.0)


# ---------------------------------------------------------------- polygons in the targets (TEAM.md interface 2)
@pytest.mark.parametrize('flip', [0.0, 1.0])
def test_targets_carry_polygons_in_transformed_coordinates(tiny_root, flip):
    d, root = tiny_root
    d['annotations'][0]['segmentation'] = [[10, 6, 34, 6, 34, 20, 10, 20], [40, 25, 50, 25, 45, 35]]  # two parts
    ds = LVISDetection(d, root / 'val2017', scales=(80,), max_size=500, flip_prob=flip, seed=0, filter_empty=False)
    img, t = ds[0]
    s, W = t['scale_factor'][0].item(), t['size'][1].item()
    polys = t['polygons']
    assert isinstance(polys, list) and len(polys) == len(t['boxes']) == 1
    assert len(polys[0]) == 2 and all(p.dtype == np.float32 and p.shape[1] == 2 for p in polys[0])
    assert polys[0][1].shape == (3, 2)
    want = np.array([[10, 6], [34, 6], [34, 20], [10, 20]], np.float64) * s
    if flip: want[:, 0] = W - want[:, 0]
    np.testing.assert_allclose(polys[0][0], want, rtol=1e-5)
    # the polygons rasterise to the target mask
    m = decode_segmentation([p.reshape(-1).tolist() for p in polys[0]], *t['size'].tolist())
    assert (torch.from_numpy(m) != t['masks'][0]).float().mean() < 0.01
    x1, y1 = polys[0][0].min(0); x2, y2 = polys[0][0].max(0)
    np.testing.assert_allclose([x1, y1, x2, y2], t['boxes'][0].numpy(), atol=1e-3)
    assert ds[1][1]['polygons'] == [None] and ds[2][1]['polygons'] == [None]  # compressed and uncompressed RLE
    assert ds[4][1]['polygons'] == []  # no objects
