"Trainer: exact resume after a crash, a 2-process gloo DDP run, config errors, the CLI."
import json, os, signal, subprocess, sys, warnings
from pathlib import Path
import pytest
import torch
import yaml
import gol_nb.detection.train as T
from gol_nb.detection.config import DetConfig
from gol_nb.detection.presets import get_config, PRESETS
from gol_nb.detection.train import train, run_training, main, SimulatedCrash, config_lr
from gol_nb.cli import main as gol_train
from gol_nb.engine import (load_checkpoint, latest_checkpoint, read_jsonl, ConfigMismatchError, RunFolderError,
                           NonFiniteError, RunInterrupted, DeviceError, save_checkpoint, find_checkpoint)

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
    log = read_jsonl(tmp_path / 'killed' / 'log.jsonl')
    its = [r['iteration'] for r in log if 'iteration' in r]
    assert its.count(7) == 2 and its.count(3) == 1  # 7 logged before the crash and after the resume
    assert [r['event'] for r in log if 'event' in r] == ['start', 'lr_scaling', 'resume', 'lr_scaling']


def test_ddp_two_processes_gloo(data_root, tmp_path):
    cfg = cfg_for(tmp_path / 'ddp', 'epochs=1', 'rfs=false', 'device=cpu')
    metrics = run_training(cfg, nproc=2, env={'GOL_DATA_ROOT': str(data_root), 'OMP_NUM_THREADS': '1'})
    assert {'AP', 'APr', 'APc', 'APf', 'APb'} <= set(metrics)
    # 8 images over 2 ranks x 2 images per batch: 2 iterations, the same on both ranks
    assert metrics['iterations'] == 2
    assert load_checkpoint(latest_checkpoint(tmp_path / 'ddp'))['iteration'] == 2
    assert len(load_checkpoint(latest_checkpoint(tmp_path / 'ddp'))['rng']) == 2  # one RNG state per rank
    for r in (0, 1): assert (tmp_path / 'ddp' / 'logs' / f'rank{r}.log').stat().st_size > 0  # one log file a rank
    for r in (0, 1): assert 'find_unused_parameters' not in (tmp_path / 'ddp' / 'logs' / f'rank{r}.log').read_text()
    lr = [e for e in read_jsonl(tmp_path / 'ddp' / 'log.jsonl') if e.get('event') == 'lr_scaling'][0]
    assert lr['total_batch'] == 4 and 'lr 0.01 = base_lr 0.01 x total batch 4 / base_batch 4' in lr['why'] \
        or 'the total batch 4 is the base_batch' in lr['why'], lr


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
    assert config_lr(c, 10**6, 0, world_size=4) == pytest.approx(0.02)  # 4 x 4 = 16 images: the base lr


# --- the run-folder policy through the detection trainer --------------------------------------------------------
@pytest.fixture(scope='module')
def short_run(data_root, tmp_path_factory):
    "One finished 1-epoch run (4 iterations, a checkpoint every 2)."
    out = tmp_path_factory.mktemp('short') / 'run'
    train(cfg_for(out, 'epochs=1', 'checkpoint_interval=2'))
    return out


def test_new_run_refused_in_a_used_folder(short_run):
    with pytest.raises(RunFolderError, match='already holds a run .*add resume=true'): train(cfg_for(short_run, 'epochs=1'))


@pytest.mark.parametrize('change,msg', [
    (['loss=sigmoid'], "loss 'gol' -> 'sigmoid'"),
    (['backbone=resnet34'], "backbone 'resnet18' -> 'resnet34'"),
    (['synth_num_classes=5'], 'synth_num_classes 4 -> 5'),
    (['fpn_channels=32'], 'fpn_channels 16 -> 32'),
    (['batch_size=1'], r'accept_changes=\[batch_size\]'),
    (['base_lr=0.02'], r'accept_changes=\[base_lr\]'),
    (['seed=3'], r'accept_changes=\[seed\]'),
    (['rfs=false'], r'accept_changes=\[rfs\]'),
])
def test_resume_refuses_changed_config_and_writes_nothing(short_run, change, msg):
    before = {p: p.read_bytes() for p in short_run.rglob('*') if p.is_file()}
    with pytest.raises(ConfigMismatchError, match=msg):
        train(cfg_for(short_run, 'epochs=2', 'resume=true', 'accept_changes=[epochs]', *change))
    after = {p: p.read_bytes() for p in short_run.rglob('*') if p.is_file()}
    assert after == before  # config.yaml, log and checkpoints untouched


