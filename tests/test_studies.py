"Studies: a killed study does not repeat finished runs, a failing run is reported, the miniature LVIS's proportions."
import hashlib, json, os, signal, subprocess, sys, textwrap, time, warnings
from pathlib import Path
import numpy as np
import pytest
from gol_nb.data.lvis import load_lvis, class_statistics, frequency_group
from gol_nb.data.synthetic import make_mini_lvis, lvis_image_counts, MINI_LVIS
from gol_nb.studies import run_study, select_rows, study_table, describe_study, METRICS

warnings.filterwarnings('ignore', message='backbone')
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def data_root(tmp_path, monkeypatch):
    "The smoke miniature LVIS goes under a temporary GOL_DATA_ROOT."
    monkeypatch.setenv('GOL_DATA_ROOT', str(tmp_path / 'data'))
    return tmp_path / 'data'


# A fake trainer (in a file, so that a child process can import it): writes metrics, or hangs in the middle of a run
FAKE = '''
import json, os, sys, time
from pathlib import Path
from gol_nb.engine import save_config
from gol_nb.detection.presets import get_config
def train_fn(name, info, overrides, gpus):
    kv = dict(o.split('=', 1) for o in overrides)
    d = Path(kv['output_dir']); d.mkdir(parents=True, exist_ok=True)
    with open(d.parent.parent / 'calls.txt', 'a') as f: f.write(f"{name} {kv['seed']}\\n")
    if name == os.environ.get('HANG_AT'):
        (d / 'checkpoints').mkdir(exist_ok=True); (d / 'checkpoints' / 'iter_00000002.pth').write_bytes(b'x')
        time.sleep(120)  # killed here
    if name == os.environ.get('FAIL_AT'): raise RuntimeError(f'{name} diverged')
    m = {k: 0.1 + 0.01 * int(kv['seed']) for k in ('AP', 'APr', 'APc', 'APf', 'APb')}
    save_config(get_config(name, overrides), d / 'config.yaml')  # as the trainer writes it, before training
    (d / 'metrics.json').write_text(json.dumps(m))
    return m
'''

def study_script(out: Path, fake_dir: Path) -> str:
    return textwrap.dedent(f'''
        import sys; sys.path.insert(0, {str(fake_dir)!r})
        from fake_trainer import train_fn
        from gol_nb.studies import run_study
        run_study('activations', {str(out)!r}, [0], sampler='random', recipe='smoke', train_fn=train_fn)
    ''')


def calls(out: Path) -> list[str]:
    p = out / 'calls.txt'
    return p.read_text().split('\n')[:-1] if p.exists() else []


def test_killed_study_does_not_repeat_finished_runs(tmp_path, data_root):
    (tmp_path / 'fake_trainer.py').write_text(FAKE)
    sys.path.insert(0, str(tmp_path))
    from fake_trainer import train_fn
    rows = list(select_rows('activations', 'random'))
    out = tmp_path / 'study'
    env = {**os.environ, 'HANG_AT': rows[1]}
    child = subprocess.Popen([sys.executable, '-c', study_script(out, tmp_path)], env=env, cwd=ROOT)
    hang = out / rows[1] / 'seed0' / 'checkpoints' / 'iter_00000002.pth'
    t0 = time.time()
    while not hang.exists():
        assert child.poll() is None, 'the study process ended before reaching the second run'
        assert time.time() - t0 < 120, 'the study process did not reach the second run'
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL); child.wait()
    assert calls(out) == [f'{rows[0]} 0', f'{rows[1]} 0']
    first = out / rows[0] / 'seed0' / 'metrics.json'
    stamp = first.stat().st_mtime_ns
    log = []
    runs = run_study('activations', out, [0], sampler='random', recipe='smoke', train_fn=train_fn, log=log.append)
    assert list(runs['status']) == ['skipped', 'finished', 'finished']
    assert calls(out)[2:] == [f'{rows[1]} 0', f'{rows[2]} 0']  # the finished run was not trained again
    assert first.stat().st_mtime_ns == stamp
    assert any(l.startswith(f'{rows[1]} seed 0: resuming') for l in log), log


