"""The notebooks as a researcher runs them: headless with papermill, from the repository root, with the venv's kernel.

- every notebook runs top to bottom under papermill with its defaults (its `parameters` cell holds smoke-sized
  values; notebooks listed in SMOKE_FLAGS get their smoke flag), in a real kernel started from the repository root,
  `#| eval: false` cells included; cells flagged `#| slow` / `#| cuda` (settings.ini `tst_flags`) are left out as
  nbdev_test leaves them out, unless GOL_TEST_FLAGS names the flag (`make test-slow` sets it). `make test` runs the
  papermill notebooks (those with a `parameters` cell) only here: tools/test_all.py keeps them out of nbdev_test;
- `papermill --help-notebook` lists every parameter of every `parameters` cell, with a type and a help text, and
  papermill warns about no line of it;
- list parameters given with `-p` as YAML/JSON strings reach the notebook as lists, and a malformed one stops the
  run with an error naming the parameter;
- the papermill command shown in each papermill notebook's header names only parameters that exist and prepares;
- the kernel `python3` named by every notebook runs this virtual environment's Python, whatever is first on PATH,
  and tqdm progress bars render as widgets there;
- asking a training notebook for GPUs where there are none stops in its first cells, naming the parameter;
- tools/readme_results.py writes the README's demo block from a run folder, and `--check` notices a stale block;
  the README's quick-start code runs.
"""
from __future__ import annotations
import ast, json, os, re, shlex, subprocess, sys, textwrap
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith('_'))
# notebooks whose defaults are not smoke-sized: the -p flags that make them so (their owners name the flag)
SMOKE_FLAGS: dict[str, list[str]] = {'09_ablations': ['-p', 'smoke', 'true'], '10_model_analysis': ['-p', 'smoke', 'true']}
TIMEOUT = 900  # s per notebook run; the slowest default run takes about a minute on an idle 2-core machine
TST_FLAGS = set(re.search(r'^tst_flags\s*=\s*(.*)$', (ROOT / 'settings.ini').read_text(), re.M).group(1).split())
RUN_FLAGS = set(os.environ.get('GOL_TEST_FLAGS', '').split())  # flagged cells to run anyway (make test-slow: slow)


def _papermill(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = TIMEOUT):
    "Run the papermill CLI of this venv; the kernel 'python3' then runs this venv's Python."
    e = dict(os.environ, **(env or {}))
    e.setdefault('MPLBACKEND', 'Agg')
    return subprocess.run([sys.executable, '-m', 'papermill', *args], cwd=cwd, env=e, capture_output=True, text=True,
                          timeout=timeout)


def _cells(nb: Path):
    return nbformat.read(nb, as_version=4).cells


