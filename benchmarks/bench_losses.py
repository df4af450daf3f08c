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


def loss_cases(N, C, device, fg=.25, fused=True) -> dict:
    "Name -> a function returning the reduced loss on shared (N, C) logits; the first is the BCE reference."
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(N, C, generator=g) * 2 - 4).to(device).requires_grad_()
    labels = torch.where(torch.rand(N, generator=g) < fg, torch.randint(0, C, (N,), generator=g), C).to(device)
    onehot = _one_hot(labels, C)
    # LVIS v1 shape: 337 rare (1-10 images), 461 common (11-100), frequent (> 100) of 100k training images
    n_r, n_c = round(C * 337 / 1203), round(C * 461 / 1203)
    counts = torch.cat([torch.randint(1, 11, (n_r,), generator=g), torch.randint(11, 101, (n_c,), generator=g),
                        torch.randint(101, 20_000, (C - n_r - n_c,), generator=g)])
    gol_args = dict(num_images=100_000, generator=torch.Generator(device).manual_seed(0))
    gumbel, gol, focal = GumbelBCE(C).to(device), GOL(C, counts, **gol_args).to(device), GumbelFocalLoss(C).to(device)
    cases = {
        'bce_with_logits (one-hot)': lambda: F.binary_cross_entropy_with_logits(logits, onehot, reduction='sum') / N,
        'GumbelBCE (one-hot)': lambda: gumbel(logits, onehot, avg_factor=N),
        'GumbelBCE (labels)': lambda: gumbel(logits, labels, avg_factor=N),
        'GOL (labels)': lambda: gol(logits, labels, avg_factor=N),
        'GumbelFocal (labels)': lambda: focal(logits, labels, avg_factor=N),
    }
    if fused:
        gumbel_fused, gol_fused = GumbelBCE(C, fused=True).to(device), GOL(C, counts, **gol_args, fused=True).to(device)
        cases['GumbelBCE fused (labels)'] = lambda: gumbel_fused(logits, labels, avg_factor=N)
        cases['GOL fused (labels)'] = lambda: gol_fused(logits, labels, avg_factor=N)
    cases['_logits'] = logits
    return cases


def measure_losses(rows=8192, classes=1204, reps=15, device='cpu', fg=.25, fused=True) -> dict:
    "Median forward+backward time and saved bytes of each loss, with ratios to bce_with_logits (side by side)."
    dev = torch.device(device)
    losses = loss_cases(rows, classes, dev, fg, fused)
    logits = losses.pop('_logits')
    t = time.perf_counter()
    for fn in losses.values(): fn().backward()  # warm-up (the fused losses compile here, cached on disk afterwards)
    warmup = time.perf_counter() - t
    memory = {k: saved_bytes(fn) for k, fn in losses.items()}
    times = {k: [] for k in losses}
    for _ in range(reps):
        for k, fn in losses.items():
            logits.grad = None
            times[k].append(timed(lambda: fn().backward(), dev))
    ref = 'bce_with_logits (one-hot)'
    base, base_mem = statistics.median(times[ref]), memory[ref]
    rows_out = {k: dict(ms=statistics.median(ts) * 1e3, ratio=statistics.median(ts) / base,
                        saved_mib=memory[k] / 2**20, saved_ratio=memory[k] / base_mem) for k, ts in times.items()}
    return dict(device=str(dev), rows=rows, classes=classes, reps=reps, warmup_s=warmup, losses=rows_out,
                torch=torch.__version__, threads=torch.get_num_threads())


def print_losses(r: dict) -> None:
    print(f"device {r['device']}, logits ({r['rows']} x {r['classes']}) fp32, forward + backward, {r['reps']} "
          f"interleaved repetitions, medians, torch {r['torch']}, threads {r['threads']}; first calls "
          f"{r['warmup_s']:.1f} s (with the fused losses, their torch.compile, cached on disk afterwards)")
    print(f"{'loss':28s} {'time':>10s} {'ratio':>6s}   {'saved for backward':>18s} {'ratio':>6s}")
    for k, v in r['losses'].items():
        print(f"{k:28s} {v['ms']:7.1f} ms {v['ratio']:6.2f}   {v['saved_mib']:15.1f} MiB {v['saved_ratio']:6.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rows', type=int, default=8192)
    ap.add_argument('--classes', type=int, default=1204, help='classifier channels (C)')
    ap.add_argument('--reps', type=int, default=15)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--fg', type=float, default=.25, help='share of foreground rows (mmdet samples 25%% positives)')
    ap.add_argument('--no-fused', action='store_true', help='skip the torch.compile rows')
    a = ap.parse_args()
    print_losses(measure_losses(a.rows, a.classes, a.reps, a.device, a.fg, not a.no_fused))

if __name__ == '__main__':
    main()
