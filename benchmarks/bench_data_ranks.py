"""Set-up time, memory and images/s of the LVIS training set when every torchrun rank builds it (issue 18).

    .venv/bin/python benchmarks/bench_data_ranks.py            # LVIS v1 train size: 100k images, 1.27M polygons
    .venv/bin/python benchmarks/bench_data_ranks.py --quick    # 10x smaller, for development
    .venv/bin/python benchmarks/bench_data_ranks.py --mmdet    # also mmdet's LVISV1Dataset on the same file
    .venv/bin/python benchmarks/bench_data_ranks.py --quick --engine mmdet   # only the mmdetection engine's set

Writes an LVIS-v1-like file once (benchmarks/bench_data.py's `synthetic_lvis`, 16-point polygons: ~480 MiB at full
size) and its images as symlinks to five real JPEGs, then in one run starts "ranks" as torchrun would (processes
started at once, each with a DataLoader of 2 workers) and prints, per configuration: set-up time (start to loader,
imports included; the data set's own construction in brackets), time to the first batch, PSS of each rank with its
workers (/proc/PID/smaps_rollup) at the first batch and after `--samples` samples, and images/s. Configurations:
the annotation cache cold (empty folder) and warm, 1 and 2 ranks; the dataset without the cache (every process parses
the json); mmdet's LVISV1Dataset pipeline (with --mmdet).
`--engine mmdet` measures the mmdetection engine's set instead (gol_nb.mmdet_plugin.GolLVISDataset, mmdet's
training pipeline): its data list from the annotation cache (cold, warm) and parsed by every rank (`cache=False`).
"""
from __future__ import annotations
import argparse, json, os, shutil, subprocess, sys, time
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
GiB = 2 ** 30


def write_lvis_size_file(folder: Path, images: int, boxes: int, classes: int, poly_points: int) -> Path:
    "The annotation file (written once per size) and `train2017/` of symlinks to five JPEGs, one per image size."
    from PIL import Image
    ann = folder / f'lvis_{images}_{boxes}_{classes}_{poly_points}.json'
    if ann.exists(): return ann
    from bench_data import synthetic_lvis
    import gc
    gc.disable()
    lv = synthetic_lvis(images, boxes, classes, poly_points=poly_points)
    (root := folder / 'train2017').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for h, w in {(im['height'], im['width']) for im in lv['images']}:
        smooth = np.kron(rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3)), np.ones((16, 16, 1)))[:h, :w]
        pix = np.clip(smooth + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pix).save(folder / f'base_{h}x{w}.jpg', quality=90)
    for im in lv['images']:
        link = root / im['coco_url'].rsplit('/', 1)[1]
        if not link.exists(): link.symlink_to(folder / f"base_{im['height']}x{im['width']}.jpg")
    tmp = ann.with_suffix('.tmp')
    with open(tmp, 'w') as f: json.dump(lv, f)
    os.replace(tmp, ann)
    del lv; gc.enable()
    return ann


def pss_gib(pid: int) -> float:
    "PSS of a process and its children (DataLoader workers), GiB."
    import psutil
    procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    total = 0
    for p in procs:
        try:
            for line in open(f'/proc/{p.pid}/smaps_rollup'):
                if line.startswith('Pss:'): total += int(line.split()[1]) * 1024
        except OSError: pass
    return total / GiB


def _gol_loader(a, rank: int):
    from gol_nb.data import LVISDetection, detection_collate
    import torch
    t = time.perf_counter()
    ds = LVISDetection(a.ann, a.root, train=True, cache=a.impl == 'gol', cache_dir=a.cache_dir)
    a.data_s = time.perf_counter() - t
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[rank::a.world][:a.samples].tolist()
    return torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, sampler=idx, collate_fn=detection_collate)


def _mmdet_loader(a, rank: int):
    "mmdet's LVISV1Dataset (or gol_nb's GolLVISDataset) and the Mask R-CNN LVIS training pipeline, mmengine's collate."
    import torch
    from mmdet.utils import register_all_modules
    from mmengine.dataset import pseudo_collate
    register_all_modules()
    scales = [(1333, s) for s in (640, 672, 704, 736, 768, 800)]
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                dict(type='RandomChoiceResize', scales=scales, keep_ratio=True), dict(type='RandomFlip', prob=0.5),
                dict(type='PackDetInputs')]
    from mmdet.datasets import LVISV1Dataset
    from gol_nb.mmdet_plugin import GolLVISDataset
    t = time.perf_counter()
    if a.impl == 'mmdet':
        ds = LVISV1Dataset(ann_file=str(a.ann), data_root=str(Path(a.root).parent), data_prefix=dict(img=''),
                           filter_cfg=dict(filter_empty_gt=True, min_size=0), pipeline=pipeline)
    else:  # the mmdetection engine's own set, as gol_nb's configs build it
        ds = GolLVISDataset(ann_file=str(a.ann), data_prefix=dict(img=str(a.root)), pipeline=pipeline,
                            filter_cfg=dict(filter_empty_gt=True, min_size=0), cache=a.impl == 'gol-mmdet',
                            cache_dir=a.cache_dir)
    a.data_s = time.perf_counter() - t
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[rank::a.world][:a.samples].tolist()
    return torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, sampler=idx, collate_fn=pseudo_collate)


