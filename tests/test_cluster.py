"Cluster studies with submitit's local executor: jobs run side by side, a killed job resumes, nothing runs twice."
import json, os, subprocess, sys, time
from pathlib import Path
import pytest
from gol_nb.engine import (Resources, as_resources, make_executor, run_in_folder, split_cluster_argv,
                           submit_if_asked, TrainingCommand)
from gol_nb.studies import run_study, select_rows

ROOT = Path(__file__).resolve().parents[1]

# A fake trainer in a file, so that a job process can import it: it notes each start (and whether a checkpoint was
# there), waits until the other run has started too (so runs that do not overlap take 30 s, and the test fails),
# in the run named by DIE_AT it writes a checkpoint and kills its own process the first time, and the run named by
# FAIL_AT raises.
FAKE = '''
import json, os, signal, time
from pathlib import Path
from gol_nb.engine import save_config
from gol_nb.detection.presets import get_config
def train_fn(name, info, overrides, gpus):
    kv = dict(o.split('=', 1) for o in overrides)
    d = Path(kv['output_dir']); d.mkdir(parents=True, exist_ok=True)
    calls = d.parent.parent / 'calls'
    ckpt = d / 'checkpoints' / 'iter_00000002.pth'
    start = time.time()
    with open(calls / 'starts.txt', 'a') as f: f.write(f"{name} {ckpt.exists()} {os.getpid()}\\n")
    (calls / f'{name}.started').touch()
    while len(list(calls.glob('*.started'))) < 2 and time.time() - start < 30: time.sleep(0.1)
    if name == os.environ.get('DIE_AT') and not ckpt.exists():
        ckpt.parent.mkdir(exist_ok=True); ckpt.write_bytes(b'x')
        with open(calls / 'spans.txt', 'a') as f: f.write(f"{name} {start} {time.time()}\\n")
        os.kill(os.getpid(), signal.SIGKILL)  # killed mid-run, after its checkpoint
    if name == os.environ.get('FAIL_AT'):
        with open(calls / 'spans.txt', 'a') as f: f.write(f"{name} {start} {time.time()}\\n")
        raise RuntimeError(f'{name} diverged')
    m = {k: 0.1 + 0.01 * int(kv['seed']) for k in ('AP', 'APr', 'APc', 'APf', 'APb')}
    save_config(get_config(name, overrides), d / 'config.yaml')
    (d / 'metrics.json').write_text(json.dumps(m))
    with open(calls / 'spans.txt', 'a') as f: f.write(f"{name} {start} {time.time()}\\n")
    return m
'''


@pytest.fixture()
def fake_trainer(tmp_path, monkeypatch):
    "The fake trainer importable here and in the job processes (PYTHONPATH), the smoke LVIS in a temporary root."
    (tmp_path / 'fake_cluster_trainer.py').write_text(FAKE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get('PYTHONPATH', '')]))
    monkeypatch.setenv('GOL_DATA_ROOT', str(tmp_path / 'data'))
    from fake_cluster_trainer import train_fn
    return train_fn


def lines(path: Path) -> list[list[str]]:
    return [l.split() for l in path.read_text().splitlines()] if path.exists() else []


def test_local_jobs_run_side_by_side_a_killed_one_resumes_and_nothing_runs_twice(tmp_path, fake_trainer,
                                                                                   monkeypatch):
    rows = list(select_rows('activations', 'random'))[:2]  # two rows: the first raises, the second is killed once
    monkeypatch.setenv('FAIL_AT', rows[0]); monkeypatch.setenv('DIE_AT', rows[1])
    out = tmp_path / 'study'
    (out / 'calls').mkdir(parents=True)
    log = []
    kw = dict(sampler='random', presets=rows, recipe='smoke', train_fn=fake_trainer, executor='local',
              resources='timeout_min=10,max_parallel=2,retries=1')
    runs = run_study('activations', out, [0], log=log.append, **kw)
    assert list(runs['preset']) == rows and list(runs['status']) == ['failed', 'finished'], runs['error']
    assert runs['error'][0] == f'RuntimeError: {rows[0]} diverged'  # the error line, as the sequential path gives it
    # two jobs at once: each started before the other ended (the failing run, the killed run's first attempt)
    spans = lines(out / 'calls' / 'spans.txt')
    assert [n for n, _, _ in spans].count(rows[1]) == 2, spans
    (a0, a1), (b0, b1) = [(float(a), float(b)) for _, a, b in spans[:2]]
    assert sorted(n for n, _, _ in spans[:2]) == sorted(rows) and max(a0, b0) < min(a1, b1), spans
    # the killed job was submitted again and resumed from its checkpoint; the other row ran once
    starts = sorted((n, c) for n, c, _ in lines(out / 'calls' / 'starts.txt'))
    assert starts == sorted([(rows[0], 'False'), (rows[1], 'False'), (rows[1], 'True')]), starts
    assert any(l.startswith(f'{rows[1]} seed 0: job') and 'submitted again' in l for l in log), log
    job_log = ''.join(p.read_text() for p in (out / rows[1] / 'seed0' / 'jobs').glob('*/*_log.out'))
    assert f'{rows[1]} seed 0: resuming' in job_log
    # runs.csv holds what run_study returned (one recording path)
    csv = (out / 'runs.csv').read_text()
    assert csv.count('finished') == 1 and f'{rows[0]} diverged' in csv and all(r in csv for r in rows)
    # run the finished row again: it is read back here, no job is submitted, nothing trains
    log.clear()
    again = run_study('activations', out, [0], log=log.append, **dict(kw, presets=rows[1:]))
    assert list(again['status']) == ['skipped'] and not [l for l in log if 'submitted' in l], log
    assert len(lines(out / 'calls' / 'starts.txt')) == 3


