"""Benchmark of the data-side computations at LVIS-v1-train scale (the evaluation's is benchmarks/bench_eval.py).

    .venv/bin/python benchmarks/bench_data.py                    # 100k images, 1.27M boxes, 1203 classes
    .venv/bin/python benchmarks/bench_data.py --quick            # 10x smaller
    .venv/bin/python benchmarks/bench_data.py --poly-points 16   # longer polygons (more coordinates to validate)

Prints each time, and its ratio to the target where there is one (object_distribution <= 3 s, repeat_factors
<= 1 s). load_lvis validates every polygon coordinate and RLE run, so its time grows with --poly-points.
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
                   neg_per_image: int = 0, poly_points: int = 4) -> dict:
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
    # a polygon of `poly_points` points per box, on the ellipse inscribed in it (validated by load_lvis)
    t = np.linspace(0, 2 * np.pi, poly_points, endpoint=False)
    px = np.round(x[:, None] + bw[:, None] * (0.5 + 0.5 * np.cos(t)), 2)
    py = np.round(y[:, None] + bh[:, None] * (0.5 + 0.5 * np.sin(t)), 2)
    polys = np.stack([px, py], 2).reshape(n, -1).tolist()
    anns = [{'id': k + 1, 'image_id': int(i) + 1, 'category_id': int(c) + 1, 'bbox': b, 'area': a, 'segmentation': [p]}
            for k, (i, c, b, a, p) in enumerate(zip(img.tolist(), cls.tolist(), boxes, area, polys))]
    return {'images': images, 'annotations': anns, 'categories': cats}


def timed(f, *a, **k):
    t = time.perf_counter(); r = f(*a, **k); return r, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--images', type=int, default=100_000, help='training images (LVIS v1: 100,170)')
    ap.add_argument('--boxes', type=int, default=1_270_000, help='training boxes (LVIS v1: 1,270,141)')
    ap.add_argument('--classes', type=int, default=1203, help='classes (LVIS v1: 1203)')
    ap.add_argument('--grid', type=int, default=16, help='G of object_distribution')
    ap.add_argument('--poly-points', type=int, default=4, help='points per polygon of the training set (>= 3)')
    ap.add_argument('--quick', action='store_true', help='10x smaller: 10k images, 127k boxes')
    a = ap.parse_args(argv)
    if a.quick: a.images, a.boxes = a.images // 10, a.boxes // 10

    import tempfile
    from gol_nb.data import LVISDetection, class_statistics, filter_images_without_annotations, load_lvis, repeat_factors
    from gol_nb.distribution import object_distribution
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.processor() or platform.machine()}")
    gc.disable()  # millions of small dicts: the cyclic collector would rescan them again and again
    lv, t = timed(synthetic_lvis, a.images, a.boxes, a.classes, poly_points=a.poly_points)
    gc.enable()
    freq = [c['frequency'] for c in lv['categories']]
    print(f"built {len(lv['images']):,} images, {len(lv['annotations']):,} boxes, {a.classes} classes "
          f"(r/c/f = {freq.count('r')}/{freq.count('c')}/{freq.count('f')}), {a.poly_points}-point polygons "
          f"in {t:.1f} s")
    checked, t_load = timed(load_lvis, lv)
    print(f"load_lvis (full validation, once)       {t_load:6.2f} s   ({a.poly_points * len(lv['annotations']) * 2:,} "
          "polygon coordinates)")
    st, t_cs = timed(class_statistics, checked)
    print(f"class_statistics                        {t_cs:6.2f} s   N = {st.num_images_note}")
    _, t_f = timed(filter_images_without_annotations, checked)
    print(f"filter_images_without_annotations       {t_f:6.2f} s")
    with tempfile.TemporaryDirectory() as root:
        _, t_ds = timed(LVISDetection, checked, root, train=True)
    print(f"LVISDetection(train=True) construction  {t_ds:6.2f} s   (filter, usable boxes, per-image lists)")
    d, t_raw = timed(object_distribution, lv, a.grid)
    _, t_od = timed(object_distribution, checked, a.grid)
    print(f"object_distribution, plain dict         {t_raw:6.2f} s   target 3 s: {t_raw / 3:.2f}x of the budget  (G={a.grid})")
    print(f"object_distribution, validated LVISDict {t_od:6.2f} s   target 3 s: {t_od / 3:.2f}x of the budget")
    assert abs(d.p_y.sum() - 1) < 1e-9
    _, t_rf = timed(repeat_factors, checked, 0.001)
    print(f"repeat_factors(t=0.001)                 {t_rf:6.2f} s   target 1 s: {t_rf:.2f}x of the budget")
    del lv, checked


if __name__ == '__main__':
    main()