def _parameters_cell(nb: Path):
    cells = [c for c in _cells(nb) if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(cells) <= 1, f"{nb.name}: more than one cell tagged 'parameters'"
    return cells[0] if cells else None


PAPERMILL_NBS = [nb for nb in NBS if _parameters_cell(nb) is not None]


def _declared(nb: Path) -> list[str]:
    "Names assigned at top level in the notebook's parameters cell."
    tree = ast.parse(_parameters_cell(nb).source)
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def _help(nb: Path) -> tuple[dict[str, tuple[str, str]], str]:
    "{name: (type, help)} as papermill infers them for `--help-notebook`, and what the CLI printed."
    from papermill import inspect_notebook
    p = _papermill('--help-notebook', str(nb.relative_to(ROOT)), timeout=120)
    params = {n: (r['inferred_type_name'], r['help']) for n, r in inspect_notebook(str(nb)).items()}
    return params, p.stdout + p.stderr


@pytest.mark.parametrize('nb', PAPERMILL_NBS, ids=lambda p: p.stem)
def test_help_notebook_lists_every_parameter_with_a_type(nb):
    params, out = _help(nb)
    assert 'Unable to parse line' not in out, f"{nb.name}: papermill skips a parameter line (an '=' in its comment?):\n{out}"
    declared = _declared(nb)
    assert declared, f"{nb.name}: the parameters cell assigns nothing"
    assert list(params) == declared, f"{nb.name}: --help-notebook lists {list(params)}, the cell assigns {declared}"
    untyped = [n for n, (t, _) in params.items() if t == 'Unknown type']
    assert not untyped, f"{nb.name}: parameters without a type (write `name: type = value`): {untyped}"
    undocumented = [n for n, (_, h) in params.items() if not h]
    assert not undocumented, f"{nb.name}: parameters without a help comment: {undocumented}"
    listed = re.findall(r'^  (\w+): ', out, re.M)
    assert listed == declared, f"{nb.name}: `papermill --help-notebook` prints {listed}"
    assert 'Unknown type' not in out, out


def _header_commands(nb: Path) -> list[list[str]]:
    "The papermill commands (as argument lists after `papermill`) in the markdown cells above the parameters cell."
    cmds = []
    for c in _cells(nb):
        if 'parameters' in c.get('metadata', {}).get('tags', []): break
        if c.cell_type != 'markdown': continue
        for block in re.findall(r'```(?:bash|sh)?\n(.*?)```', c.source, re.S):
            for part in re.split(r'&&|;|\n(?!\s)', block.replace('\\\n', ' ')):
                words = shlex.split(part)
                if words and Path(words[0]).name == 'papermill': cmds.append(words[1:])
    return cmds


@pytest.mark.parametrize('nb', PAPERMILL_NBS, ids=lambda p: p.stem)
def test_header_shows_a_working_papermill_command(nb, tmp_path):
    cmds = _header_commands(nb)
    assert cmds, f"{nb.name}: its header (markdown above the parameters cell) shows no ```bash papermill ...``` command"
    declared = set(_declared(nb))
    for args in cmds:
        names = [args[i + 1] for i, a in enumerate(args) if a in ('-p', '-r', '--parameters', '--parameters_raw')]
        unknown = [n for n in names if n not in declared]
        assert not unknown, f"{nb.name}: the header command passes unknown parameters {unknown}: {shlex.join(args)}"
        inp = [a for a in args if a.endswith('.ipynb')]
        assert inp and (ROOT / inp[0]).resolve() == nb.resolve(), f"{nb.name}: header command runs {inp}"
        args = [str(tmp_path / 'out.ipynb') if a == inp[1] else a for a in args] if len(inp) > 1 else args
        p = _papermill('--prepare-only', *args, timeout=120)
        assert p.returncode == 0, f"{nb.name}: `papermill --prepare-only {shlex.join(args)}` failed:\n{p.stderr[-3000:]}"
        assert 'Passed unknown parameter' not in p.stderr, p.stderr


def _skipped_flag(source: str) -> str | None:
    "The nbdev test flag (`#| slow`, `#| cuda`) that keeps this cell out of a default test run, if any."
    for line in source.splitlines():
        m = re.match(r'^#\|\s*(\w+)\s*$', line.strip())
        if m and m.group(1) in TST_FLAGS and m.group(1) not in RUN_FLAGS: return m.group(1)
        if line.strip() and not line.startswith('#'): break
    return None


def _runnable(nb: Path, tmp_path: Path) -> Path:
    "The notebook itself, or a copy in tmp_path whose flagged cells say they were skipped."
    node = nbformat.read(nb, as_version=4)
    skipped = 0
    for c in node.cells:
        flag = c.cell_type == 'code' and _skipped_flag(c.source)
        if flag:
            c.source = f"# cell flagged `#| {flag}`: skipped (GOL_TEST_FLAGS={flag} or make test-slow runs it)"; skipped += 1
    if not skipped: return nb
    nbformat.write(node, tmp_path / nb.name)
    return tmp_path / nb.name


def test_flagged_cells_are_recognised():
    assert {'slow', 'cuda'} <= TST_FLAGS
    assert _skipped_flag('#| slow\nx = 1') == ('slow' if 'slow' not in RUN_FLAGS else None)
    assert _skipped_flag('#| export\n#|cuda\nx = 1') == ('cuda' if 'cuda' not in RUN_FLAGS else None)
    assert _skipped_flag('x = 1\n#| slow') is None and _skipped_flag('#| eval: false\nmain()') is None


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.stem)
def test_notebook_runs_under_papermill_with_defaults(nb, tmp_path):
    out = tmp_path / 'out' / nb.name
    out.parent.mkdir()
    p = _papermill(str(_runnable(nb, tmp_path)), str(out), *SMOKE_FLAGS.get(nb.stem, []))
    tail = (p.stdout + p.stderr)[-6000:]
    assert p.returncode == 0, f"{nb.name} fails under papermill (run from the repository root):\n{tail}"
    assert 'Unable to parse line' not in p.stderr and 'Passed unknown parameter' not in p.stderr, tail
    text = out.read_text()
    assert 'IProgress not found' not in text, f"{nb.name}: tqdm could not draw a widget (ipywidgets missing?)"


