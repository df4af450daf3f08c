"Long-tailed classification training: decoupled stage 2, end-to-end learning, resume, configs and the CLI."
import json, os, signal, subprocess, sys, time
from pathlib import Path
from dataclasses import replace
import pytest
import torch
import yaml
import gol_nb.classification.train as T

from gol_nb.classification.data import ArrayDataset, lt_counts
from gol_nb.classification.models import build_model, reset_classifier, classifier_bias
from gol_nb.classification.train import (ClsConfig, get_preset, get_config, check_config, train, train_stage,
                                         make_loss, classification_parser, PRESETS, PRESET_INFO, main, launch, stage_lr)
from gol_nb.engine import (parse_trainer_args, init_distributed, RunFolderError, ConfigMismatchError, NonFiniteError,
                           RunInterrupted, DeviceError, read_jsonl, load_checkpoint, latest_checkpoint, run_status)


def _tiny_cfg(tmp_path, **kw):
    base = dict(dataset='mnist_lt', model='small_cnn', imb_factor=10, epochs=2, batch_size=64, lr=0.05,
                weight_decay=5e-4, schedule='cosine', num_workers=0, num_threads=1, progress=False, scaled_groups=True,
                output_dir=str(tmp_path / 'run'))
    base.update(kw)
    return ClsConfig(**base)


def test_stage2_changes_only_the_classifier(tmp_path):
    torch.manual_seed(0)
    model = build_model('small_cnn', 10, in_channels=1)
    with torch.no_grad():  # non-trivial BN statistics, as after stage 1
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-1, 1); m.running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reset_classifier(model, 'gumbel', seed=1)
    assert torch.allclose(model.classifier.bias, torch.full((10,), classifier_bias('gumbel', 10)))
    x = torch.randint(0, 256, (96, 28, 28, 1), dtype=torch.uint8).numpy()
    ds = ArrayDataset(x, torch.arange(96) % 10, 10, transform=lambda t: t.float() / 255)
    cfg = _tiny_cfg(tmp_path, stage2_epochs=2, stage2_lr=0.5, batch_size=32)
    dist = init_distributed()
    train_stage(model, ds, make_loss('gumbel', 10), cfg, dist, stage=2, run_dir=tmp_path)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {'classifier.weight', 'classifier.bias'}, changed
    assert any(k.endswith('running_mean') for k in before)  # BN buffers were compared too


def test_decoupled_mnist_lt_beats_chance_and_writes_the_run(tmp_path):
    cfg = _tiny_cfg(tmp_path, recipe='decoupled', epochs=2, stage2_epochs=2, stage2_lr=0.05)
    full = train(cfg)
    assert full['num_train'] == sum(full['train_counts']) and full['num_test'] == 1000
    assert full['stage1']['top1'] > 40 and full['final']['top1'] > 40  # chance: 10%
    assert full['stage1']['loss'] == 'softmax' and full['final']['loss'] == 'gumbel'
    run = tmp_path / 'run'
    assert (run / 'config.yaml').is_file() and (run / 'results.json').is_file()
    assert json.loads((run / 'results.json').read_text())['final']['top1'] == full['final']['top1']
    log = [json.loads(l) for l in (run / 'log.jsonl').read_text().splitlines()]
    assert [(r['stage'], r['epoch']) for r in log if 'stage' in r] == [(1, 1), (1, 2), (2, 1), (2, 2)]


class _Killed(Exception): pass


