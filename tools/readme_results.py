"""Write the README's demo results block from what `make demo` produced (never typed by hand).

Reads the demo's run folder (default `outputs/demo_cpu`): `metrics.json` (AP figures), `config.yaml` (preset, loss,
backbone, data sizes), `per_class_ap.csv` (the classes and their r/c/f group) and `run_info.json` (wall time, device
and machine load, written by nbs/05_train_gol.ipynb), and replaces the text between the markers
`<!-- demo-results:begin -->` and `<!-- demo-results:end -->` in README.md. `--check` only compares, and exits 1 if
the README's block is not what the run folder gives. Run it as `make readme` (after `make demo`).

The block states the machine the figures come from (CPU model, cores, torch threads), the wall time and the CPU time,
because both differ by machine: torch's CPU kernels sum in an order that depends on the thread count and on the
instruction set they dispatch to (AVX2, AVX-512), so the first losses differ in the 7th digit and 6 epochs of training
grow that into different APs. `--also RUN ...` adds the demo runs of other machines (their run folders, e.g. copied
from another computer): the block then gives the spread of every figure over all of them.
"""
from __future__ import annotations
import argparse, csv, json, re, sys
from pathlib import Path

import yaml

from readme_block import rel, update_readme

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = '<!-- demo-results:begin -->', '<!-- demo-results:end -->'
GROUPS = (('r', 'rare'), ('c', 'common'), ('f', 'frequent'))


def _read(run: Path, name: str):
    path = run / name
    if not path.is_file():
        raise SystemExit(f"readme_results: {path} not found; run `make demo` first (it writes {run}/)")
    text = path.read_text(encoding='utf-8')
    if name.endswith('.json'): return json.loads(text)
    if name.endswith('.yaml'): return yaml.safe_load(text)
    return list(csv.DictReader(text.splitlines()))


def _pct(v: float) -> str:
    "AP as a percentage with one decimal; LVIS marks a group without ground truth with -1."
    return 'n/a' if v is None or v < 0 else f"{100 * v:.1f}"


def _images(cfg: dict, split: str) -> int:
    "Number of images of the run's train or val set (the synthetic set's size, or the annotation file's)."
    if not cfg.get('train_ann'): return int(cfg[f'synth_num_{split}'])
    return len(json.loads(Path(cfg[f'{split}_ann']).read_text(encoding='utf-8'))['images'])


def _machine(info: dict) -> str:
    "Where the run ran and how long it took: wall time, and CPU time when the run recorded it."
    minutes = info['wall_s'] / 60
    if info.get('cpu_s') is None: return f"It took {minutes:.1f} min on {info['device']}."
    threads = f", {info['torch_threads']} torch threads" if info.get('torch_threads') else ''
    return (f"It took {minutes:.1f} min of wall time and {info['cpu_s'] / 60:.1f} min of CPU time on {info['device']}"
            f"{threads}.")


KEYS = ('AP', 'APr', 'APc', 'APf', 'APb', 'bbox_APr', 'bbox_APc', 'bbox_APf')
NAMES = dict(AP='mask AP', APb='box AP')


def spread_sentence(runs: list[Path]) -> str:
    "How much the figures vary: their range over the demo runs given (several machines), or why they vary."
    if len(runs) < 2:
        return ("Another CPU model or thread count gives other figures (floating-point sums are reduced in another "
                "order, and training grows the difference): `--also` with other machines' runs states the spread.")
    infos = [_read(r, 'run_info.json') for r in runs]
    mets = [_read(r, 'metrics.json') for r in runs]
    rng = lambda k: f"{_pct(min(m[k] for m in mets))}-{_pct(max(m[k] for m in mets))}"
    cpus = sorted({i.get('cpu_model') or i['device'] for i in infos})
    return (f"Over {len(runs)} demo runs on {len(cpus)} machine class(es) ({'; '.join(cpus)}): "
            + ', '.join(f"{NAMES.get(k, k)} {rng(k)}" for k in ('AP', 'APr', 'APc', 'APf', 'APb'))
            + f"; wall time {min(i['wall_s'] for i in infos) / 60:.1f}-{max(i['wall_s'] for i in infos) / 60:.1f} min.")


def results_block(run: Path, also: list[Path] = ()) -> str:
    "The README text (markdown, between the markers) for the demo run in `run` (and the spread over `also`)."
    metrics, cfg = _read(run, 'metrics.json'), _read(run, 'config.yaml')
    classes, info = _read(run, 'per_class_ap.csv'), _read(run, 'run_info.json')
    split = {g: sum(r['frequency'] == g for r in classes) for g, _ in GROUPS}
    data = 'the embedded synthetic long-tailed LVIS set' if not cfg.get('train_ann') else f"`{cfg['train_ann']}`"
    # what was loaded: the trainer's comment line '# backbone_weights: ...' atop config.yaml; else what was asked for
    loaded = re.search(r'^# backbone_weights: (.+)$', (run / 'config.yaml').read_text(encoding='utf-8'), re.M)
    weights = loaded.group(1).strip() if loaded else str(cfg.get('pretrained') or 'none')
    init = 'random initialisation' if weights.lower() == 'none' else f"`{weights}` weights"
    load = info.get('load_average')
    nice = f", at nice {info['nice']}" if info.get('nice') else ''
    busy = (f" The machine was shared with other work during the run (load average {load:.1f} on {info['cpu_count']} "
            f"cores at its end{nice}), so an idle machine is faster." if load is not None and load > info['cpu_count'] else '')
    lines = [
        f"`make demo` trained preset `{cfg['preset']}`: Mask R-CNN with the `{cfg['loss']}` loss, {cfg['backbone']} FPN "
        f"from {init}, {cfg['epochs']} epochs ({metrics['iterations']} iterations of batch {cfg['batch_size']}) on "
        f"{_images(cfg, 'train')} training images of {data} ({len(classes)} classes: "
        + ' / '.join(f"{split[g]} {name}" for g, name in GROUPS)
        + f" by training-image count), evaluated on {_images(cfg, 'val')} validation images. "
        f"{_machine(info)}{busy} {spread_sentence([run, *also])}",
        '',
        '| mask AP | APr | APc | APf | box AP | box APr | box APc | box APf |',
        '|---|---|---|---|---|---|---|---|',
        '| ' + ' | '.join(_pct(metrics.get(k)) for k in KEYS) + ' |',
        '',
        f"(Generated by `tools/readme_results.py` from `{rel(run)}/`; AP x 100 on the validation images.)",
    ]
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--run', default=str(ROOT / 'outputs' / 'demo_cpu'), help='the demo run folder')
    ap.add_argument('--readme', default=str(ROOT / 'README.md'), help='the README to update')
    ap.add_argument('--check', action='store_true', help='compare only; exit 1 if the README differs')
    ap.add_argument('--also', nargs='*', default=[], metavar='RUN',
                    help="other machines' demo run folders (the block then gives the spread)")
    a = ap.parse_args(argv)
    block = results_block(Path(a.run), [Path(r) for r in a.also])
    return update_readme(Path(a.readme), block, (BEGIN, END), 'readme_results', 'demo results', a.run, a.check,
                         'make readme')


if __name__ == '__main__':
    sys.exit(main())