def test_failed_run_is_reported_and_the_rest_finish(tmp_path, data_root, monkeypatch):
    (tmp_path / 'fake_trainer.py').write_text(FAKE)
    sys.path.insert(0, str(tmp_path))
    from fake_trainer import train_fn
    rows = list(select_rows('activations', 'random'))
    monkeypatch.setenv('FAIL_AT', rows[0])
    runs = run_study('activations', tmp_path / 's', [0, 1], sampler='random', recipe='smoke', train_fn=train_fn,
                     log=lambda s: None)
    assert len(runs) == 6
    failed = runs[runs['status'] == 'failed']
    assert list(failed['preset']) == [rows[0]] * 2 and set(failed['error']) == {f'RuntimeError: {rows[0]} diverged'}
    assert (runs[runs['preset'] != rows[0]]['status'] == 'finished').all()
    t = study_table(runs)
    assert t.loc[rows[0], 'runs'] == '0/2' and np.isnan(t.loc[rows[0], 'AP'])
    assert t.loc[rows[1], 'runs'] == '2/2' and t.loc[rows[1], 'AP'] == pytest.approx(10.5)
    assert 'No finished run for' in describe_study(t)
    csv = (tmp_path / 's' / 'runs.csv').read_text()
    assert 'diverged' in csv  # the record on disk names the failure too


def test_real_run_crash_is_reported_then_resumed(tmp_path, data_root):
    "With the real trainer: a run that crashes mid-way is reported; run again, it resumes and finishes."
    row = list(select_rows('activations', 'random'))[-1]
    kw = dict(sampler='random', presets=[row], recipe='smoke', log=lambda s: None)
    runs = run_study('activations', tmp_path / 'r', [0], overrides=['stop_after=3', 'checkpoint_interval=2'], **kw)
    assert list(runs['status']) == ['failed'] and 'stop_after=3' in runs['error'][0]
    log = []
    runs = run_study('activations', tmp_path / 'r', [0], overrides=['accept_changes=[stop_after]'], **dict(kw, log=log.append))
    assert list(runs['status']) == ['finished'], runs['error'][0]
    assert any('resuming' in l for l in log)
    m = json.loads((tmp_path / 'r' / row / 'seed0' / 'metrics.json').read_text())
    assert set(METRICS) <= set(m) and all(-1 <= m[k] <= 1 for k in METRICS)
    # its detections, predicted again from the final weights and matched once, re-score its metrics.json
    from gol_nb.studies import study_summary
    s = study_summary(tmp_path / 'r', select_rows('activations', presets=[row]), resamples=20, log=lambda m: None)
    assert s.at[0, 'n_seeds'] == 1 and s.at[0, 'verdict_AP'] == 'no baseline'
    for k in ('AP', 'APr', 'APb'): assert s.at[0, f'{k}_rescored'] == pytest.approx(100 * m[k], abs=1e-6), k
    assert (tmp_path / 'r' / row / 'seed0' / 'analysis' / 'matching_segm.npz').exists()
    # the finished run is reused only for the same config: another model is reported, not silently skipped
    runs = run_study('activations', tmp_path / 'r', [0], overrides=['mask_head_dim=8'], **kw)
    assert list(runs['status']) == ['failed'] and 'finished run of another config' in runs['error'][0]
    assert 'mask_head_dim' in runs['error'][0]


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob('*')):
        if p.is_file(): h.update(p.relative_to(root).as_posix().encode()); h.update(p.read_bytes())
    return h.hexdigest()