@pytest.mark.parametrize('kill_after', [1, 3])  # killed in stage 1 (after epoch 1) or in stage 2 (after its epoch 1)
def test_resume_matches_uninterrupted(tmp_path, monkeypatch, kill_after):
    cfg = _tiny_cfg(tmp_path, imb_factor=100, recipe='decoupled', epochs=2, stage2_epochs=2, stage2_lr=0.05, max_iters=4)
    full = train(cfg)
    real, calls = T.checkpoint_step, []  # the trainer's checkpoint step, from the engine
    def dying_save(*a, **k):
        real(*a, **k); calls.append(1)
        if len(calls) == kill_after: raise _Killed()
    cfg2 = replace(cfg, output_dir=str(tmp_path / 'run2'))
    monkeypatch.setattr(T, 'checkpoint_step', dying_save)
    with pytest.raises(_Killed): train(cfg2)
    monkeypatch.setattr(T, 'checkpoint_step', real)
    assert not (tmp_path / 'run2' / 'results.json').exists()
    with pytest.raises(RunFolderError, match='add resume=true'): train(cfg2)  # no silent resume any more
    resumed = train(replace(cfg2, resume=True))
    assert resumed['stage1']['top1'] == pytest.approx(full['stage1']['top1'], abs=1e-9)
    assert resumed['final']['top1'] == pytest.approx(full['final']['top1'], abs=1e-9)
    assert resumed['final']['weight_norms'] == pytest.approx(full['final']['weight_norms'], rel=1e-5)
    log = [json.loads(l) for l in (tmp_path / 'run2' / 'log.jsonl').read_text().splitlines()]
    assert [(r['stage'], r['epoch']) for r in log if 'stage' in r] == [(1, 1), (1, 2), (2, 1), (2, 2)]


def parse_cls_args(argv: list[str]) -> tuple[ClsConfig, int]:
    "Config and process count as gol-train-cls parses them."
    cfg, a = parse_trainer_args(classification_parser(), argv, get_config, PRESET_INFO)
    return cfg, a.nproc


def test_config_errors_and_presets(tmp_path):
    with pytest.raises(ValueError, match='dataset must be one of'): check_config(ClsConfig(dataset='svhn'))
    with pytest.raises(ValueError, match='stage2_loss'): check_config(ClsConfig(stage2_loss='focal'))
    with pytest.raises(ValueError, match='stage1_checkpoint not found'): check_config(ClsConfig(stage1_checkpoint=str(tmp_path / 'x.pth')))
    assert set(PRESETS) >= {'cifar100_lt_r32', 'imagenet_lt_r50', 'imagenet_lt_se_r50', 'places_lt_r152', 'mnist_lt_demo'}
    c = get_preset('cifar100_lt_r32'); c.milestones.append(1)
    assert get_preset('cifar100_lt_r32').milestones == [200, 220]  # presets are copied
    cfg, n = parse_cls_args(['--config', 'imagenet_lt_r50', 'epochs=3', 'lr=0.5'])
    assert (cfg.epochs, cfg.lr, cfg.model, n) == (3, 0.5, 'resnet50', 1)
    cfg, n = parse_cls_args(['--config', 'imagenet_lt_r50', '--nproc', '2'])
    assert (cfg.model, n) == ('resnet50', 2)


def test_missing_cifar_data_names_the_folder(tmp_path):
    cfg = _tiny_cfg(tmp_path, dataset='cifar100_lt', model='resnet32', data_root=str(tmp_path / 'nodata'))
    with pytest.raises(FileNotFoundError, match='nodata'): train(cfg)


def test_cifar_resnet32_smoke(tmp_path):
    from gol_nb.classification.data import write_fake_cifar
    write_fake_cifar(tmp_path / 'd', 10, per_class=12, test_per_class=2)
    cfg = _tiny_cfg(tmp_path, dataset='cifar10_lt', model='resnet32', data_root=str(tmp_path / 'd'), epochs=1,
                    batch_size=16, recipe='decoupled', stage2_epochs=1)
    r = train(cfg)
    assert r['train_counts'] == lt_counts(12, 10, 10) and r['train_counts'][-1] == 1 and len(r['final']['per_class']) == 10
    saved = yaml.safe_load((tmp_path / 'run' / 'config.yaml').read_text())
    assert saved['model'] == 'resnet32'
    from gol_nb.engine import load_config
    assert load_config(ClsConfig, tmp_path / 'run' / 'config.yaml') == cfg  # the saved YAML re-creates the run's config


def test_ddp_two_processes_on_cpu(tmp_path):
    "Two gloo processes through gol_nb.engine.launch_torchrun; rank 0 writes the results."
    cfg = _tiny_cfg(tmp_path, imb_factor=100, recipe='decoupled', epochs=1, stage2_epochs=1, max_iters=3, batch_size=32,
                    device='cpu')
    r = launch(cfg, nproc=2)
    assert r['final']['loss'] == 'gumbel' and r['stage1']['loss'] == 'softmax' and r['num_train'] == 988
    log = [json.loads(l) for l in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()]
    assert [(x['stage'], x['epoch']) for x in log if 'stage' in x] == [(1, 1), (2, 1)]  # one writer, not two
    for r in (0, 1): assert (tmp_path / 'run' / 'logs' / f'rank{r}.log').is_file()  # one log file a rank