def _outputs_text(path: Path) -> str:
    "All text and text/plain outputs of an executed notebook."
    parts = []
    for c in nbformat.read(path, as_version=4).cells:
        for o in c.get('outputs', []):
            parts.append(o.get('text', '') if isinstance(o.get('text', ''), str) else ''.join(o['text']))
            parts.append(o.get('data', {}).get('text/plain', ''))
            if o.get('output_type') == 'error': parts.append(o.get('ename', '') + ': ' + o.get('evalue', ''))
    return '\n'.join(parts)


def test_list_parameters_given_as_strings_reach_the_notebook(tmp_path):
    "07 with every list parameter given as a YAML/JSON string, as `-p` passes it: one IF, one seed, two variants."
    out = tmp_path / '07.ipynb'
    p = _papermill('nbs/07_lt_classification.ipynb', str(out), '-p', 'imb_factors', '[20]', '-p', 'seeds', '[3]',
                   '-p', 'variants', "['softmax_e2e', 'gumbel_decoupled']", '-p', 'epochs', '1',
                   '-p', 'stage2_epochs', '1', '-p', 'overrides', '["max_iters=3", "batch_size=32"]',
                   '-p', 'output_dir', str(tmp_path / 'runs'))
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    runs = sorted(str(q.relative_to(tmp_path / 'runs')) for q in (tmp_path / 'runs').glob('*/*/*/config.yaml'))
    assert runs == ['if20/seed3/gumbel_decoupled/config.yaml', 'if20/seed3/softmax_e2e/config.yaml'], runs
    cfg = (tmp_path / 'runs/if20/seed3/softmax_e2e/config.yaml').read_text()
    assert re.search(r'^max_iters: 3$', cfg, re.M) and re.search(r'^batch_size: 32$', cfg, re.M), cfg
    assert 'IF 20' in _outputs_text(out)


def test_a_malformed_list_parameter_is_named(tmp_path):
    p = _papermill('nbs/07_lt_classification.ipynb', str(tmp_path / '07.ipynb'), '-p', 'seeds', '[0, x]',
                   '-p', 'output_dir', str(tmp_path / 'runs'), timeout=300)
    assert p.returncode != 0
    assert "ParameterError: parameter 'seeds': item 1 must be an integer, got 'x'" in p.stdout + p.stderr
    assert not (tmp_path / 'runs' / 'if10').exists()  # stopped before any training


def test_extra_overrides_reach_the_detection_config(tmp_path):
    "05 with `-p extra` as a YAML list string: the run's config.yaml holds the overridden loss and seed."
    run = tmp_path / 'run'
    p = _papermill('nbs/05_train_gol.ipynb', str(tmp_path / '05.ipynb'), '-p', 'output_dir', str(run),
                   '-p', 'extra', "['loss=sigmoid', 'seed=7']", '-p', 'max_iters', '2')
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    cfg = (run / 'config.yaml').read_text()
    assert re.search(r'^loss: sigmoid$', cfg, re.M) and re.search(r'^seed: 7$', cfg, re.M), cfg


KERNEL_PROBE = textwrap.dedent('''\
    import sys, io, contextlib
    print('prefix', sys.prefix)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        from tqdm.auto import tqdm
        bar = tqdm(range(3), desc='probe'); list(bar)
    import tqdm.notebook
    print('widget bar', isinstance(bar, tqdm.notebook.tqdm), 'stderr', repr(err.getvalue()[:200]))
    ''')