def test_resume_accepts_named_schedule_changes(data_root, tmp_path):
    out = tmp_path / 'run'
    train(cfg_for(out, 'epochs=1'))
    m = train(cfg_for(out, 'epochs=2', 'resume=true', 'batch_size=1', 'accept_changes=[epochs,batch_size]'))
    assert m['iterations'] == 4 + 8  # epoch 2 with one image a batch
    assert yaml.safe_load((out / 'config.yaml').read_text())['batch_size'] == 1
    ev = [r for r in read_jsonl(out / 'log.jsonl') if r.get('event') == 'resume'][0]
    assert ev['accepted_changes'] == {'epochs': [1, 2], 'batch_size': [2, 1]}


def test_an_older_checkpoint_with_one_rng_dict_resumes_alike(data_root, tmp_path):
    "Single-process checkpoints used to store a bare RNG dict (now a list, one a rank): they resume to the same weights."
    import shutil
    common = ['epochs=1', 'checkpoint_interval=2']
    with pytest.raises(SimulatedCrash): train(cfg_for(tmp_path / 'list', *common, 'stop_after=3'))
    shutil.copytree(tmp_path / 'list', tmp_path / 'dict')
    path, st, _ = find_checkpoint(tmp_path / 'dict')
    assert isinstance(st['rng'], list) and len(st['rng']) == 1
    st['rng'], st['config']['output_dir'] = st['rng'][0], str(tmp_path / 'dict')
    save_checkpoint(tmp_path / 'dict', st, path.stem)
    assert isinstance(load_checkpoint(latest_checkpoint(tmp_path / 'dict'))['rng'], dict)
    for d in ('list', 'dict'): train(cfg_for(tmp_path / d, *common, 'resume=true'))
    a, b = final_weights(tmp_path / 'list'), final_weights(tmp_path / 'dict')
    assert all(torch.equal(a[k], b[k]) for k in a)

def test_checkpoint_whose_tensors_do_not_fit_is_refused(short_run, tmp_path):
    import shutil
    out = tmp_path / 'copy'; shutil.copytree(short_run, out)
    path, st, _ = find_checkpoint(out)
    key = next(k for k in st['model'] if k.endswith('cls_score.weight'))
    st['model'][key] = torch.zeros(st['model'][key].shape[0] + 1, st['model'][key].shape[1])
    st['config']['output_dir'] = str(out)
    save_checkpoint(out, st, 'epoch_009')
    before = (out / 'config.yaml').read_bytes()
    with pytest.raises(ConfigMismatchError, match=f'do not fit the model.*{key}'):
        train(cfg_for(out, 'epochs=2', 'resume=true', 'accept_changes=[epochs]'))
    assert (out / 'config.yaml').read_bytes() == before


def test_corrupt_latest_checkpoint_falls_back(data_root, tmp_path, capsys):
    out = tmp_path / 'run'
    with pytest.raises(SimulatedCrash): train(cfg_for(out, 'epochs=1', 'checkpoint_interval=1', 'stop_after=3'))
    newest = latest_checkpoint(out); assert load_checkpoint(newest)['iteration'] == 3
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated (a copy cut short, a disk error)
    m = train(cfg_for(out, 'epochs=1', 'checkpoint_interval=1', 'resume=true'))
    assert m['iterations'] == 4
    err = capsys.readouterr().err
    assert f'skipped {newest.name}' in err and 'checksum mismatch' in err
    ev = [r for r in read_jsonl(out / 'log.jsonl') if r.get('event') == 'resume'][0]
    assert ev['checkpoint'] == 'iter_00000002.pth' and newest.name in ev['skipped'][0]


