"""LVIS evaluation speed, end to end (files in, metrics out): gol_nb's evaluator against lvis-api, and at LVIS-val
scale.

1. Side by side in one run, on the same files: an LVIS v1-like annotation json and results jsons of 2,000 images x
   300 detections over 1,203 classes (LVIS v1's frequency groups, negative and not-exhaustive lists), box AP then
   mask AP. Timed: `gol_nb.evaluate.run_lvis_eval(gt_json, results_json, iou_type)` (orjson, column checks, hotcoco)
   and lvis-api as its users run it (`LVIS(gt_json)`, `LVISResults(gt, results_json, max_dets=300)`,
   `LVISEval(...).run()`), both end to end (files in, metrics out). Printed: each time, gol_nb's split into reading
   the annotations, reading the detections, checking them and evaluating (the parts timed again one by one), the
   ratio, and the largest difference over the 13 figures and over the per-class APs (asserted <= 1e-9).
2. LVIS-val scale (19,809 images x 300 detections, box AP), in a fresh process per input: from the results json
   (what a user has) and from the detection file a validation pass writes: time and peak memory (ru_maxrss).

Targets: >= 30x lvis-api on bbox, >= 20x on segm, figures equal to 1e-9, LVIS-val-scale bbox < 30 s and < 8 GiB.
Timings depend on the machine's load, printed at the start and the end; the modules are imported before timing.

    .venv/bin/python benchmarks/bench_eval.py [--images 2000] [--val-images 19809] [--skip-lvis-api] [--skip-val]
                                              [--skip-side]
"""
import argparse, contextlib, json, logging, os, resource, subprocess, sys, tempfile, time, warnings
import numpy as np
import hotcoco, lvis, orjson  # imported before any timing, for both sides

from gol_nb.evaluate import (METRICS, Detections, DetectionWriter, LVISGroundTruth, _per_class_table,
                             check_detections, load_detections, numpy_aliases, run_lvis_eval, write_lvis_results)


def make_gt(num_images, num_classes=1203, objects_per_image=12.4, seed=0):
    "An LVIS v1-like ground truth: frequency groups 337 r / 461 c / 405 f, octagon masks, neg / not-exhaustive lists."
    rng = np.random.default_rng(seed)
    groups = np.array(['r'] * 337 + ['c'] * 461 + ['f'] * 405)[:num_classes]
    weight = np.where(groups == 'f', 60., np.where(groups == 'c', 6., 1.)) * rng.uniform(.5, 1.5, num_classes)
    weight /= weight.sum()
    cats = [{'id': c + 1, 'name': f'class{c + 1}', 'frequency': str(g), 'synset': f's{c + 1}',
             'image_count': int({'r': 5, 'c': 50, 'f': 500}[g])} for c, g in enumerate(groups)]
    k = 1 + rng.poisson(objects_per_image - 1, num_images)
    img_of = np.repeat(np.arange(num_images), k)
    n = len(img_of)
    h, w = rng.integers(360, 641, num_images), rng.integers(480, 641, num_images)
    H, W = h[img_of], w[img_of]
    bw, bh = rng.uniform(.03, .6, n) * W, rng.uniform(.03, .6, n) * H
    x, y = rng.uniform(0, 1, n) * (W - bw), rng.uniform(0, 1, n) * (H - bh)
    cat = rng.choice(num_classes, n, p=weight) + 1
    imgs, anns = [], []
    c = .2  # octagon: corners cut at 20% of the side
    for i, (im, x0, y0, w0, h0, ca) in enumerate(zip(img_of.tolist(), x.tolist(), y.tolist(), bw.tolist(), bh.tolist(),
                                                     cat.tolist())):
        poly = [x0 + c * w0, y0, x0 + (1 - c) * w0, y0, x0 + w0, y0 + c * h0, x0 + w0, y0 + (1 - c) * h0,
                x0 + (1 - c) * w0, y0 + h0, x0 + c * w0, y0 + h0, x0, y0 + (1 - c) * h0, x0, y0 + c * h0]
        anns.append({'id': i + 1, 'image_id': im + 1, 'category_id': ca, 'bbox': [x0, y0, w0, h0],
                     'area': w0 * h0 * (1 - 2 * c * c), 'segmentation': [poly]})
    first = np.r_[0, np.cumsum(k)]
    for i in range(num_images):
        present = set(cat[first[i]:first[i + 1]].tolist())
        neg = [int(v) for v in rng.choice(num_classes, 12) + 1 if v + 1 not in present][:8]
        ne = sorted(present)[:1] if rng.random() < .1 else []
        imgs.append({'id': i + 1, 'height': int(h[i]), 'width': int(w[i]), 'coco_url': f'x/val2017/{i + 1:012d}.jpg',
                     'neg_category_ids': neg, 'not_exhaustive_category_ids': ne})
    return {'images': imgs, 'annotations': anns, 'categories': cats}


