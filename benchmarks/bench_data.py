"""Benchmark of the data-side computations at LVIS-v1-train scale, and of the two LVIS evaluation backends.

    .venv/bin/python benchmarks/bench_data.py            # 100k images, 1.27M boxes, 1203 classes; eval 2,000 x 300
    .venv/bin/python benchmarks/bench_data.py --quick    # 10x smaller everywhere

Prints each time, and its ratio to the target (object_distribution <= 3 s, repeat_factors <= 1 s) or, for the
evaluation, the lvis-api / faster-coco-eval time ratio (measured side by side in this run).
"""
from __future__ import annotations
import argparse, gc, platform, time
import numpy as np


def zipf_image_counts(num_classes: int, num_images: int) -> np.ndarray:
    "(C,) image counts with LVIS v1 train's profile: Zipf (log-count linear in log-rank) through 405 classes > 100 and 337 <= 10."
    rank = np.arange(1, num_classes + 1)
    # knots (rank, image count) read off LVIS v1 train (100k images): head class ~ 50k images, 405th 101, 866th 11, last 1
    kx = np.log([1, 0.3367 * num_classes, 0.7199 * num_classes, num_classes])
    ky = np.log(np.array([0.5 * num_images, 101 / 1e5 * num_images, 11 / 1e5 * num_images, 1]).clip(1))
    return np.maximum(1, np.round(np.exp(np.interp(np.log(rank), kx, ky)))).astype(np.int64)


def synthetic_lvis(num_images: int, num_boxes: int, num_classes: int, seed: int = 0,
                   neg_per_image: int = 0) -> dict:
    "An LVIS v1-like annotation dict, arrays drawn with numpy; one dict per record built at the end."
    rng = np.random.default_rng(seed)
    counts = np.minimum(zipf_image_counts(num_classes, num_images), num_images)
    # (class, image) pairs: each class in `counts[c]` distinct images
    pair_cls = np.repeat(np.arange(num_classes), counts)
    pair_img = np.concatenate([rng.choice(num_images, n, replace=False) for n in counts])
    # boxes: one per pair, the rest shared out in proportion to the class's image count (head classes are crowded)
    extra = max(num_boxes - len(pair_cls), 0)
    w = counts[pair_cls].astype(np.float64) ** 0.3
    per_pair = 1 + np.bincount(rng.choice(len(pair_cls), extra, p=w / w.sum()), minlength=len(pair_cls))
    cls, img = np.repeat(pair_cls, per_pair), np.repeat(pair_img, per_pair)
    n = len(cls)
    hw = np.array([[480, 640], [640, 480], [427, 640], [640, 427], [512, 512]])[rng.integers(0, 5, num_images)]
    H, W = hw[img, 0].astype(np.float64), hw[img, 1].astype(np.float64)
    cx = np.clip(rng.normal(0.5, 0.2, n), 0.01, 0.99) * W
    cy = np.clip(rng.normal(0.55, 0.2, n), 0.01, 0.99) * H
    bw = np.minimum(np.exp(rng.normal(np.log(0.15), 0.8, n)) * W, W)
    bh = np.minimum(bw * np.exp(rng.normal(0, 0.3, n)), H)
    x, y = np.clip(cx - bw / 2, 0, None), np.clip(cy - bh / 2, 0, None)
    bw, bh = np.round(np.minimum(bw, W - x), 2) + 0.01, np.round(np.minimum(bh, H - y), 2) + 0.01
    x, y = np.round(x, 2), np.round(y, 2)
    boxes = np.stack([x, y, bw, bh], 1).tolist()
    area = np.round(bw * bh * 0.7, 2).tolist()
    freq = np.where(counts <= 10, 'r', np.where(counts <= 100, 'c', 'f'))
    cats = [{'id': c + 1, 'name': f'class{c + 1}', 'frequency': str(freq[c]), 'image_count': int(counts[c]),
             'synset': f'class{c + 1}.n.01'} for c in range(num_classes)]
    neg = rng.integers(1, num_classes + 1, (num_images, neg_per_image)).tolist()
    images = [{'id': i + 1, 'height': int(hw[i, 0]), 'width': int(hw[i, 1]),
               'coco_url': f'http://images.cocodataset.org/train2017/{i + 1:012d}.jpg',
               'neg_category_ids': neg[i], 'not_exhaustive_category_ids': []} for i in range(num_images)]
    # a 4-point polygon per box (masks are not used by what is timed here)
    anns = [{'id': k + 1, 'image_id': int(i) + 1, 'category_id': int(c) + 1, 'bbox': b, 'area': a,
             'segmentation': [[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2], b[1] + b[3], b[0], b[1] + b[3]]]}
            for k, (i, c, b, a) in enumerate(zip(img.tolist(), cls.tolist(), boxes, area))]
    return {'images': images, 'annotations': anns, 'categories': cats}