def test_a_job_waits_for_the_run_folder_held_by_another_process(tmp_path):
    "Two jobs of one run take turns: the second waits for the folder's lock (run_in_folder), then finds it finished."
    d = tmp_path / 'run'; d.mkdir()
    hold = ("import fcntl, sys, time; f = open(sys.argv[1] + '/.lock', 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(1.5); open(sys.argv[1] + '/metrics.json', 'w').write('{}')")
    holder = subprocess.Popen([sys.executable, '-c', hold, str(d)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == 'locked\n'
    t0 = time.time()
    found = run_in_folder(d, lambda: (time.time() - t0, (d / 'metrics.json').exists()))  # as a run's job calls it
    holder.wait()
    assert found[0] > 0.5 and found[1] is True  # it waited for the holder, then found the run finished


def test_resources_errors_name_the_field():
    for text, field in [('timeout_min=0', 'resources.timeout_min'), ('cpus_per_task=two', 'resources.cpus_per_task'),
                        ('gpus_per_node=-1', 'resources.gpus_per_node'), ('mem_gb=-2', 'resources.mem_gb'),
                        ('max_parallel=1.5', 'resources.max_parallel'), ('retries=-1', 'resources.retries'),
                        ('partition=3', 'resources.partition'), ('slurm_qoss=high', 'resources.slurm'),
                        ('gpu=1', "unknown key(s) ['gpu']")]:
        with pytest.raises(ValueError, match=field.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[')):
            as_resources(text)
    with pytest.raises(ValueError, match='gpus_per_node=1, but each run trains on 2 GPUs'):
        as_resources('gpus_per_node=1', gpus=2)
    with pytest.raises(ValueError, match="executor='pbs'"):
        make_executor('pbs', None, '/tmp/unused')
    assert as_resources({'timeout_min': 30, 'slurm_qos': 'high'}) == Resources(timeout_min=30, slurm={'qos': 'high'})


def test_slurm_job_file_carries_the_resources(tmp_path, monkeypatch):
    "With an srun on PATH (a stand-in: no cluster here), the sbatch file of a job says what the resources ask."
    srun = tmp_path / 'bin' / 'srun'
    srun.parent.mkdir(); srun.write_text('#!/bin/sh\n'); srun.chmod(0o755)
    monkeypatch.setenv('PATH', f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    res = as_resources('timeout_min=90,cpus_per_task=8,gpus_per_node=2,mem_gb=64,partition=gpu,slurm_qos=high')
    ex = make_executor('slurm', res, tmp_path / 'jobs', 'gumbel_seed0')
    text = ex._executor._make_submission_file_text('python -m x', 'uid')
    for want in ('--time=90', '--cpus-per-task=8', '--gpus-per-node=2', '--mem=64GB', '--partition=gpu',
                 '--qos=high', '--job-name=gumbel_seed0'):
        assert f'#SBATCH {want}' in text, (want, text)


def test_gol_train_command_line_becomes_one_job(tmp_path, capsys):
    "submit_if_asked takes the cluster flags out and runs the rest as `python -m module` in a job (local: waited for)."
    kind, res, rest = split_cluster_argv(['--executor', 'local', 'a.json', '--timeout-min', '5', 'b.json'])
    assert (kind, res.timeout_min, rest) == ('local', 5, ['a.json', 'b.json'])
    (tmp_path / 'in.json').write_text('{"AP": 0.25}')
    argv = ['--executor', 'local', str(tmp_path / 'in.json'), '--timeout-min', '5', str(tmp_path / 'out.json')]
    assert submit_if_asked(argv, lambda rest: tmp_path / 'run', module='json.tool')  # json.tool: a stand-in trainer
    assert json.loads((tmp_path / 'out.json').read_text()) == {'AP': 0.25}
    job_id = capsys.readouterr().out.split('submitted job ')[1].split()[0]
    assert (tmp_path / 'run' / 'jobs' / job_id).is_dir()  # the job's files lie in the run folder
    with pytest.raises(RuntimeError, match='exited with code 2'):  # a failing command fails its job
        TrainingCommand([str(tmp_path / 'missing.json')], module='json.tool')()
    assert not submit_if_asked(['epochs=2'], lambda rest: tmp_path / 'run')  # no cluster flag: train here