def make_detections(gt, per_image=300, masks=False, seed=1):
    "`per_image` detections per image: the objects jittered (85% with the right class), then false positives."
    rng = np.random.default_rng(seed)
    ni, C = len(gt['images']), len(gt['categories'])
    hw = np.array([(im['height'], im['width']) for im in gt['images']], np.float64)
    a_img = np.array([a['image_id'] for a in gt['annotations']]) - 1
    a_box = np.array([a['bbox'] for a in gt['annotations']])
    a_cat = np.array([a['category_id'] for a in gt['annotations']])
    order = np.argsort(a_img, kind='stable')
    a_img, a_box, a_cat = a_img[order], a_box[order], a_cat[order]
    k = np.bincount(a_img, minlength=ni).clip(max=per_image)
    img = np.repeat(np.arange(ni), per_image)
    slot = np.tile(np.arange(per_image), ni)
    first = np.r_[0, np.cumsum(np.bincount(a_img, minlength=ni))][:-1]
    is_obj = slot < k[img]
    src = first[img] + np.minimum(slot, np.maximum(k[img] - 1, 0))
    H, W = hw[img, 0], hw[img, 1]
    box = np.stack([rng.uniform(0, .8, len(img)) * W, rng.uniform(0, .8, len(img)) * H,
                    rng.uniform(.02, .4, len(img)) * W, rng.uniform(.02, .4, len(img)) * H], 1)
    cat = rng.integers(1, C + 1, len(img))
    jit = a_box[src] + rng.normal(0, .08, (len(img), 4)) * a_box[src][:, [2, 3, 2, 3]]
    box[is_obj] = jit[is_obj]
    box[:, 2:] = np.abs(box[:, 2:]) + 1
    box[:, 0] = box[:, 0].clip(0, W - 1); box[:, 1] = box[:, 1].clip(0, H - 1)
    box[:, 2] = np.minimum(box[:, 2], W - box[:, 0]); box[:, 3] = np.minimum(box[:, 3], H - box[:, 1])
    right = is_obj & (rng.random(len(img)) < .85)
    cat[right] = a_cat[src][right]
    score = np.where(is_obj, rng.uniform(.2, 1, len(img)), rng.uniform(0, .6, len(img))).astype(np.float32)
    size = counts = None
    if masks:
        from hotcoco import mask as mu
        size = hw[img].astype(np.int64)
        counts = np.empty(len(img), object)
        for i in range(ni):
            s = slice(i * per_image, (i + 1) * per_image)
            counts[s] = [r['counts'] for r in mu.frPyObjects(box[s], int(hw[i, 0]), int(hw[i, 1]))]
    return Detections(img + 1, cat, score.astype(np.float64), box, size, counts)


def timed(f, *a):
    t = time.perf_counter(); r = f(*a); return r, time.perf_counter() - t


def lvis_api(gt_path, res_path, iou):
    "lvis-api from the files, as its users run it: (figures, per-class AP table)."
    from lvis import LVIS, LVISEval, LVISResults
    logging.getLogger('lvis').setLevel(logging.ERROR)
    with warnings.catch_warnings(), numpy_aliases():
        warnings.simplefilter('ignore', DeprecationWarning)
        gt = LVIS(gt_path)
        ev = LVISEval(gt, LVISResults(gt, res_path, max_dets=300), iou)
        ev.run()
    r = {k.split('@')[0]: float(v) for k, v in ev.results.items()}
    return r, _per_class_table(gt.dataset, np.asarray(ev.eval['precision']))


