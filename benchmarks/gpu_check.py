"""The GPU check: what only a machine with GPUs can show, in one script of at most ~8 minutes.

Prints each figure as it is measured and writes them all to gpu_check.json (`--out`):
1. losses: GumbelBCE and GOL forward+backward against `binary_cross_entropy_with_logits` at 8192 x 1204, eager and
   fused (torch.compile); target <= 1.2x on a GPU.
2. presets: one fp32 and one bf16 (autocast) training step of every paper preset at paper image size (800 x 1333)
   on synthetic images, random weights, 1,203 classes: loss, time and peak GPU memory.
3. eval: the evaluation benchmark (gol_nb's evaluator against lvis-api, files in, metrics out).
4. torchrun: a 2-GPU launch of the demo preset (only where there are 2 GPUs).
5. mmdet: one mmdetection training step on CUDA where mmcv has its CUDA ops; otherwise the command that builds them.
A step that fails is recorded with its error and the others still run; the exit status is 1 when one failed.

    make gpu-check                               # on the GPU machine
    make gpu-check ARGS='--cpu --quick'          # the CPU smoke of the same script (CI runs it)
"""
from __future__ import annotations
import argparse, contextlib, json, os, subprocess, sys, tempfile, time, traceback, warnings
from pathlib import Path
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_losses import measure_losses, print_losses  # noqa: E402
from gol_nb.engine import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICK_PRESETS = ('gumbel_r50_1x', 'gol_r50_lvis_v1_2x')  # one Gumbel-activation and one GOL head
MMCV_CUDA_BUILD = 'rm -f .venv/.mmdet-installed && FORCE_CUDA=1 make mmdet'


def environment(device: torch.device) -> dict:
    "Versions and devices: what the figures were measured on."
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if device.type == 'cuda' else []
    return dict(device=str(device), torch=torch.__version__, cuda=torch.version.cuda, gpus=gpus,
                bf16=device.type == 'cpu' or torch.cuda.is_bf16_supported(), cpus=os.cpu_count())


def loss_check(device: torch.device, quick: bool) -> dict:
    "The loss benchmark; on a GPU also whether GumbelBCE and GOL meet the 1.2x target."
    r = measure_losses(rows=1024 if quick else 8192, classes=1204, reps=3 if quick else 15, device=str(device),
                       fused=not quick)
    print_losses(r)
    keys = [k for k in r['losses'] if k.startswith(('GumbelBCE', 'GOL'))]
    r['target_1.2x_met'] = {k: r['losses'][k]['ratio'] <= 1.2 for k in keys} if device.type == 'cuda' else None
    return r


def synthetic_stats(num_classes: int = 1203):
    "LVIS v1's class-frequency shape: 337 rare, 461 common, the rest frequent, of 100,000 images."
    from gol_nb.data import ClassStatistics
    rng = np.random.default_rng(0)
    n_r, n_c = round(num_classes * 337 / 1203), round(num_classes * 461 / 1203)
    counts = np.concatenate([rng.integers(1, 11, n_r), rng.integers(11, 101, n_c),
                             rng.integers(101, 20_000, num_classes - n_r - n_c)]).astype(np.int64)
    freq = ['r'] * n_r + ['c'] * n_c + ['f'] * (num_classes - n_r - n_c)
    return ClassStatistics(np.arange(1, num_classes + 1), counts, 100_000, freq)


def synthetic_batch(size: tuple, num_classes: int, batch: int, device: torch.device):
    "Random images of `size` (h, w) with a few boxes, masks and polygons each, on `device`."
    from gol_nb.detection import tiny_targets
    side = max(size)
    imgs, tgts = tiny_targets(batch, side, num_classes)
    imgs = [im[:, :size[0], :size[1]].to(device) for im in imgs]
    for t in tgts:
        t['boxes'] = t['boxes'].clamp(max=min(size) - 1); t['masks'] = t['masks'][:, :size[0], :size[1]]
    return imgs, [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in tgts]


def one_step(model, opt, imgs, tgts, dtype, device) -> dict:
    "One training step (forward, backward, SGD step) under autocast in `dtype` (fp32: none): loss, time, memory."
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(); torch.cuda.synchronize()
    amp = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext())
    t = time.perf_counter()
    with amp: losses = model(imgs, tgts)
    loss = sum(losses.values())
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    if device.type == 'cuda': torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == 'cuda' else None
    loss = loss.detach()
    return dict(loss=float(loss), finite=bool(torch.isfinite(loss)), seconds=time.perf_counter() - t, peak_gib=peak)