def test_nonfinite_loss_stops_on_its_iteration_before_any_checkpoint(data_root, tmp_path, monkeypatch):
    out = tmp_path / 'run'
    real = T.config_lr
    monkeypatch.setattr(T, 'config_lr', lambda cfg, it, ep, w=1: float('nan') if it >= 2 else real(cfg, it, ep, w))
    # lr NaN from the 3rd step on: finite loss and gradients, NaN weights after that step
    with pytest.raises(NonFiniteError, match='non-finite weights after the optimizer step of iteration 3'):
        train(cfg_for(out, 'epochs=2', 'checkpoint_interval=1'))
    monkeypatch.setattr(T, 'config_lr', real)
    cks = sorted((out / 'checkpoints').glob('*.pth'))
    assert [load_checkpoint(p)['iteration'] for p in cks] == [1, 2]  # nothing after the NaN step was written
    for p in cks: assert all(torch.isfinite(v).all() for v in load_checkpoint(p)['model'].values() if v.is_floating_point())


def test_sigterm_checkpoints_at_the_iteration_boundary(data_root, tmp_path, monkeypatch):
    out = tmp_path / 'run'
    real = T.config_lr
    def lr_and_term(cfg, it, ep, w=1):  # a scheduler's SIGTERM arrives during iteration 2
        if it == 1: os.kill(os.getpid(), signal.SIGTERM)
        return real(cfg, it, ep, w)
    monkeypatch.setattr(T, 'config_lr', lr_and_term)
    with pytest.raises(RunInterrupted, match='stopped by SIGTERM at iteration 2') as e: train(cfg_for(out, 'epochs=1'))
    monkeypatch.setattr(T, 'config_lr', real)
    assert load_checkpoint(latest_checkpoint(out))['iteration'] == 2 and e.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert not (out / 'metrics.json').exists()
    assert train(cfg_for(out, 'epochs=1', 'resume=true'))['iterations'] == 4


def test_every_preset_has_a_checkpoint_interval():
    for name in PRESETS:
        c = get_config(name)
        assert c.checkpoint_minutes > 0 or c.checkpoint_interval > 0, name


