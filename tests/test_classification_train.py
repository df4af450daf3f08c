"Long-tailed classification training: decoupled stage 2, end-to-end learning, resume, configs and the CLI."
import json
from dataclasses import replace
import pytest
import torch
import yaml

from gol_nb.classification.data import ArrayDataset, lt_counts
from gol_nb.classification.models import build_model, reset_classifier, classifier_bias
from gol_nb.classification.train import (ClsConfig, get_preset, check_config, train, train_stage, make_loss,
                                         config_from_args, PRESETS)
from gol_nb.engine import init_distributed


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
    import gol_nb.classification.train as T
    cfg = _tiny_cfg(tmp_path, imb_factor=100, recipe='decoupled', epochs=2, stage2_epochs=2, stage2_lr=0.05, max_iters=4)
    full = train(cfg)
    real, calls = T.save_checkpoint, []
    def dying_save(*a, **k):
        real(*a, **k); calls.append(1)
        if len(calls) == kill_after: raise _Killed()
    cfg2 = replace(cfg, output_dir=str(tmp_path / 'run2'))
    monkeypatch.setattr(T, 'save_checkpoint', dying_save)
    with pytest.raises(_Killed): train(cfg2)
    monkeypatch.setattr(T, 'save_checkpoint', real)
    assert not (tmp_path / 'run2' / 'results.json').exists()
    resumed = train(cfg2)
    assert resumed['stage1']['top1'] == pytest.approx(full['stage1']['top1'], abs=1e-9)
    assert resumed['final']['top1'] == pytest.approx(full['final']['top1'], abs=1e-9)
    assert resumed['final']['weight_norms'] == pytest.approx(full['final']['weight_norms'], rel=1e-5)
    log = [json.loads(l) for l in (tmp_path / 'run2' / 'log.jsonl').read_text().splitlines()]
    assert [(r['stage'], r['epoch']) for r in log if 'stage' in r] == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_config_errors_and_presets(tmp_path):
    with pytest.raises(ValueError, match='dataset must be one of'): check_config(ClsConfig(dataset='svhn'))
    with pytest.raises(ValueError, match='stage2_loss'): check_config(ClsConfig(stage2_loss='focal'))
    with pytest.raises(ValueError, match='stage1_checkpoint not found'): check_config(ClsConfig(stage1_checkpoint=str(tmp_path / 'x.pth')))
    assert set(PRESETS) >= {'cifar100_lt_r32', 'imagenet_lt_r50', 'imagenet_lt_se_r50', 'places_lt_r152', 'mnist_lt_demo'}
    c = get_preset('cifar100_lt_r32'); c.milestones.append(1)
    assert get_preset('cifar100_lt_r32').milestones == [200, 220]  # presets are copied
    cfg, n = config_from_args(['--preset', 'imagenet_lt_r50', 'epochs=3', 'lr=0.5'])
    assert (cfg.epochs, cfg.lr, cfg.model, n) == (3, 0.5, 'resnet50', 1)
    with pytest.raises(Exception, match='nosuchkey'): config_from_args(['nosuchkey=1'])
    with pytest.raises(ValueError, match='recipe'): config_from_args(['recipe=joint'])


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
    from gol_nb.classification.train import launch
    cfg = _tiny_cfg(tmp_path, imb_factor=100, recipe='decoupled', epochs=1, stage2_epochs=1, max_iters=3, batch_size=32)
    r = launch(cfg, nproc=2)
    assert r['final']['loss'] == 'gumbel' and r['stage1']['loss'] == 'softmax' and r['num_train'] == 988
    log = [json.loads(l) for l in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()]
    assert [(x['stage'], x['epoch']) for x in log if 'stage' in x] == [(1, 1), (2, 1)]  # one writer, not two


def test_cli_module_runs_a_preset(tmp_path):
    import subprocess, sys
    out = tmp_path / 'cli'
    p = subprocess.run([sys.executable, '-m', 'gol_nb.classification.train', '--preset', 'mnist_lt_demo', 'epochs=1',
                        'stage2_epochs=1', 'max_iters=3', f'output_dir={out}'], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert set(json.loads(p.stdout.strip().splitlines()[-1])) == {'top1', 'many', 'medium', 'few'}
    assert yaml.safe_load((out / 'config.yaml').read_text())['epochs'] == 1
    p = subprocess.run([sys.executable, '-m', 'gol_nb.classification.train', 'lr=fast'], capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "lr='fast'" in p.stderr