def side_by_side(num_images, skip_lvis_api):
    t = time.perf_counter()
    gt = make_gt(num_images)
    dets = make_detections(gt, masks=True)
    with tempfile.TemporaryDirectory(prefix='bench_eval_') as tmp:
        gp = os.path.join(tmp, 'gt.json')
        with open(gp, 'w') as f: json.dump(gt, f)
        paths = {'bbox': os.path.join(tmp, 'bbox.json'), 'segm': os.path.join(tmp, 'segm.json')}
        write_lvis_results(dets.without_masks(), paths['bbox']); write_lvis_results(dets, paths['segm'])
        mb = {k: os.path.getsize(v) / 1e6 for k, v in paths.items()}
        print(f"\n1. {num_images} images x 300 detections, {len(gt['annotations'])} objects, 1,203 classes; "
              f"results jsons {mb['bbox']:.0f} MB (bbox), {mb['segm']:.0f} MB (segm) "
              f"(made in {time.perf_counter() - t:.0f} s)")
        del dets
        target = {'bbox': 30, 'segm': 20}
        for iou in ('bbox', 'segm'):
            h, th = timed(run_lvis_eval, gp, paths[iou], iou)  # end to end: files in, metrics out
            prepared, tg = timed(LVISGroundTruth, gp)  # its parts, timed again one by one
            d, tr = timed(load_detections, paths[iou], iou == 'segm')
            _, tc = timed(check_detections, d, prepared, iou, False)  # as run_lvis_eval checks for hotcoco
            del d
            print(f"  {iou}: gol_nb   {th:7.2f} s end to end   (annotations {tg:.2f} s, reading the detections "
                  f"{tr:.2f} s, "
                  f"checking them {tc:.2f} s, evaluating {th - tg - tr - tc:.2f} s)   AP {h.metrics['AP']:.4f}  "
                  f"APr {h.metrics['APr']:.4f}  APc {h.metrics['APc']:.4f}  APf {h.metrics['APf']:.4f}")
            if skip_lvis_api: continue
            (lm, lt), tl = timed(lvis_api, gp, paths[iou], iou)
            diff = max(abs(h.metrics[k] - lm[k]) for k in METRICS)
            pc = np.nanmax(np.abs(h.per_class.AP.to_numpy() - lt.AP.to_numpy()))
            print(f"  {iou}: lvis-api {tl:7.2f} s end to end   ratio {tl / th:5.1f}x (target >= {target[iou]}x: "
                  f"{'met' if tl / th >= target[iou] else 'NOT met'})   max |diff|: figures {diff:.1e}, "
                  f"per-class AP {pc:.1e}")
            assert diff <= 1e-9 and pc <= 1e-9, f"{iou}: gol_nb's figures differ from lvis-api's by {max(diff, pc)}"


def child(gt_path, dets_path):
    "Runs in a fresh process: time and peak memory of one evaluation from the files."
    t = time.perf_counter()
    r = run_lvis_eval(gt_path, dets_path, 'bbox', 'hotcoco')
    dt = time.perf_counter() - t
    print(json.dumps({'seconds': dt, 'peak_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
                      'AP': r.metrics['AP']}))


def val_scale(num_images):
    t = time.perf_counter()
    gt = make_gt(num_images, seed=2)
    dets = make_detections(gt, seed=3)
    with tempfile.TemporaryDirectory(prefix='bench_eval_') as tmp:
        gp, dp, jp = (os.path.join(tmp, n) for n in ('val.json', 'rank0.dets', 'results.json'))
        with open(gp, 'w') as f: json.dump(gt, f)
        with DetectionWriter(dp) as w:
            for s in range(0, len(dets), 600):
                w.write(dets.select(slice(s, s + 600)))  # as a validation pass writes them, two images at a time
        write_lvis_results(dets, jp)
        print(f"\n2. LVIS-val scale: {num_images} images x 300 detections = {len(dets):,} boxes, "
              f"{len(gt['annotations']):,} objects, results json {os.path.getsize(jp) / 1e9:.2f} GB (made in "
              f"{time.perf_counter() - t:.0f} s); box AP from the annotation json and, in a fresh process each:")
        del gt, dets
        for name, src in (('the results json', jp), ('the detection file', dp)):
            out = subprocess.run([sys.executable, __file__, '--child', gp, src], capture_output=True, text=True)
            if out.returncode: sys.exit(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  from {name}: {r['seconds']:.1f} s, peak memory {r['peak_gib']:.2f} GiB (AP {r['AP']:.4f})")


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--images', type=int, default=2000, help='images of the side-by-side comparison')
    p.add_argument('--val-images', type=int, default=19809, help='images of the LVIS-val-scale run')
    p.add_argument('--skip-lvis-api', action='store_true', help='time only hotcoco in part 1')
    p.add_argument('--skip-val', action='store_true', help='skip part 2')
    p.add_argument('--skip-side', action='store_true', help='skip part 1')
    p.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child: return child(*a.child)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    if not a.skip_side: side_by_side(a.images, a.skip_lvis_api)
    if not a.skip_val: val_scale(a.val_images)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == '__main__':
    main()
