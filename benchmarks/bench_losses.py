"""Forward + backward time and saved memory of the Gumbel losses against F.binary_cross_entropy_with_logits.

Side by side in one run, interleaved repetitions, median times; prints the ratios to BCE-with-logits and the bytes
each loss keeps for backward (counted with torch.autograd.graph.saved_tensors_hooks). Every loss is reduced as a
detection head reduces it: the sum over classes and RoIs divided by the number of RoIs.
Targets (issue 22): eager GumbelBCE <= 1.5x, GOL <= 2x; fused (torch.compile) <= 1.2x / 1.5x; saved bytes <= BCE's.
    python benchmarks/bench_losses.py [--rows 8192 --classes 1204 --device cuda --reps 15 --no-fused]
"""
from __future__ import annotations
import argparse, statistics, time
import torch
import torch.nn.functional as F
from gol_nb.losses import GumbelBCE, GumbelFocalLoss, GOL, _one_hot


def timed(fn, device) -> float:
    if device.type == 'cuda': torch.cuda.synchronize()
    t = time.perf_counter(); fn()
    if device.type == 'cuda': torch.cuda.synchronize()
    return time.perf_counter() - t


def saved_bytes(loss_fn) -> int:
    "Bytes of the distinct tensors autograd saves for backward during one forward of `loss_fn` (a 0-dim loss)."
    seen = {}
    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = loss_fn()
    del out
    return sum(seen.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rows', type=int, default=8192)
    ap.add_argument('--classes', type=int, default=1204, help='classifier channels (C)')
    ap.add_argument('--reps', type=int, default=15)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--fg', type=float, default=.25, help='share of foreground rows (mmdet samples 25%% positives)')
    ap.add_argument('--no-fused', action='store_true', help='skip the torch.compile rows')
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
    gumbel = GumbelBCE(C).to(dev)
    gol = GOL(C, counts, num_images=100_000, generator=torch.Generator(dev).manual_seed(0)).to(dev)
    focal = GumbelFocalLoss(C).to(dev)
    losses = {
        'bce_with_logits (one-hot)': lambda: F.binary_cross_entropy_with_logits(logits, onehot, reduction='sum') / N,
        'GumbelBCE (one-hot)': lambda: gumbel(logits, onehot, avg_factor=N),
        'GumbelBCE (labels)': lambda: gumbel(logits, labels, avg_factor=N),
        'GOL (labels)': lambda: gol(logits, labels, avg_factor=N),
        'GumbelFocal (labels)': lambda: focal(logits, labels, avg_factor=N),
    }
    if not a.no_fused:
        gumbel_fused = GumbelBCE(C, fused=True).to(dev)
        gol_fused = GOL(C, counts, num_images=100_000, generator=torch.Generator(dev).manual_seed(0), fused=True).to(dev)
        losses['GumbelBCE fused (labels)'] = lambda: gumbel_fused(logits, labels, avg_factor=N)
        losses['GOL fused (labels)'] = lambda: gol_fused(logits, labels, avg_factor=N)
        t = time.perf_counter()
        losses['GumbelBCE fused (labels)']().backward(); losses['GOL fused (labels)']().backward()
        print(f"first call of the fused losses (torch.compile, cached on disk afterwards): {time.perf_counter() - t:.1f} s")
    memory = {k: saved_bytes(fn) for k, fn in losses.items()}
    cases = {k: (lambda fn=fn: fn().backward()) for k, fn in losses.items()}
    for fn in cases.values(): fn()  # warm-up
    times = {k: [] for k in cases}
    for _ in range(a.reps):
        for k, fn in cases.items():
            logits.grad = None
            times[k].append(timed(fn, dev))
    base, base_mem = statistics.median(times['bce_with_logits (one-hot)']), memory['bce_with_logits (one-hot)']
    print(f"device {dev}, logits ({N} x {C}) fp32, forward + backward, {a.reps} interleaved repetitions, medians, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'loss':28s} {'time':>10s} {'ratio':>6s}   {'saved for backward':>18s} {'ratio':>6s}")
    for k, ts in times.items():
        m = statistics.median(ts)
        print(f"{k:28s} {m * 1e3:7.1f} ms {m / base:6.2f}   {memory[k] / 2**20:15.1f} MiB {memory[k] / base_mem:6.2f}")


if __name__ == '__main__':
    main()