def test_mini_lvis_proportions_and_determinism(tmp_path):
    a, b = make_mini_lvis(tmp_path / 'a'), make_mini_lvis(tmp_path / 'b')
    assert digest(tmp_path / 'a') == digest(tmp_path / 'b')
    train, val = load_lvis(a.train_json), load_lvis(a.val_json)
    st = class_statistics(train)
    assert len(st.category_ids) >= 100
    groups = {g: len(st.group(g)) for g in 'rcf'}
    assert groups == {'r': 28, 'c': 38, 'f': 34}  # LVIS v1: 337 / 461 / 405 of 1,203
    lvis = np.array([337, 461, 405]) / 1203
    assert np.abs(np.array(list(groups.values())) / 100 - lvis).max() < 0.01
    n = st.image_counts
    assert all(frequency_group(int(c)) == f for c, f in zip(n, st.frequency))  # r 1-10, c 11-100, f > 100
    assert n[st.group('r')].min() == 1 and n[st.group('r')].max() == 10 and n[st.group('f')].min() > 100
    assert sorted(n.tolist()) == sorted(lvis_image_counts(100, MINI_LVIS['max_image_count'])[0].tolist())
    per_image = np.bincount([x['image_id'] for x in train['annotations']])[1:]
    assert per_image.min() >= 3 and per_image.mean() > 6  # several objects per image
    side = np.sqrt([x['area'] for x in train['annotations']])
    assert side.max() / side.min() > 2.5  # sizes vary
    cx = np.array([x['bbox'][0] + x['bbox'][2] / 2 for x in train['annotations']]) / MINI_LVIS['image_size']
    assert cx.min() < 0.15 and cx.max() > 0.85  # positions spread over the image
    assert class_statistics(val, recompute_frequency=True).image_counts.min() >= MINI_LVIS['val_min_images']
    small = dict(num_classes=30, num_train=300, num_val=60, max_image_count=150)
    c, d = make_mini_lvis(tmp_path / 'c', seed=1, **small), make_mini_lvis(tmp_path / 'd', seed=0, **small)
    assert load_lvis(c.train_json)['annotations'] != load_lvis(d.train_json)['annotations']  # another seed, another set


def test_notebook_defaults_agree():
    "The analysis notebook trains (and reads) the same study as the ablation notebook's defaults."
    import papermill as pm
    p9 = pm.inspect_notebook(str(ROOT / 'nbs' / '09_ablations.ipynb'))
    p10 = pm.inspect_notebook(str(ROOT / 'nbs' / '10_model_analysis.ipynb'))
    for k in ('study', 'sampler', 'seeds', 'output_dir', 'smoke'):
        assert p9[k]['default'] == p10[k]['default'], k
    for p in (p9, p10):
        assert all(v['inferred_type_name'] != 'None' for v in p.values()), p


def test_gpus_2_launches_each_run_under_torchrun_on_cuda(tmp_path, data_root, monkeypatch):
    "gpus >= 2: every run goes to run_training with nproc = gpus (torchrun) and device cuda; the device check is once."
    import gol_nb.studies as S
    launched, checked = [], []
    def fake_run_training(cfg, nproc=1, **kw):
        launched.append((cfg.preset, cfg.seed, nproc, cfg.device))
        return {k: 0.2 for k in METRICS}
    monkeypatch.setattr(S, 'run_training', fake_run_training)
    monkeypatch.setattr(S, 'require_devices', lambda n, device, gpus=False: checked.append((n, device, gpus)))
    runs = run_study('activations', tmp_path / 's', [0, 1], gpus=2, sampler='random', recipe='smoke', log=lambda s: None)
    rows = list(select_rows('activations', 'random'))
    assert launched == [(r, s, 2, 'cuda') for r in rows for s in (0, 1)]
    assert checked == [(2, 'cuda', True)] and (runs['status'] == 'finished').all()