def test_cli_module_runs_a_preset(tmp_path):
    import subprocess, sys
    out = tmp_path / 'cli'
    script = str(Path(sys.executable).with_name('gol-train-cls'))  # the console script: sys.exit(main()) must exit 0
    p = subprocess.run([script, '--config', 'mnist_lt_demo', 'epochs=1',
                        'stage2_epochs=1', 'max_iters=3', f'output_dir={out}'], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert set(json.loads(p.stdout.strip().splitlines()[-1])) == {'top1', 'many', 'medium', 'few'}
    assert yaml.safe_load((out / 'config.yaml').read_text())['epochs'] == 1
    p = subprocess.run([sys.executable, '-m', 'gol_nb.classification.train', 'lr=fast'], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "lr: expected a number, got 'fast'" in p.stderr and p.stderr.count('\n') == 1


# --- the run-folder policy, lr, signals, devices ------------------------------------------------------------------
def test_cifar_lr_gamma_reading():
    c = get_preset('cifar100_lt_r32')
    assert (c.lr_gamma, c.milestones, c.base_batch) == (0.01, [200, 220], 64)
    ipe = 10
    lrs = [stage_lr(e * ipe, ipe, c.lr, c.epochs, c.schedule, c.milestones, c.lr_gamma, c.warmup_epochs)
           for e in (100, 200, 220)]
    assert lrs == pytest.approx([0.1, 1e-3, 1e-5])  # x0.01 at each milestone


def test_lr_scaled_linearly_and_logged(tmp_path):
    cfg = _tiny_cfg(tmp_path, epochs=1, max_iters=2, batch_size=32, base_batch=64, lr=0.1)
    train(cfg)
    ev = [r for r in read_jsonl(tmp_path / 'run' / 'log.jsonl') if r.get('event') == 'lr_scaling'][0]
    assert ev['lr'] == pytest.approx(0.05) and 'lr 0.05 = base_lr 0.1 x total batch 32 / base_batch 64' in ev['why']


def test_loss_is_per_sample(tmp_path):
    "The trainer's loss is sum / N (avg_factor), not a 'mean' over N x C elements."
    loss = make_loss('sigmoid', 10)
    x, y = torch.randn(6, 10), torch.arange(6)
    assert float(loss(x, y, avg_factor=6)) == pytest.approx(float(loss(x, y, reduction_override='sum')) / 6, rel=1e-6)


@pytest.mark.parametrize('change,msg', [
    (dict(loss='gumbel'), "loss 'softmax' -> 'gumbel'"),
    (dict(model='resnet32'), "model 'small_cnn' -> 'resnet32'"),
    (dict(lr=0.1), r'accept_changes=\[lr\]'),
    (dict(batch_size=32), r'accept_changes=\[batch_size\]'),
    (dict(seed=5), r'accept_changes=\[seed\]'),
])
def test_resume_refuses_a_changed_config(tmp_path, change, msg):
    cfg = _tiny_cfg(tmp_path, epochs=1, max_iters=2)
    train(cfg)
    before = {p: p.read_bytes() for p in (tmp_path / 'run').rglob('*') if p.is_file()}
    with pytest.raises(ConfigMismatchError, match=msg): train(replace(cfg, resume=True, epochs=2, accept_changes=['epochs'], **change))
    assert before == {p: p.read_bytes() for p in (tmp_path / 'run').rglob('*') if p.is_file()}


def test_nonfinite_loss_stops_on_its_iteration(tmp_path, monkeypatch):
    cfg = _tiny_cfg(tmp_path, epochs=2, max_iters=4, checkpoint_interval=1)
    real = T.make_loss
    class NaNOnThird(torch.nn.Module):
        def __init__(self, f): super().__init__(); self.f, self.n = f, 0
        def forward(self, logits, y, **kw):
            self.n += 1
            return self.f(logits, y, **kw) * (float('nan') if self.n == 3 else 1.)
    def nan_later(name, C): return NaNOnThird(real(name, C))
    monkeypatch.setattr(T, 'make_loss', nan_later)
    with pytest.raises(NonFiniteError, match='non-finite loss at iteration 3'): train(cfg)
    cks = sorted((tmp_path / 'run' / 'checkpoints').glob('*.pth'))
    assert [(load_checkpoint(p)['epoch'], load_checkpoint(p)['iter_in_epoch']) for p in cks] == [(0, 1), (0, 2)]


def test_mid_epoch_resume_after_sigterm_is_exact(tmp_path, monkeypatch):
    base = _tiny_cfg(tmp_path, imb_factor=100, recipe='decoupled', epochs=2, stage2_epochs=1, max_iters=5, stage2_lr=0.05)
    full = train(replace(base, output_dir=str(tmp_path / 'full')))
    real = T.stage_lr
    def lr_and_term(it, *a, **k):  # the scheduler's SIGTERM arrives during the 7th iteration (epoch 2, its 2nd)
        if it == 6: os.kill(os.getpid(), signal.SIGTERM)
        return real(it, *a, **k)
    monkeypatch.setattr(T, 'stage_lr', lr_and_term)
    cfg = replace(base, output_dir=str(tmp_path / 'killed'))
    with pytest.raises(RunInterrupted, match='stopped by SIGTERM at iteration 7'): train(cfg)
    monkeypatch.setattr(T, 'stage_lr', real)
    ck = load_checkpoint(latest_checkpoint(tmp_path / 'killed'))
    assert (ck['stage'], ck['epoch'], ck['iter_in_epoch']) == (1, 1, 2)
    assert run_status(tmp_path / 'killed') == 'interrupted'
    resumed = train(replace(cfg, resume=True))
    assert resumed['final']['top1'] == full['final']['top1']
    assert resumed['final']['weight_norms'] == pytest.approx(full['final']['weight_norms'], rel=0, abs=0)
    log = lambda d: [(r['stage'], r['epoch'], r['loss']) for r in read_jsonl(tmp_path / d / 'log.jsonl') if 'stage' in r]
    assert log('killed') == log('full')  # the interrupted epoch's loss is the same sum


def test_gpu_requests_without_gpus_fail_at_once(capsys, tmp_path):
    if torch.cuda.is_available(): pytest.skip('a GPU is visible')
    for argv in (['--gpus', '1'], ['--gpus', '2'], ['--nproc', '8']):
        with pytest.raises(SystemExit) as e: main(['--config', 'mnist_lt_demo', f'output_dir={tmp_path / "x"}', *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and 'GPU' in err and err.count('\n') == 1, (argv, err)
    assert not (tmp_path / 'x').exists()
    with pytest.raises(DeviceError): launch(get_preset('mnist_lt_demo'), nproc=2)


def test_prelaunch_checks_catch_missing_data_before_torchrun(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(['--config', 'cifar100_lt_r32', '--nproc', '2', 'device=cpu', f'data_root={tmp_path / "nodata"}',
              f'output_dir={tmp_path / "run"}'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'nodata' in err and err.count('\n') == 1
    assert not (tmp_path / 'run').exists()


def test_cli_forms(capsys):
    with pytest.raises(SystemExit) as e: main(['--list-presets'])
    out = capsys.readouterr().out.splitlines()
    assert e.value.code == 0 and [l.split()[0] for l in out] == list(PRESETS)
    assert all(PRESET_INFO[l.split()[0]] in l for l in out)
    with pytest.raises(SystemExit): main(['--help'])
    h = capsys.readouterr().out
    for k in ('--config', '--nproc', '--gpus', '--list-presets', 'lr_gamma=0.1', 'checkpoint_minutes=15.0',
              'resume=false', 'accept_changes=[]'):
        assert k in h, k


def test_check_config_refuses_a_float_for_an_int_field_and_if_below_1(tmp_path):
    with pytest.raises(ValueError, match=r'ClsConfig: epochs: expected an integer, got 2.5'):
        check_config(_tiny_cfg(tmp_path, epochs=2.5))
    with pytest.raises(ValueError, match=r'ClsConfig: imb_factor: the imbalance factor n_max / n_min must be a finite '
                                         r'number >= 1, got 0'):
        check_config(_tiny_cfg(tmp_path, imb_factor=0))


def test_finished_results_only_for_the_config_it_ran(tmp_path):
    from gol_nb.engine import finished_run
    "A finished run is reused by notebook 07 only if it ran the config asked for (bookkeeping keys aside)."
    cfg = _tiny_cfg(tmp_path, epochs=1, max_iters=2, imb_factor=10)
    assert finished_run(cfg, 'results.json') is None  # nothing there yet
    r = train(cfg)
    again = finished_run(replace(cfg, resume=True, num_workers=1, data_root='elsewhere', device='cpu'),
                         'results.json')
    assert again['final']['top1'] == r['final']['top1']
    with pytest.raises(ConfigMismatchError, match=r'holds a finished run with other settings \(epochs 1 -> 2\)'):
        finished_run(replace(cfg, epochs=2), 'results.json')
    with pytest.raises(ConfigMismatchError, match=r"loss 'softmax' -> 'gumbel', max_iters 2 -> 3\)"):
        finished_run(replace(cfg, loss='gumbel', max_iters=3), 'results.json')
    (tmp_path / 'run' / 'config.yaml').write_text('[unclosed')
    with pytest.raises(ConfigMismatchError, match='holds results but no readable config.yaml'):
        finished_run(cfg, 'results.json')


ROOT = Path(__file__).resolve().parents[1]


def _papermill_07(tmp_path, name, *params):
    "Notebook 07 under papermill in a real kernel, from the repository root: (returncode, stdout + stderr)."
    env = dict(os.environ, MPLBACKEND='Agg')
    p = subprocess.run([sys.executable, '-m', 'papermill', 'nbs/07_lt_classification.ipynb', str(tmp_path / name),
                        '-p', 'output_dir', str(tmp_path / 'runs'), *params], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.parametrize('params,msg', [
    (['-p', 'imb_factors', '[10, 0]'], "ValueError: parameter 'imb_factors': the imbalance factor n_max / n_min"),
    (['-p', 'epochs', '2.5'], "ParameterError: parameter 'epochs': expected an integer, got 2.5"),
    (['-p', 'overrides', "['epochz=3']"], "ParameterError: parameter 'overrides' (on preset mnist_lt_demo): "
                                           "ClsConfig: unknown key 'epochz'"),
], ids=['if0', 'float-epochs', 'overrides'])
def test_notebook_07_refuses_bad_parameters_naming_them(tmp_path, params, msg):
    "IF 0 trained (with the preset's IF, labelled as the dataset) and epochs 2.5 ran; both now stop before any run."
    rc, out = _papermill_07(tmp_path, '07.ipynb', *params)
    assert rc != 0 and msg in out, out[-3000:]
    assert not (tmp_path / 'runs').exists()


def test_notebook_07_does_not_reuse_runs_trained_with_other_settings(tmp_path):
    "Run with 1 epoch, then ask for 2 in the same output_dir: Table 4 came from the 1-epoch runs; now it stops."
    small = ['-p', 'imb_factors', '[10]', '-p', 'seeds', '[0]', '-p', 'variants', "['softmax_e2e']",
             '-p', 'stage2_epochs', '1', '-p', 'overrides', "['max_iters=2']"]
    rc, out = _papermill_07(tmp_path, 'a.ipynb', '-p', 'epochs', '1', *small)
    assert rc == 0, out[-3000:]
    rc, out = _papermill_07(tmp_path, 'b.ipynb', '-p', 'epochs', '2', *small)
    assert rc != 0 and 'holds a finished run with other settings (epochs 1 -> 2)' in out, out[-3000:]
    done = tmp_path / 'runs' / 'if10' / 'seed0' / 'softmax_e2e' / 'results.json'
    before = done.stat().st_mtime_ns
    rc, out = _papermill_07(tmp_path, 'c.ipynb', '-p', 'epochs', '1', *small)  # the same settings: reused as is
    assert rc == 0 and done.stat().st_mtime_ns == before, out[-3000:]