def rank_main(a) -> None:
    "One rank: build the data set and loader, time the first batch, measure PSS, run --samples samples."
    t0 = a.t0
    loader = (_mmdet_loader if 'mmdet' in a.impl else _gol_loader)(a, a.rank)
    setup = time.time() - t0
    it = iter(loader)
    next(it)
    first = time.time() - t0
    pss0 = pss_gib(os.getpid())
    n, t1 = 2, time.perf_counter()
    for batch in it: n += len(batch[0]) if isinstance(batch, (tuple, list)) else 2
    rate = (n - 2) / (time.perf_counter() - t1)
    pss1 = pss_gib(os.getpid())
    print(json.dumps(dict(rank=a.rank, setup=setup, data=a.data_s, first=first, pss0=pss0, pss1=pss1, samples=n,
                          rate=rate)))


def run_ranks(a, impl: str, world: int) -> list:
    "Start `world` ranks at once (as torchrun does) and collect their figures."
    t0 = time.time()
    args = [sys.executable, __file__, '--role', 'rank', '--impl', impl, '--world', str(world), '--t0', str(t0),
            '--ann', str(a.ann), '--root', str(a.root), '--cache-dir', str(a.cache_dir), '--samples', str(a.samples)]
    procs = [subprocess.Popen(args + ['--rank', str(r)], stdout=subprocess.PIPE, text=True) for r in range(world)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs): raise RuntimeError(f"{impl} x{world}: a rank failed")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def report(name: str, rows: list) -> None:
    pss0, pss1 = sum(r['pss0'] for r in rows), sum(r['pss1'] for r in rows)
    each = ' + '.join(f"{r['pss1']:.2f}" for r in rows)
    print(f"{name:<34} setup {max(r['setup'] for r in rows):6.1f} s (data set {max(r['data'] for r in rows):5.1f} s)  "
          f"first batch {max(r['first'] for r in rows):6.1f} s  PSS {pss0:5.2f} -> {pss1:5.2f} GiB "
          f"({each})  {sum(r['rate'] for r in rows):5.1f} images/s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--images', type=int, default=100_000)
    ap.add_argument('--boxes', type=int, default=1_270_000)
    ap.add_argument('--classes', type=int, default=1203)
    ap.add_argument('--poly-points', type=int, default=16, help='points per polygon (16: ~480 MiB json, as LVIS v1)')
    ap.add_argument('--samples', type=int, default=300, help='samples per rank after the first batch')
    ap.add_argument('--folder', default='/tmp/gol_bench_lvis', help='where the file, images and cache go')
    ap.add_argument('--quick', action='store_true', help='10x smaller')
    ap.add_argument('--mmdet', action='store_true', help="also mmdet's LVISV1Dataset")
    ap.add_argument('--no-baseline', action='store_true', help='skip the runs without the cache')
    ap.add_argument('--engine', default='torchvision', choices=['torchvision', 'mmdet'],
                    help="whose training set: gol_nb.data.LVISDetection, or the mmdetection engine's GolLVISDataset")
    ap.add_argument('--role', default='main'); ap.add_argument('--impl', default='gol')
    ap.add_argument('--rank', type=int, default=0); ap.add_argument('--world', type=int, default=1)
    ap.add_argument('--t0', type=float); ap.add_argument('--ann'); ap.add_argument('--root')
    ap.add_argument('--cache-dir')
    a = ap.parse_args(argv)
    if a.role == 'rank': return rank_main(a)
    if a.quick: a.images, a.boxes, a.samples = a.images // 10, a.boxes // 10, min(a.samples, 100)
    folder = Path(a.folder)
    t = time.time(); a.ann = write_lvis_size_file(folder, a.images, a.boxes, a.classes, a.poly_points)
    a.root, a.cache_dir = folder / 'train2017', folder / 'cache'
    print(f"{a.ann.name}: {a.ann.stat().st_size / 2 ** 20:.0f} MiB ({time.time() - t:.0f} s); "
          f"load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    shutil.rmtree(a.cache_dir, ignore_errors=True)
    impl = 'gol-mmdet' if a.engine == 'mmdet' else 'gol'
    if a.engine == 'mmdet': print("GolLVISDataset (the mmdetection engine's set), mmdet's training pipeline")
    report('cache cold, 2 ranks x 2 workers', run_ranks(a, impl, 2))
    report('cache warm, 2 ranks x 2 workers', run_ranks(a, impl, 2))
    report('cache warm, 1 process x 2 workers', run_ranks(a, impl, 1))
    if not a.no_baseline:
        report('no cache, 2 ranks x 2 workers', run_ranks(a, f'{impl}-nocache', 2))
        report('no cache, 1 process x 2 workers', run_ranks(a, f'{impl}-nocache', 1))
    if a.mmdet: report("mmdet LVISV1Dataset, 1 x 2 workers", run_ranks(a, 'mmdet', 1))
    print(f"load {os.getloadavg()[0]:.2f}")
    shutil.rmtree(a.cache_dir, ignore_errors=True)


if __name__ == '__main__':
    main()