def preset_check(device: torch.device, quick: bool) -> dict:
    """A fp32 and a bf16 step of each preset (quick: two presets, ResNet-18, 128 x 192, eager losses) on synthetic images;
    on a GPU a first untimed step per precision (the fused losses compile there)."""
    from gol_nb.detection import PRESETS, get_config, detector_from_config
    names = QUICK_PRESETS if quick else [n for n in PRESETS if n != 'demo_cpu']
    size, stats = ((128, 192) if quick else (800, 1333)), synthetic_stats()
    out = {}
    for name in names:
        # CPU smoke: compiling the fused kernel and bf16 convolutions (emulated without AVX-512) take minutes there
        eager = ['fused_loss=false', 'backbone=resnet18'] if quick else []
        cfg = get_config(name, ['pretrained=none', f'train_scales=[{size[0]}]', f'max_size={size[1]}', *eager])
        torch.manual_seed(0)
        model = detector_from_config(cfg, stats).to(device).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        imgs, tgts = synthetic_batch(size, len(stats.category_ids), 1 if quick else 2, device)
        out[name] = {}
        for dt in (torch.float32, torch.bfloat16):
            if not quick: one_step(model, opt, imgs, tgts, dt, device)  # warm-up: compilation, cuDNN autotuning
            out[name][str(dt).split('.')[-1]] = one_step(model, opt, imgs, tgts, dt, device)
        print(f"  {name:28s} " + '   '.join(f"{k}: loss {v['loss']:.3f} {v['seconds']:.2f} s"
                                            + (f" {v['peak_gib']:.1f} GiB" if v['peak_gib'] else '')
                                            for k, v in out[name].items()), flush=True)
        del model, opt
        if device.type == 'cuda': torch.cuda.empty_cache()
    return dict(image_size=list(size), presets=out, all_finite=all(s['finite'] for p in out.values()
                                                                   for s in p.values()))


def run_command(cmd: list, timeout: int, env: dict | None = None) -> dict:
    "Run a command from the repository root; its status, time and the last lines of its output."
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    tail = (p.stdout + p.stderr).strip().splitlines()[-15:]
    for line in tail: print('   ', line)
    if p.returncode: raise RuntimeError(f"{' '.join(cmd)} exited with {p.returncode}: {tail[-1] if tail else ''}")
    return dict(command=' '.join(cmd), seconds=time.perf_counter() - t, output_tail=tail)


def eval_check(device: torch.device, quick: bool) -> dict:
    "The evaluation benchmark in a fresh process (its own memory figures)."
    args = ['--images', '200' if quick else '2000'] + (['--skip-val'] if quick else ['--val-images', '19809'])
    return run_command([sys.executable, 'benchmarks/bench_eval.py', *args], timeout=300 if quick else 900)


def torchrun_check(device: torch.device, quick: bool) -> dict:
    "The demo preset for a few iterations on 2 GPUs under torchrun (skipped with fewer GPUs)."
    if device.type != 'cuda' or torch.cuda.device_count() < 2:
        return dict(skipped='needs 2 GPUs (the CPU multi-process launch is covered by the tests)')
    with tempfile.TemporaryDirectory(prefix='gpu_check_') as tmp:
        return run_command([sys.executable, '-m', 'gol_nb.cli', '--config', 'demo_cpu', '--nproc', '2', 'device=cuda',
                            'max_iters=20', f'output_dir={tmp}/run'], timeout=600)


def mmdet_check(device: torch.device, quick: bool) -> dict:
    "One mmdetection training step on CUDA, or why not and the command that makes it possible."
    try: import mmcv.ops as ops
    except ImportError: return dict(skipped='the mmdetection engine is not installed: run `make mmdet`')
    cuda_ops = ops.get_compiling_cuda_version() != 'not available'
    if device.type != 'cuda': return dict(skipped='no GPU', mmcv_cuda_ops=cuda_ops)
    if not cuda_ops:
        return dict(skipped='mmcv was built without CUDA ops', mmcv_cuda_ops=False, build_command=MMCV_CUDA_BUILD)
    with tempfile.TemporaryDirectory(prefix='gpu_check_') as tmp:
        r = run_command([sys.executable, '-m', 'gol_nb.cli', '--engine', 'mmdet', '--config', 'gol_cascade_r50',
                         'device=cuda', 'max_iters=2', f'output_dir={tmp}/run'], timeout=600)
    return dict(r, mmcv_cuda_ops=True)


CHECKS = dict(losses=loss_check, presets=preset_check, eval=eval_check, torchrun=torchrun_check, mmdet=mmdet_check)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--cpu', action='store_true', help='run on the CPU (the smoke of this script)')
    ap.add_argument('--quick', action='store_true', help='small sizes, two presets, no compile, no val-scale eval')
    ap.add_argument('--only', nargs='+', choices=list(CHECKS), help='run only these checks')
    ap.add_argument('--out', default='outputs/gpu_check.json', help='where the figures are written')
    a = ap.parse_args(argv)
    if not a.cpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no GPU is visible to torch; run it on the GPU machine or with --cpu (a smoke run)")
    device = torch.device('cpu' if a.cpu else 'cuda')
    warnings.filterwarnings('ignore', message='backbone')  # random weights under norm_eval: expected here
    report, t0 = dict(environment=environment(device), quick=a.quick), time.perf_counter()
    print(f"gpu_check on {device}: {report['environment']}", flush=True)
    for name in a.only or CHECKS:
        print(f"\n== {name}", flush=True)
        t = time.perf_counter()
        try: report[name] = dict(CHECKS[name](device, a.quick), status='ok')
        except Exception as e:
            traceback.print_exc()
            report[name] = dict(status='failed', error=f"{type(e).__name__}: {e}")
        if 'skipped' in report[name]: report[name]['status'] = 'skipped'
        report[name]['check_seconds'] = time.perf_counter() - t
        print(f"== {name}: {report[name]['status']} ({report[name]['check_seconds']:.0f} s)", flush=True)
    report['seconds'] = time.perf_counter() - t0
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, report)
    failed = [k for k in CHECKS if report.get(k, {}).get('status') == 'failed']
    print(f"\ngpu_check: {report['seconds']:.0f} s, written to {a.out}; "
          + (f"failed: {', '.join(failed)}" if failed else 'no check failed'))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