def test_kernel_python3_runs_this_venv_and_draws_widgets(tmp_path):
    "The notebooks' kernelspec 'python3', started by this venv's papermill with the venv NOT on PATH."
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(KERNEL_PROBE)])
    nb.metadata['kernelspec'] = json.loads((ROOT / 'nbs' / '00_activations.ipynb').read_text())['metadata']['kernelspec']
    nbformat.write(nb, tmp_path / 'probe.ipynb')
    path = os.pathsep.join(d for d in os.environ.get('PATH', '').split(os.pathsep)
                           if Path(d).resolve() != Path(sys.executable).parent.resolve())
    p = _papermill(str(tmp_path / 'probe.ipynb'), str(tmp_path / 'out.ipynb'), env={'PATH': path}, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    text = _outputs_text(tmp_path / 'out.ipynb')
    assert f"prefix {sys.prefix}" in text, f"the kernel did not run {sys.prefix}:\n{text}"
    assert 'widget bar True' in text and 'IProgress' not in text, text
    views = [o for c in nbformat.read(tmp_path / 'out.ipynb', as_version=4).cells for o in c.outputs
             if 'application/vnd.jupyter.widget-view+json' in o.get('data', {})]
    assert views, 'the progress bar left no widget output'


def test_every_notebook_names_the_python3_kernel():
    for nb in NBS:
        spec = json.loads(nb.read_text())['metadata'].get('kernelspec', {})
        assert spec.get('name') == 'python3', f"{nb.name}: kernelspec {spec} (papermill and `make lab` use 'python3')"


def _fake_run(run: Path, load: float):
    run.mkdir(parents=True)
    (run / 'metrics.json').write_text(json.dumps({'AP': .4625, 'APr': .414, 'APc': .468, 'APf': .78, 'APb': .514,
                                                 'bbox_APr': .4, 'bbox_APc': .5, 'bbox_APf': -1.0, 'iterations': 120}))
    (run / 'config.yaml').write_text('# backbone_weights: none\npreset: demo_cpu\nloss: gol\nbackbone: resnet18\n'
                                     "epochs: 12\nbatch_size: 4\ntrain_ann: ''\nsynth_num_train: 400\nsynth_num_val: 100\n"
                                     'pretrained: IMAGENET1K_V1\n')  # asked for, but the comment says none was loaded
    (run / 'per_class_ap.csv').write_text('category_id,frequency\n1,r\n2,r\n3,c\n4,f\n')
    (run / 'run_info.json').write_text(json.dumps({'wall_s': 210.0, 'device': 'a 2-core CPU', 'cpu_count': 2,
                                                   'load_average': load}))


def test_readme_results_block_is_generated_from_the_run(tmp_path):
    sys.path.insert(0, str(ROOT / 'tools'))
    try: import readme_results
    finally: sys.path.pop(0)
    run = tmp_path / 'demo'; _fake_run(run, load=5.0)
    readme = tmp_path / 'README.md'
    readme.write_text(f"intro\n{readme_results.BEGIN}\nold text\n{readme_results.END}\nrest\n")
    assert readme_results.main(['--run', str(run), '--readme', str(readme), '--check']) == 1  # stale block noticed
    assert readme_results.main(['--run', str(run), '--readme', str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith('intro\n') and text.endswith('rest\n') and 'old text' not in text
    assert '| 46.2 | 41.4 | 46.8 | 78.0 | 51.4 | 40.0 | 50.0 | n/a |' in text
    assert '4 classes: 2 rare / 1 common / 1 frequent' in text and 'It took 3.5 min on a 2-core CPU.' in text
    assert 'load average 5.0 on 2 cores' in text and '400 training images' in text and 'from random init' in text
    assert readme_results.main(['--run', str(run), '--readme', str(readme), '--check']) == 0
    (run / 'metrics.json').unlink()
    with pytest.raises(SystemExit, match='run `make demo` first'): readme_results.results_block(run)


@pytest.mark.skipif(__import__('torch').cuda.device_count() > 0, reason='GPUs are visible here')
@pytest.mark.parametrize('nb', ['05_train_gol', '07_lt_classification'])
def test_gpus_without_gpus_stop_at_once(nb, tmp_path):
    run = tmp_path / 'run'
    p = _papermill(f'nbs/{nb}.ipynb', str(tmp_path / 'out.ipynb'), '-p', 'gpus', '2', '-p', 'output_dir', str(run),
                   timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "DeviceError: parameter 'gpus' is 2: 2 process(es) on GPUs asked for" in out, out[-3000:]
    assert not run.exists() or not any(run.iterdir()), 'the notebook wrote into the run folder before failing'


def test_readme_quick_start_runs(tmp_path):
    "The first python block of README.md, as a user pastes it."
    code = re.search(r'```python\n(.*?)```', (ROOT / 'README.md').read_text(), re.S).group(1)
    (tmp_path / 'quick.py').write_text(code + '\nassert loss.requires_grad and scores.shape == (512, C)\n')
    p = subprocess.run([sys.executable, str(tmp_path / 'quick.py')], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def test_engine_mmdet_trains_through_the_notebook(tmp_path):
    "05 with `-p engine mmdet`: the mmdetection runner trains a paper config (smoke settings) into the run folder."
    run = tmp_path / 'run'
    p = _papermill('nbs/05_train_gol.ipynb', str(tmp_path / '05.ipynb'), '-p', 'engine', 'mmdet',
                   '-p', 'preset', 'mmdet_gol_r50_lvis_v1_2x', '-p', 'output_dir', str(run))
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    metrics = json.loads((run / 'metrics.json').read_text())
    assert {'AP', 'APr', 'APc', 'APf', 'APb'} <= set(metrics)
    assert json.loads((run / 'run_info.json').read_text())['engine'] == 'mmdet'
