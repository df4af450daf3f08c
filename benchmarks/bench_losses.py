"""Forward + backward time of GumbelBCE and GOL against F.binary_cross_entropy_with_logits.

Side by side in one run, interleaved repetitions, median times; prints the ratios to BCE-with-logits. Every loss
is reduced as a detection head reduces it: the sum over classes and RoIs divided by the number of RoIs.
Targets: CPU GumbelBCE <= 1.5x, GOL <= 2x; GPU <= 1.2x. 'fused' rows use torch.compile (GumbelBCE(fused=True)).
    python benchmarks/bench_losses.py [--rows 8192 --classes 1204 --device cuda --reps 20]
"""
from __future__ import annotations
import argparse, statistics, time
import torch
import torch.nn.functional as F
from gol_nb.losses import GumbelBCE, GOL, _one_hot


def timed(fn, device) -> float:
    if device.type == 'cuda': torch.cuda.synchronize()
    t = time.perf_counter(); fn()
    if device.type == 'cuda': torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rows', type=int, default=8192)
    ap.add_argument('--classes', type=int, default=1204, help='classifier channels (C)')
    ap.add_argument('--reps', type=int, default=15)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--fg', type=float, default=.25, help='share of foreground rows (mmdet samples 25%% positives)')
    a = ap.parse_args()
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    C, N = a.classes, a.rows
    logits = (torch.randn(N, C, generator=g) * 2 - 4).to(dev).requires_grad_()
    labels = torch.where(torch.rand(N, generator=g) < a.fg, torch.randint(0, C, (N,), generator=g), C).to(dev)
    onehot = _one_hot(labels, C)
    # LVIS v1 shape: 337 rare (1-10 images), 461 common (11-100), frequent (> 100) of 100k training images
    n_r, n_c = round(C * 337 / 1203), round(C * 461 / 1203)
    counts = torch.cat([torch.randint(1, 11, (n_r,), generator=g), torch.randint(11, 101, (n_c,), generator=g),
                        torch.randint(101, 20_000, (C - n_r - n_c,), generator=g)])
    gumbel, gumbel_lbl = GumbelBCE(C).to(dev), GumbelBCE(C).to(dev)
    gol = GOL(C, counts, num_images=100_000, generator=torch.Generator(dev).manual_seed(0)).to(dev)
    gumbel_fused = GumbelBCE(C, fused=True).to(dev)
    gol_fused = GOL(C, counts, num_images=100_000, generator=torch.Generator(dev).manual_seed(0), fused=True).to(dev)
    cases = {
        'bce_with_logits (one-hot)': lambda: F.binary_cross_entropy_with_logits(logits, onehot, reduction='sum').div(N).backward(),
        'GumbelBCE (one-hot)': lambda: gumbel(logits, onehot, avg_factor=N).backward(),
        'GumbelBCE (labels)': lambda: gumbel_lbl(logits, labels, avg_factor=N).backward(),
        'GOL (labels)': lambda: gol(logits, labels, avg_factor=N).backward(),
        'GumbelBCE fused (labels)': lambda: gumbel_fused(logits, labels, avg_factor=N).backward(),
        'GOL fused (labels)': lambda: gol_fused(logits, labels, avg_factor=N).backward(),
    }
    t = time.perf_counter(); cases['GumbelBCE fused (labels)'](); cases['GOL fused (labels)']()
    print(f"first call of the fused losses (torch.compile, cached on disk afterwards): {time.perf_counter() - t:.1f} s")
    for fn in cases.values(): fn(); fn()  # warm-up
    times = {k: [] for k in cases}
    for _ in range(a.reps):
        for k, fn in cases.items():
            logits.grad = None
            times[k].append(timed(fn, dev))
    base = statistics.median(times['bce_with_logits (one-hot)'])
    print(f"device {dev}, logits ({N} x {C}) fp32, {a.reps} interleaved repetitions, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for k, ts in times.items():
        m = statistics.median(ts)
        print(f"{k:28s} {m * 1e3:8.1f} ms   ratio {m / base:5.2f}")


if __name__ == '__main__':
    main()
