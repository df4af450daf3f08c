"Multi-node launches: two `gol-train` nodes on one machine (one gloo process each) against `--nproc 2` on one node."
import json, os, socket, subprocess, sys, threading
from pathlib import Path
import pytest
import torch
from gol_nb.engine import load_checkpoint, latest_checkpoint, read_jsonl
from gol_nb.data.source import resolve_data
from gol_nb.detection.presets import get_config
from gol_nb.detection.train import run_training
from gol_nb.cli import main as gol_train_main

REPO = Path(__file__).resolve().parents[1]
# the tiniest detection run of tests/test_detection_train.py (2 iterations over 2 ranks), deterministic
TINY = ['synth_num_train=8', 'synth_num_val=4', 'synth_num_classes=4', 'synth_image_size=64', 'train_scales=[64]',
        'test_size=64', 'max_size=64', 'fpn_channels=16', 'box_head_dim=32', 'mask_head_dim=8', 'rois_per_image=32',
        'rpn_post_nms_train=50', 'rpn_post_nms_test=30', 'detections_per_img=20', 'batch_size=2', 'num_workers=0',
        'warmup_iters=2', 'base_lr=0.01', 'log_interval=1', 'tensorboard=false', 'deterministic=true',
        'max_val_images=4', 'epochs=1', 'rfs=false', 'device=cpu']


def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def gol_train(out: Path, data_root: Path, *flags: str) -> subprocess.Popen:
    "`gol-train` (python -m gol_nb.cli) on the tiny config in `out`, started in the background."
    env = {**os.environ, 'GOL_DATA_ROOT': str(data_root), 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])}
    return subprocess.Popen([sys.executable, '-m', 'gol_nb.cli', '--config', 'demo_cpu', *TINY, f'output_dir={out}',
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(p: subprocess.Popen, timeout: float = 150) -> str:
    "Its output once it exited 0 (killed, and the output shown, if it does not end in time)."
    try: out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill(); out, _ = p.communicate()
        pytest.fail(f"timed out:\n{out[-3000:]}")
    assert p.returncode == 0, out[-3000:]
    return out


def files(run: Path) -> set[str]:
    return {str(f.relative_to(run)) for f in run.rglob('*') if f.is_file()}


def in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    "Run `fn(*args)` in a thread; the dict receives its 'result' or its 'error'."
    box = {}
    def run():
        try: box['result'] = fn(*args)
        except BaseException as e: box['error'] = e
    t = threading.Thread(target=run, daemon=True); t.start()
    return t, box


def test_two_nodes_on_one_machine_train_as_two_processes_on_one(tmp_path, monkeypatch, capsys):
    port, two, one = free_port(), tmp_path / 'two_nodes', tmp_path / 'one_node'
    monkeypatch.setenv('GOL_DATA_ROOT', str(tmp_path / 'data'))
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    resolve_data(get_config('demo_cpu', TINY))  # the synthetic set, made once: the runs below only read it
    nodes = ['--nproc', '1', '--nnodes', '2', '--master-addr', '127.0.0.1', '--master-port', str(port), '--node-rank']
    node1 = gol_train(two, tmp_path / 'data', *nodes, '1')  # its torchrun waits for node 0's rendezvous
    # meanwhile (the machine has idle moments in every launch), the same config as 2 processes on one node
    ref_thread, ref = in_thread(run_training, get_config('demo_cpu', TINY + [f'output_dir={one}']), 2)
    try: gol_train_main(['--config', 'demo_cpu', *TINY, f'output_dir={two}', *nodes, '0'])  # node 0, in this process
    finally:
        if node1.poll() is None and not (two / 'metrics.json').exists(): node1.kill()  # node 0 failed: do not wait
    out1 = finish(node1)
    ref_thread.join(150)
    assert 'result' in ref, ref.get('error', 'the one-node run did not finish in time')
    assert 'node 1 of 2' in out1 and 'node 1 of 2' not in capsys.readouterr().out  # node 0 said nothing of node 1
    assert [f for f in files(two) if f.endswith('metrics.json')] == ['metrics.json']  # one metrics.json
    assert not (two / '.lock').exists()
    # node 1 wrote nothing of its own: the folder holds what a one-node run leaves (rank 1's log was its only file)
    assert files(two) == files(one), files(two) ^ files(one)
    assert 'logs/rank1.log' in files(two) and '===== ' not in (two / 'logs' / 'rank1.log').read_text()
    m2, m1 = json.loads((two / 'metrics.json').read_text()), ref['result']
    assert m2['iterations'] == m1['iterations'] == 2
    assert {k: m2[k] for k in ('AP', 'APb')} == {k: m1[k] for k in ('AP', 'APb')}  # deterministic=true: the same
    losses = lambda d: [(r['iteration'], r['loss']) for r in read_jsonl(d / 'log.jsonl') if 'loss' in r]
    assert losses(two) == losses(one) and len(losses(one)) == 2
    w2, w1 = (load_checkpoint(latest_checkpoint(d))['model'] for d in (two, one))
    assert all(torch.equal(w2[k], w1[k]) for k in w1)


def _cls_main(argv):
    from gol_nb.classification.train import main
    main(['--config', 'mnist_lt_demo', *argv])


def _mmdet_main(argv):
    pytest.importorskip('mmdet')
    gol_train_main(['--engine', 'mmdet', '--config', 'mmdet_gol_r50_lvis_v1_2x', *argv])


@pytest.mark.parametrize('cli', [_cls_main, _mmdet_main,
                                 lambda argv: gol_train_main(['--config', 'demo_cpu', *argv])],
                         ids=['gol-train-cls', 'gol-train --engine mmdet', 'gol-train'])
def test_every_trainer_passes_the_node_flags_to_torchrun(cli, tmp_path, monkeypatch, capsys):
    "Node 1 of 2 through each command line (torchrun stubbed): torchrun gets the rendezvous; the run folder stays bare."
    import gol_nb.engine.launch as L
    started = []
    monkeypatch.setattr(L, '_start_torchrun', lambda module, args, launch, logs, env: started.append(
        (module, launch.torchrun_args())) or subprocess.Popen(['true'], stdout=subprocess.PIPE))
    run = tmp_path / 'run'
    cli(['--nproc', '1', '--nnodes', '2', '--node-rank', '1', '--master-addr', '10.0.0.1', '--master-port', '29400',
         'device=cpu', f'output_dir={run}'])
    (module, args), = started
    assert args == ['--nnodes=2', '--node_rank=1', '--master_addr=10.0.0.1', '--master_port=29400',
                    '--nproc_per_node=1'], module
    assert 'node 1 of 2: node 0 checks' in capsys.readouterr().err
    assert [p.name for p in run.rglob('*')] == ['logs']