def test_summary_csv_columns_means_and_verdicts(tmp_path):
    "summary.csv: the issue's columns, means equal to the runs' metrics.json, intervals and verdicts from the runs."
    import pandas as pd
    from gol_nb.evaluate import evaluate_lvis
    from gol_nb.evidence import match_detections
    from gol_nb.studies import study_summary, describe_evidence, format_summary, SUMMARY_COLUMNS
    from test_evaluate import small_lvis, make_detections
    gt = small_lvis(1, 30)
    exact = [{'image_id': a['image_id'], 'category_id': a['category_id'], 'score': 1.0, 'bbox': a['bbox']}
             for a in gt['annotations']]
    dets = {0: make_detections(gt, 'bbox', 1), 1: make_detections(gt, 'bbox', 2)}  # two seeds
    rows = select_rows('activations', 'random')  # Softmax (baseline), Sigmoid, Gumbel; paper +1.2 / +3.8 AP
    softmax, sigmoid, gumbel = rows
    per_row = {softmax: dets, sigmoid: dets, gumbel: {s: d + exact for s, d in dets.items()}}
    for name, by_seed in per_row.items():
        for seed, d in by_seed.items():
            run = tmp_path / name / f'seed{seed}'
            (run / 'analysis').mkdir(parents=True)
            m = evaluate_lvis(gt, d, 'bbox')  # boxes stand in for masks: AP and APb are the same numbers here
            (run / 'metrics.json').write_text(json.dumps({**{k: m[k] for k in ('AP', 'APr', 'APc', 'APf')},
                                                          'APb': m['AP']}))
            for t in ('segm', 'bbox'): match_detections(gt, d, 'bbox').save(run / 'analysis' / f'matching_{t}.npz')
    (tmp_path / sigmoid / 'seed7').mkdir()  # an unfinished run is not counted
    s = study_summary(tmp_path, rows, resamples=500, log=lambda m: None)
    csv = pd.read_csv(tmp_path / 'summary.csv')
    assert list(csv.columns[:len(SUMMARY_COLUMNS)]) == list(SUMMARY_COLUMNS)
    for _, r in csv.iterrows():
        ms = [json.loads(p.read_text()) for p in sorted((tmp_path / r['preset']).glob('seed*/metrics.json'))]
        assert r['n_seeds'] == len(ms) == 2
        for k in ('AP', 'APr', 'APc', 'APf', 'APb'):
            assert r[f'{k}_mean'] == pytest.approx(100 * np.mean([m[k] for m in ms]), abs=1e-9)
        for k in ('AP', 'APr', 'APb'):
            assert r[f'{k}_std'] == pytest.approx(100 * np.std([m[k] for m in ms], ddof=1), abs=1e-9)
        assert r['AP_rescored'] == pytest.approx(r['AP_mean'], abs=1e-6)  # the matchings re-score metrics.json
    base, twin, better = (csv.iloc[i] for i in range(3))
    assert (base['dAP'], base['dAP_lo'], base['dAP_hi'], base['verdict_AP'], base['verdict_APr']) == \
        (0, 0, 0, 'baseline', 'baseline')
    assert (twin['dAP'], twin['dAP_lo'], twin['dAP_hi']) == (0, 0, 0) and twin['verdict_AP'] == 'inconclusive'
    assert twin['paper_dAP'] == pytest.approx(16.4 - 15.2) and better['paper_dAP'] == pytest.approx(19.0 - 15.2)
    assert better['dAP_lo'] > 0 and better['dAPb_lo'] > 0 and better['verdict_AP'] == 'reproduced'
    assert better['dAP'] == pytest.approx(better['AP_mean'] - base['AP_mean'])
    text = describe_evidence(csv)
    assert 'Of 4 paper claims' in text and 'reproduced' in text
    assert len(format_summary(csv)) == 3
    # a run whose detections cannot be matched (here: its matchings and config.yaml are gone): no interval, said
    import shutil
    shutil.copytree(tmp_path / gumbel / 'seed0' / 'analysis', tmp_path / 'kept')
    shutil.rmtree(tmp_path / gumbel / 'seed0' / 'analysis')
    logs = []
    s = study_summary(tmp_path, rows, resamples=100, log=logs.append)
    assert s['verdict_AP'].tolist() == ['baseline', 'inconclusive', 'no interval'], s['verdict_AP']
    assert any(l.startswith(f'{gumbel}: no intervals') and 'config.yaml' in l for l in logs), logs
    assert 'no interval' in describe_evidence(s)
    shutil.copytree(tmp_path / 'kept', tmp_path / gumbel / 'seed0' / 'analysis')
    # a row of a study without paper figures: 'no paper figure'
    losses = select_rows('losses', presets=['eql_r50_1x', 'eql_gumbel_r50_1x'])
    for name in losses:
        src = tmp_path / (softmax if name == 'eql_r50_1x' else gumbel)
        (tmp_path / 'losses' / name).mkdir(parents=True)
        for seed in (0, 1): (src / f'seed{seed}').rename(tmp_path / 'losses' / name / f'seed{seed}')
    s = study_summary(tmp_path / 'losses', losses, resamples=200, log=lambda m: None)
    assert s['verdict_AP'].tolist() == ['baseline', 'no paper figure'] and s.at[1, 'dAP_lo'] > 0


