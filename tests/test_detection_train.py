"Trainer: exact resume after a crash, a 2-process gloo DDP run, config errors, the CLI."
import json, os, subprocess, sys, warnings
from pathlib import Path
import pytest
import torch
from gol_nb.detection.config import get_config, DetConfig
from gol_nb.detection.train import train, run_training, main, SimulatedCrash, lr_at
from gol_nb.engine import load_checkpoint, latest_checkpoint

warnings.filterwarnings('ignore', message='backbone')
TINY = ['synth_num_train=8', 'synth_num_val=4', 'synth_num_classes=4', 'synth_image_size=64', 'train_scales=[64]',
        'test_size=64', 'max_size=64', 'fpn_channels=16', 'box_head_dim=32', 'mask_head_dim=8', 'rois_per_image=32',
        'rpn_post_nms_train=50', 'rpn_post_nms_test=30', 'detections_per_img=20', 'batch_size=2', 'num_workers=0',
        'warmup_iters=2', 'base_lr=0.01', 'log_interval=1', 'tensorboard=false', 'deterministic=true', 'max_val_images=4']


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('gol_data')
    old = os.environ.get('GOL_DATA_ROOT')
    os.environ['GOL_DATA_ROOT'] = str(root)
    yield root
    if old is None: os.environ.pop('GOL_DATA_ROOT')
    else: os.environ['GOL_DATA_ROOT'] = old


def cfg_for(out, *extra):
    return get_config('demo_cpu', TINY + [f'output_dir={out}', *extra])


def final_weights(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir))['model']


def test_killed_run_resumes_to_the_same_weights(data_root, tmp_path):
    common = ['epochs=2', 'steps=[1]', 'checkpoint_interval=3']
    full = train(cfg_for(tmp_path / 'full', *common))
    with pytest.raises(SimulatedCrash):  # crash at iteration 7; last checkpoint at iteration 6 (mid epoch 2)
        train(cfg_for(tmp_path / 'killed', *common, 'stop_after=7'))
    ck = load_checkpoint(latest_checkpoint(tmp_path / 'killed'))
    assert (ck['iteration'], ck['epoch'], ck['iter_in_epoch']) == (6, 1, 2)
    assert not (tmp_path / 'killed' / 'metrics.json').exists()
    resumed = train(cfg_for(tmp_path / 'killed', *common, 'resume=true'))
    a, b = final_weights(tmp_path / 'full'), final_weights(tmp_path / 'killed')
    assert a.keys() == b.keys()
    diff = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point()}
    assert max(diff.values()) == 0, {k: v for k, v in diff.items() if v}
    assert load_checkpoint(latest_checkpoint(tmp_path / 'killed'))['iteration'] == 8
    assert resumed['AP'] == full['AP'] and resumed['APb'] == full['APb']
    for f in ('config.yaml', 'metrics.json', 'per_class_ap.csv', 'log.jsonl'):
        assert (tmp_path / 'full' / f).exists(), f
    m = json.loads((tmp_path / 'full' / 'metrics.json').read_text())
    assert {'AP', 'APr', 'APc', 'APf', 'APb'} <= set(m)
    # the resumed run did not redo iterations 1-6: its log continues from 7
    its = [json.loads(l)['iteration'] for l in (tmp_path / 'killed' / 'log.jsonl').read_text().splitlines()]
    assert its.count(7) == 2 and its.count(3) == 1  # 7 logged before the crash and after the resume


def test_ddp_two_processes_gloo(data_root, tmp_path):
    cfg = cfg_for(tmp_path / 'ddp', 'epochs=1', 'rfs=false', 'device=cpu')
    metrics = run_training(cfg, nproc=2, env={'GOL_DATA_ROOT': str(data_root), 'OMP_NUM_THREADS': '1'})
    assert {'AP', 'APr', 'APc', 'APf', 'APb'} <= set(metrics)
    # 8 images over 2 ranks x 2 images per batch: 2 iterations, the same on both ranks
    assert metrics['iterations'] == 2
    assert load_checkpoint(latest_checkpoint(tmp_path / 'ddp'))['iteration'] == 2
    assert len(load_checkpoint(latest_checkpoint(tmp_path / 'ddp'))['rng']) == 2  # one RNG state per rank


def test_bad_config_names_the_key(tmp_path):
    with pytest.raises(ValueError, match='epochz'): get_config('demo_cpu', ['epochz=3'])
    with pytest.raises(ValueError, match='batch_size'): get_config('demo_cpu', ['batch_size=0'])
    with pytest.raises(ValueError, match='batch_size'): get_config('demo_cpu', ['batch_size=two'])
    with pytest.raises(ValueError, match='norm'): get_config('demo_cpu', ['norm=layer'])
    with pytest.raises(ValueError, match='nms_thresh'): get_config('demo_cpu', ['nms_thresh=2'])
    with pytest.raises(ValueError, match='nope'): get_config('nope')
    bad = tmp_path / 'bad.yaml'; bad.write_text('epochs: 2\nlearning_rate: 0.1\n')
    with pytest.raises(ValueError, match='learning_rate'): get_config(str(bad))
    with pytest.raises(FileNotFoundError, match='train_ann'):
        train(get_config('demo_cpu', ['train_ann=/no/such.json', 'train_images=/tmp', 'val_ann=/no/v.json', 'val_images=/tmp',
                                      f'output_dir={tmp_path / "run"}']))
    assert not (tmp_path / 'run').exists()


def test_cli_reports_bad_keys(capsys):
    with pytest.raises(SystemExit) as e: main(['--config', 'demo_cpu', 'epochz=3'])
    assert e.value.code == 2 and 'epochz' in capsys.readouterr().err


def test_config_roundtrip_and_lr(tmp_path):
    from gol_nb.engine import save_config
    c = get_config('gol_r101_lvis_v1_2x', ['batch_size=4'])
    save_config(c, tmp_path / 'c.yaml')
    assert get_config(str(tmp_path / 'c.yaml')) == c
    assert lr_at(c, 10**6, 0, world_size=4) == pytest.approx(0.02)  # 4 x 4 = 16 images: the base lr
