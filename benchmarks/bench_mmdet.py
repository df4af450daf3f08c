"""CPU (or GPU) step time of every mmdetection config of the package (paper, dense, baselines) on the synthetic set.

Each config trains `--iters` iterations in its own temporary run folder (gol_nb.mmdet_runner, no evaluation of note:
one val image); the table gives the seconds of forward + backward + optimizer step (data loading excluded) over the
iterations after the first: the minimum (the estimate least disturbed by other processes) and the median. Two
settings: `smoke` (the test suite's: 64 px, 32 RoIs per image, 100 proposals) and `paper` (the configs' own
RoI and proposal counts: 512 RoIs per image, 1000 proposals; images of --size px).
Timings on a shared machine are noisy: compare configs within one run.

    .venv/bin/python benchmarks/bench_mmdet.py --setting smoke --iters 6 --threads 1
    .venv/bin/python benchmarks/bench_mmdet.py --setting paper --size 256 --configs mmdet_gol_r50_lvis_v1_2x
"""
from __future__ import annotations
import argparse, statistics, tempfile, time
import torch
from pathlib import Path
from gol_nb.engine import read_jsonl
from gol_nb.mmdet_plugin import MMDET_CONFIGS
from gol_nb.mmdet_runner import run_mmdet, SMOKE_OVERRIDES


def bench(name: str, setting: str, iters: int, size: int, device: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        common = [f'output_dir={d}/run', f'max_iters={iters}', 'max_val_images=1', 'checkpoint_epochs=0',
                  f'synth_num_train={2 * iters}', f'device={device}']
        if setting == 'smoke': opts = SMOKE_OVERRIDES + common
        else: opts = ['synth_num_val=1', 'synth_num_classes=6', f'synth_image_size={size}', 'batch_size=2',
                      'num_workers=0', 'warmup_iters=0', 'log_interval=1', 'checkpoint_minutes=0',
                      'lambda_=rare'] + common
        t = time.perf_counter()
        run_mmdet(name, opts)
        total = time.perf_counter() - t
        steps = [r['time'] for r in read_jsonl(Path(d) / 'run' / 'log.jsonl') if 'loss' in r]
    later = steps[1:] or steps
    return dict(config=name, first=steps[0], min=min(later), median=statistics.median(later), total=total)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--setting', choices=('smoke', 'paper'), default='smoke')
    p.add_argument('--iters', type=int, default=4, help='training iterations per config (batch 2)')
    p.add_argument('--size', type=int, default=256, help="image side of the 'paper' setting")
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda', 'auto'))
    p.add_argument('--configs', nargs='*', default=list(MMDET_CONFIGS))
    p.add_argument('--threads', type=int, default=0,
                   help="torch CPU threads (0: torch's default); 1 gives stable figures on a machine others use too "
                        "(several threads spin-wait for each other when a core is taken)")
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    rows = [bench(n, a.setting, a.iters, a.size, a.device) for n in a.configs]
    print(f"\nsetting {a.setting}" + (f", {a.size} px" if a.setting == 'paper' else ', 64 px') +
          f", batch 2, device {a.device}, {torch.get_num_threads()} thread(s): seconds per training step over "
          f"iterations 2..{a.iters} (min, the least disturbed by other processes; median), the first iteration, "
          "and the whole run (build, train, evaluate)")
    print(f"{'config':34s} {'min s':>7s} {'median s':>9s} {'first s':>8s} {'run s':>7s}")
    for r in rows: print(f"{r['config']:34s} {r['min']:7.2f} {r['median']:9.2f} {r['first']:8.2f} {r['total']:7.1f}")


if __name__ == '__main__':
    main()