def test_study_table_block_is_generated_from_summary_csv(tmp_path):
    "tools/study_table.py writes README's study block from summary.csv, and `--check` notices a stale block."
    import pandas as pd
    sys.path.insert(0, str(ROOT / 'tools'))
    try: import study_table
    finally: sys.path.pop(0)
    study = tmp_path / 'activations'
    readme = tmp_path / 'README.md'
    readme.write_text(f"intro\n{study_table.BEGIN}\nold\n{study_table.END}\nrest\n")
    with pytest.raises(SystemExit, match='run nbs/09_ablations.ipynb first'): study_table.study_block(study)
    study.mkdir()
    row = dict(row='R50 Gumbel', n_seeds=3, AP_mean=21.04, AP_std=0.52, APr_mean=9.9, APr_std=0.4, APb_mean=22.0,
               APb_std=0.3, dAP=1.25, dAP_lo=0.41, dAP_hi=2.07, dAPr=8.0, dAPr_lo=-0.5, dAPr_hi=15.0, paper_dAP=3.8,
               paper_dAPr=4.9, verdict_AP='reproduced', verdict_APr='inconclusive', resamples=1000, level=0.95,
               seeds_mode='average')
    pd.DataFrame([row]).to_csv(study / 'summary.csv', index=False)
    info = {'study': 'activations', 'wall_s': 1500, 'cpu_count': 2, 'runs': 3, 'sampler': 'random'}
    (study / 'study_info.json').write_text(json.dumps(info))
    argv = ['--study-dir', str(study), '--readme', str(readme)]
    assert study_table.main(argv + ['--check']) == 1
    assert study_table.main(argv) == 0 and study_table.main(argv + ['--check']) == 0
    text = readme.read_text()
    assert text.startswith('intro\n') and text.endswith('rest\n')
    assert '| R50 Gumbel | 3 | 21.0 ± 0.5 | 9.9 ± 0.4 | 22.0 ± 0.3 | +1.2 [+0.4, +2.1] | +3.8 | reproduced |' in text
    assert '1 reproduced, 0 contradicted, 1 inconclusive' in text and 'random sampler block' in text
    assert 'its 3 runs took 25 min on 2 CPU cores' in text
    pd.DataFrame([dict(row, AP_mean=25.0)]).to_csv(study / 'summary.csv', index=False)
    assert study_table.main(argv + ['--check']) == 1  # a new summary makes the block stale


def test_analysis_notebook_does_not_train_a_missing_full_study(tmp_path):
    "10 with defaults and no finished full study stops with a sentence naming smoke and train_missing (no training)."
    smoke_run = tmp_path / 'gol_nb' / 'studies' / 'activations_smoke' / 'softmax_r50_1x' / 'seed0'
    smoke_run.mkdir(parents=True)
    (smoke_run / 'config.yaml').write_text('loss: softmax\n'); (smoke_run / 'metrics.json').write_text('{"AP": 0.1}')
    env = dict(os.environ, TMPDIR=str(tmp_path), MPLBACKEND='Agg')  # the smoke study's default place
    env.pop('IN_TEST', None)
    r = subprocess.run([sys.executable, '-m', 'papermill', str(ROOT / 'nbs' / '10_model_analysis.ipynb'),
                        str(tmp_path / 'out.ipynb'), '-p', 'output_dir', str(tmp_path / 'no_study')],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert 'set the parameter train_missing to true' in err and 'set the parameter smoke to true' in err, err[-3000:]
    assert not (tmp_path / 'no_study').exists()  # nothing was trained