def test_cli_gpu_requests_without_gpus_fail_at_once(capsys, tmp_path):
    if torch.cuda.is_available(): pytest.skip('a GPU is visible')
    for argv in (['--gpus', '1'], ['--gpus', '2'], ['--nproc', '8'], ['device=cuda']):
        with pytest.raises(SystemExit) as e: main(['--config', 'demo_cpu', f'output_dir={tmp_path / "x"}', *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and 'GPU' in err and err.count('\n') == 1, (argv, err)
    assert not (tmp_path / 'x').exists()
    with pytest.raises(DeviceError, match='add device=cpu'): run_training(get_config('demo_cpu'), nproc=2)


def test_prelaunch_checks_catch_a_missing_file_before_torchrun(tmp_path, capsys):
    out = tmp_path / 'run'
    with pytest.raises(SystemExit) as e:
        main(['--config', 'demo_cpu', '--nproc', '2', 'device=cpu', f'output_dir={out}', 'train_ann=/no/such/train.json',
              'train_images=/tmp', 'val_ann=/no/such/val.json', 'val_images=/tmp'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and "'train_ann': /no/such/train.json does not exist" in err
    assert not out.exists()  # no run folder, no rank logs: torchrun never started


def test_cli_forms(capsys):
    "gol-train (gol_nb.cli) lists presets, documents --engine with the trainer's flags, one-line errors."
    with pytest.raises(SystemExit) as e: gol_train(['--list-presets'])
    out = capsys.readouterr().out
    assert e.value.code == 0 and {l.split()[0] for l in out.splitlines()} == set(PRESETS)
    with pytest.raises(SystemExit) as e: gol_train(['--help'])
    h = capsys.readouterr().out
    for k in ('--config', '--nproc', '--gpus', '--list-presets', '--engine', '--check-images', 'base_lr=0.02',
              'checkpoint_minutes=15.0', 'accept_changes=[]', 'hang_timeout=600.0'):
        assert k in h, k
    with pytest.raises(SystemExit) as e: gol_train(['--config', 'demo_cpu', 'loss=no_such_loss'])
    assert e.value.code == 2 and capsys.readouterr().err.count('\n') == 1


def test_engine_mmdet_dispatches_without_the_flag(monkeypatch):
    import types
    seen = []
    fake = types.ModuleType('gol_nb.mmdet_runner'); fake.main = lambda argv: seen.append(argv) or {'AP': 1.0}
    monkeypatch.setitem(sys.modules, 'gol_nb.mmdet_runner', fake)
    # None: the console script's sys.exit(main()) then exits 0 (a returned dict would exit 1)
    assert gol_train(['--engine', 'mmdet', '--config', 'gol_cascade_r50', '--nproc', '2', 'max_iters=3']) is None
    assert seen == [['--config', 'gol_cascade_r50', '--nproc', '2', 'max_iters=3']]


def test_cli_sigterm_exits_with_128_plus_signal(data_root, tmp_path):
    out = tmp_path / 'run'
    p = subprocess.Popen([sys.executable, '-m', 'gol_nb.detection.train', '--config', 'demo_cpu', *TINY,
                          f'output_dir={out}', 'epochs=50'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, 'GOL_DATA_ROOT': str(data_root)})
    import time
    deadline = time.time() + 120
    while time.time() < deadline and not any((out / 'checkpoints').glob('*.pth')) if out.exists() else time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1].startswith('gol-train: stopped by SIGTERM at iteration')
    it = load_checkpoint(latest_checkpoint(out))['iteration']
    assert f'at iteration {it};' in err


def test_console_script_exits_0_after_a_successful_run(data_root, tmp_path):
    "The installed `gol-train` (sys.exit(main())) exits 0 and prints the AP line."
    script = Path(sys.executable).with_name('gol-train')
    r = subprocess.run([str(script), '--config', 'demo_cpu', *TINY, f'output_dir={tmp_path / "run"}', 'epochs=1',
                        'max_iters=2'], capture_output=True, text=True, env={**os.environ, 'GOL_DATA_ROOT': str(data_root)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert set(json.loads(r.stdout.strip().splitlines()[-1])) == {'AP', 'APr', 'APc', 'APf', 'APb'}


def test_nonfinite_loss_is_caught_on_its_iteration(data_root, tmp_path, monkeypatch):
    real = T.detector_from_config
    def nan_on_third_step(cfg, stats):  # the box loss of the 3rd training step is NaN
        m = real(cfg, stats); fwd, n = m.forward, [0]
        def forward(images, targets=None):
            out = fwd(images, targets)
            if m.training:
                n[0] += 1
                if n[0] == 3: out['loss_box_reg'] = out['loss_box_reg'] * float('nan')
            return out
        m.forward = forward
        return m
    monkeypatch.setattr(T, 'detector_from_config', nan_on_third_step)
    out = tmp_path / 'run'
    with pytest.raises(NonFiniteError, match=r'non-finite loss at iteration 3 \(.*loss_box_reg=nan'):
        train(cfg_for(out, 'epochs=2', 'checkpoint_interval=1'))
    assert [load_checkpoint(p)['iteration'] for p in sorted((out / 'checkpoints').glob('*.pth'))] == [1, 2]


def test_nan_input_is_reported_with_its_iteration(data_root, tmp_path, monkeypatch):
    real = T.DataLoader
    class NaNImages(real):  # the 3rd batch holds a NaN pixel (a corrupt image)
        def __iter__(self):
            for i, (imgs, tgts) in enumerate(super().__iter__()):
                if i == 2: imgs[0][0, 0, 0] = float('nan')
                yield imgs, tgts
    monkeypatch.setattr(T, 'DataLoader', NaNImages)
    out = tmp_path / 'run'
    with pytest.raises(NonFiniteError, match=r'non-finite (values|loss) at iteration 3'):
        train(cfg_for(out, 'epochs=2', 'checkpoint_interval=1'))
    assert [load_checkpoint(p)['iteration'] for p in sorted((out / 'checkpoints').glob('*.pth'))] == [1, 2]


def test_check_images_flag_fails_before_training(data_root, tmp_path, capsys):
    import shutil
    from gol_nb.data import resolve_data
    from gol_nb.detection.train import check_run
    paths = resolve_data(cfg_for(tmp_path / 'x'))
    imgs = tmp_path / 'train_images'; shutil.copytree(paths['train_images'], imgs)
    check_run(cfg_for(tmp_path / 'ok', f"train_ann={paths['train_ann']}", f'train_images={imgs}',
                      f"val_ann={paths['val_ann']}", f"val_images={paths['val_images']}"), images=True)
    assert 'all readable' in capsys.readouterr().out
    victim = sorted(p for p in imgs.rglob('*') if p.is_file())[0]
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated image
    out = tmp_path / 'run'
    with pytest.raises(SystemExit) as e:
        main(['--config', 'demo_cpu', '--check-images', *TINY, f'output_dir={out}', f"train_ann={paths['train_ann']}",
              f'train_images={imgs}', f"val_ann={paths['val_ann']}", f"val_images={paths['val_images']}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and victim.name in err, err
    assert not out.exists()


def test_typos_caught_before_anything_is_written(tmp_path, capsys):
    for typo in ('loss=gool', 'backbone=resnet5'):
        with pytest.raises(SystemExit) as e: main(['--config', 'demo_cpu', typo, f'output_dir={tmp_path / "run"}'])
        err = capsys.readouterr().err
        assert e.value.code == 2 and typo.split('=')[0] in err and err.count('\n') == 1, err
    assert not (tmp_path / 'run').exists()


# --- rough edges (issue 21) --------------------------------------------------------------------------------------
def test_every_trainable_parameter_gets_a_gradient_so_ddp_need_not_search(data_root, tmp_path):
    "DDP runs with find_unused_parameters=False: that is right only if no trainable parameter is ever left out."
    from gol_nb.data import resolve_data, LVISDetection, detection_collate
    for loss in ('gol', 'softmax', 'gumbel', 'federated'):
        cfg = cfg_for(tmp_path / 'x', f'loss={loss}')
        paths = resolve_data(cfg); train_ds, _ = T.load_data(cfg, paths)
        ds = LVISDetection(train_ds.lvis, paths['train_images'], train=True, scales=(64,), max_size=64)
        model = T.detector_from_config(cfg, ds.class_statistics()).train()
        imgs, tgts = detection_collate([ds[0], ds[1]])
        for empty in (False, True):  # images with objects, and images without any
            if empty: tgts = [{k: (v[:0] if k in ('boxes', 'labels', 'masks') else v) for k, v in t.items()} for t in tgts]
            model.zero_grad(set_to_none=True); sum(model(imgs, tgts).values()).backward()
            unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert not unused, (loss, empty, unused)


def test_cli_without_config_uses_the_defaults_and_output_dir_file_is_a_sentence(tmp_path, capsys):
    f = tmp_path / 'a_file'; f.write_text('x')
    with pytest.raises(SystemExit) as e: main([*TINY, 'train_ann=/no/t.json', 'train_images=/tmp', 'val_ann=/no/v.json',
                                               'val_images=/tmp', f'output_dir={f}'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1, err
    assert "'train_ann': /no/t.json does not exist" in err and 'NoneType' not in err  # the defaults were built
    assert T.get_config(None, TINY).backbone == DetConfig().backbone
    with pytest.raises(RunFolderError, match=f'output_dir {f} is a file, not a folder'):
        T.check_run(T.get_config(None, [*TINY, f'output_dir={f}']))


@pytest.mark.parametrize('text,says', [
    ('epochs: [1, 2\nseed: 1\n', 'not valid YAML at line 2, column 5'),
    ('epochs: 1\n\tseed: 1\n', 'not valid YAML at line 2, column 1'),
    (b'\x89PNG\r\n\x1a\n\x00\x00\xff', 'not a text config file'),
])
@pytest.mark.parametrize('cli', ['gol-train', 'gol-train-cls'])
def test_both_clis_name_a_malformed_yaml_file_line_and_column(tmp_path, capsys, text, says, cli):
    from gol_nb.classification.train import main as cls_main
    f = tmp_path / 'mine.yaml'; f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SystemExit) as e: (gol_train if cli == 'gol-train' else cls_main)(['--config', str(f)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and err.startswith(f'{cli}: error: {f}: {says}'), err


def test_unknown_loss_kwargs_refused_before_any_process_starts(tmp_path, capsys):
    for argv in ([], ['--nproc', '2', 'device=cpu']):
        with pytest.raises(SystemExit) as e:
            main(['--config', 'demo_cpu', 'loss=gumbel', 'loss_kwargs={foo: 1}', f'output_dir={tmp_path / "r"}', *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "'loss_kwargs': 'foo' not accepted by loss='gumbel' (GumbelBCE)" in err, err
        assert 'it takes clamp, mu, beta' in err
    assert not (tmp_path / 'r').exists()


@pytest.mark.parametrize('bad,says', [('momentum=5.0', "'momentum': expected a number in [0, 1)"),
                                      ('weight_decay=.inf', "'weight_decay': expected a finite number >= 0"),
                                      ('score_thresh=2.0', "'score_thresh': expected a number in [0, 1]"),
                                      ('nms_thresh=abc', "nms_thresh: expected a number or null, got 'abc'"),
                                      ('train_scales=[a, b]', "'train_scales'"),
                                      ('epocs=3', "unknown key 'epocs': did you mean 'epochs'?")])
def test_config_values_refused_with_the_valid_range(capsys, bad, says):
    with pytest.raises(SystemExit) as e: main(['--config', 'demo_cpu', bad])
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and err.count('\n') == 1, err
    assert 'hang_timeout' not in err  # not a list of every key


def test_offline_weights_are_one_line(data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'empty_hub'))
    def offline(*a, **k): raise OSError('[Errno 101] Network is unreachable')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(SystemExit) as e:
        main(['--config', 'demo_cpu', *TINY, 'pretrained=IMAGENET1K_V1', f'output_dir={tmp_path / "run"}'])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count('\n') == 1 and 'Traceback' not in err, err
    assert err.startswith("gol-train: error: pretrained='IMAGENET1K_V1': could not get torchvision's resnet18")
    assert 'Network is unreachable' in err and 'pretrained=none' in err


def test_engine_mmdet_without_mmdetection_says_how_to_install(monkeypatch):
    for m in ('mmdet', 'mmcv', 'mmengine'): monkeypatch.setitem(sys.modules, m, None)  # as if not installed
    monkeypatch.delitem(sys.modules, 'gol_nb.mmdet_runner', raising=False)
    with pytest.raises(SystemExit) as e: gol_train(['--engine', 'mmdet', '--config', 'gol_cascade_r50'])
    assert e.value.code == ('gol-train: error: the mmdetection engine is not installed: run `make mmdet` '
                            '(builds mmcv once, 10-45 min on 2 cores)')
    code = ("import sys; sys.modules.update(mmdet=None, mmcv=None, mmengine=None); "
            "import gol_nb, gol_nb.engine, gol_nb.params, gol_nb.detection, gol_nb.detection.train, gol_nb.studies, "
            "gol_nb.classification.train, gol_nb.cli")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]  # everything but the mmdetection engine imports without it
    for module in ('gol_nb.mmdet_plugin', 'gol_nb.mmdet_runner'):  # and the engine itself says how to get it
        code = f"import sys; sys.modules.update(mmdet=None, mmcv=None, mmengine=None); import {module}"
        r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode != 0 and last.startswith(f'ImportError: {module}: the mmdetection engine is not installed: '
                                                     'run `make mmdet`'), r.stderr[-1500:]


def test_a_diverging_run_warns_once_naming_base_lr_and_grad_clip(data_root, tmp_path, capsys):
    out = tmp_path / 'run'
    try: train(cfg_for(out, 'loss=softmax', 'base_lr=10000', 'grad_clip=10', 'epochs=2', 'max_iters=6'))
    except NonFiniteError: pass  # it may also go NaN: the warning came first
    err = capsys.readouterr().err
    assert err.count('exploded') == 1 and 'base_lr (now 10000)' in err and 'grad_clip (now 10)' in err, err[-2000:]
    assert [r for r in read_jsonl(out / 'log.jsonl') if r.get('event') == 'warning']


def test_notebook_05_names_its_parameter_and_resolves_paths_at_the_repository_root(tmp_path):
    "Run from another folder: relative paths start at the repository root; a bad preset is one short error."
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, '-m', 'papermill', str(root / 'nbs' / '05_train_gol.ipynb'), 'out.ipynb',
                        '-p', 'preset', 'no_such_preset', '-p', 'output_dir', 'rel_run'], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env={**os.environ, 'PYTHONPATH': str(root)})
    err = p.stderr[p.stderr.find('PapermillExecutionError'):]
    assert p.returncode != 0 and "ParameterError: parameter 'preset' is 'no_such_preset'" in err, err[-3000:]
    assert f'relative paths start at {root}' in err and '--config' not in err
    assert len(err.splitlines()) < 25, err  # the cell's lines, not the library's traceback
    assert sorted(q.name for q in tmp_path.iterdir()) == ['out.ipynb']  # no rel_run/, no data/ here