def eval_detections(gt: dict, per_image: int, seed: int = 0) -> list:
    "`per_image` detections per image: jittered ground-truth boxes, then false positives of present/negative classes."
    rng = np.random.default_rng(seed)
    anns = gt['annotations']
    img = np.array([a['image_id'] for a in anns]); cat = np.array([a['category_id'] for a in anns])
    box = np.array([a['bbox'] for a in anns])
    jit = box * (1 + rng.normal(0, 0.1, box.shape)) + rng.normal(0, 0.05, box.shape) * box[:, 2:].repeat(2, 1)
    jit[:, 2:] = np.abs(jit[:, 2:]) + 1
    n_img = len(gt['images'])
    n_tp = np.bincount(img - 1, minlength=n_img)
    n_fp = np.maximum(per_image - n_tp, 0)
    fp_img = np.repeat(np.arange(1, n_img + 1), n_fp)
    sizes = np.array([[im['width'], im['height']] for im in gt['images']], np.float64)
    # a false positive takes a class present in its image (or one of its negatives)
    by_img = {}
    for i, c in zip(img.tolist(), cat.tolist()): by_img.setdefault(i, []).append(c)
    pools = [by_img.get(i + 1, []) + gt['images'][i]['neg_category_ids'] or [1] for i in range(n_img)]
    pick = rng.random(len(fp_img))
    fp_cat = np.array([pools[i - 1][int(p * len(pools[i - 1]))] for i, p in zip(fp_img.tolist(), pick.tolist())])
    wh = sizes[fp_img - 1] * rng.uniform(0.02, 0.4, (len(fp_img), 2))
    xy = (sizes[fp_img - 1] - wh) * rng.random((len(fp_img), 2))
    fp_box = np.concatenate([xy, wh], 1)
    all_img = np.concatenate([img, fp_img]).tolist(); all_cat = np.concatenate([cat, fp_cat]).tolist()
    all_box = np.round(np.concatenate([jit, fp_box]), 2).tolist()
    score = np.concatenate([rng.uniform(0.3, 1, len(img)), rng.uniform(0, 0.7, len(fp_img))]).tolist()
    return [{'image_id': i, 'category_id': c, 'bbox': b, 'score': s} for i, c, b, s in zip(all_img, all_cat, all_box, score)]


def timed(f, *a, **k):
    t = time.perf_counter(); r = f(*a, **k); return r, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--images', type=int, default=100_000, help='training images (LVIS v1: 100,170)')
    ap.add_argument('--boxes', type=int, default=1_270_000, help='training boxes (LVIS v1: 1,270,141)')
    ap.add_argument('--classes', type=int, default=1203, help='classes (LVIS v1: 1203)')
    ap.add_argument('--grid', type=int, default=16, help='G of object_distribution')
    ap.add_argument('--eval-images', type=int, default=2000, help='images of the evaluation benchmark')
    ap.add_argument('--dets', type=int, default=300, help='detections per image of the evaluation benchmark')
    ap.add_argument('--quick', action='store_true', help='10x smaller: 10k images, 127k boxes, 200 eval images')
    ap.add_argument('--skip-eval', action='store_true', help='only the data benchmarks')
    ap.add_argument('--skip-lvis-api', action='store_true', help='time only the faster backend')
    a = ap.parse_args(argv)
    if a.quick: a.images, a.boxes, a.eval_images = a.images // 10, a.boxes // 10, a.eval_images // 10

    from gol_nb.data import load_lvis, repeat_factors
    from gol_nb.distribution import object_distribution
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.processor() or platform.machine()}")
    gc.disable()  # millions of small dicts: the cyclic collector would rescan them again and again
    lv, t = timed(synthetic_lvis, a.images, a.boxes, a.classes)
    gc.enable()
    freq = [c['frequency'] for c in lv['categories']]
    print(f"built {len(lv['images']):,} images, {len(lv['annotations']):,} boxes, {a.classes} classes "
          f"(r/c/f = {freq.count('r')}/{freq.count('c')}/{freq.count('f')}) in {t:.1f} s")
    checked, t_load = timed(load_lvis, lv)
    print(f"load_lvis (full validation, once)       {t_load:6.2f} s")
    d, t_raw = timed(object_distribution, lv, a.grid)
    _, t_od = timed(object_distribution, checked, a.grid)
    print(f"object_distribution, plain dict         {t_raw:6.2f} s   target 3 s: {t_raw / 3:.2f}x of the budget  (G={a.grid})")
    print(f"object_distribution, validated LVISDict {t_od:6.2f} s   target 3 s: {t_od / 3:.2f}x of the budget")
    assert abs(d.p_y.sum() - 1) < 1e-9
    _, t_rf = timed(repeat_factors, checked, 0.001)
    print(f"repeat_factors(t=0.001)                 {t_rf:6.2f} s   target 1 s: {t_rf:.2f}x of the budget")
    del lv, checked

    if a.skip_eval: return
    from gol_nb.evaluate import evaluate_lvis
    # the evaluation set: the same generator, about 12.7 boxes per image, 3 negative classes per image
    gt = synthetic_lvis(a.eval_images, int(a.eval_images * 12.7), a.classes, seed=1, neg_per_image=3)
    dets = eval_detections(gt, a.dets)
    print(f"evaluation: {len(gt['images']):,} images, {len(gt['annotations']):,} boxes, {len(dets):,} detections (bbox)")
    mf, tf = timed(evaluate_lvis, gt, dets, 'bbox', 'faster')
    print(f"faster-coco-eval (LVIS mode)            {tf:6.1f} s   AP {mf['AP']:.4f}")
    if a.skip_lvis_api: return
    ml, tl = timed(evaluate_lvis, gt, dets, 'bbox', 'lvis')
    diff = max(abs(mf[k] - ml[k]) for k in mf)
    print(f"lvis-api 0.5.3                          {tl:6.1f} s   AP {ml['AP']:.4f}   max |diff| {diff:.1e}")
    print(f"lvis-api / faster time ratio            {tl / tf:6.1f}x")


if __name__ == '__main__':
    main()
