"""mmdetection engine: the gol_nb losses inside mmdet's heads, every paper config trained on the synthetic set,
evaluation, the data set's shared data list, and gol_nb's run-folder policy (resume, checkpoint fallback, signals)
around mmengine's Runner."""
import json, math, os, pickle, re, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmcv.ops', reason='mmcv without its compiled ops (make install builds them)')

from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from gol_nb.data import make_synthetic_lvis, class_statistics, load_lvis
from gol_nb.losses import GOL, GumbelBCE, prior_bias
from gol_nb.engine import (read_jsonl, run_status, latest_checkpoint, ConfigMismatchError, RunFolderError,
                           NonFiniteError)
from gol_nb.mmdet_plugin import (PAPER_CONFIGS, PAPER_CONFIG_INFO, BASELINE_CONFIGS, BASELINE_CONFIG_INFO,
                                 MMDET_CONFIGS, CONFIG_DIR)
from gol_nb.mmdet_runner import run_mmdet, SMOKE_OVERRIDES, get_mmdet_config, backbone_weights, main

register_all_modules()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "One torch thread: where other jobs share the cores, two threads spin-wait for each other (steps 3-20x slower)."
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope='module')
def syn(tmp_path_factory):
    return make_synthetic_lvis(tmp_path_factory.mktemp('syn'), num_train=40, num_val=4, num_classes=8, image_size=64)


def _head(loss_cfg, C):
    return MODELS.build(dict(type='Shared2FCBBoxHead', in_channels=4, fc_out_channels=8, roi_feat_size=2,
                             num_classes=C, loss_cls=loss_cfg))


def test_gol_through_mmdet_head_equals_gol(syn):
    "mmdet's box head computes exactly gol_nb's GOL (same logits, labels and random draws), rare classes included."
    stats = class_statistics(load_lvis(syn.train_json))
    C = len(stats.image_counts)
    head = _head(dict(type='GOLLoss', num_classes=C, ann_file=str(syn.train_json), lambda_='rare'), C)
    direct = GOL(C, torch.as_tensor(stats.image_counts), stats.num_images, lambda_='rare')
    assert direct.rare.any() and not direct.rare.all()  # DropLoss weights really act
    torch.manual_seed(0)
    N = 256
    labels = torch.randint(0, C + 1, (N,))
    labels[:64] = C
    logits = (3 * torch.randn(N, C)).requires_grad_()
    head.loss_cls.loss.generator = torch.Generator().manual_seed(1)
    direct.generator = torch.Generator().manual_seed(1)
    got = head.loss(logits, None, None, labels, torch.ones(N), None, None)['loss_cls']
    want = direct(logits, labels, avg_factor=N)
    torch.testing.assert_close(got, want)
    g1, = torch.autograd.grad(got, logits)
    direct.generator = torch.Generator().manual_seed(1)
    g2, = torch.autograd.grad(direct(logits, labels, avg_factor=N), logits)
    torch.testing.assert_close(g1, g2)
    # the value is Eq. 10: the weighted element losses summed over classes and RoIs, divided by the RoIs
    direct.generator = torch.Generator().manual_seed(1)
    per_element = direct(logits, labels, reduction_override='none')
    torch.testing.assert_close(got, per_element.sum() / N)


def test_gumbel_background_channel_through_head(syn):
    "The activation-study Gumbel: C+1 channels in the head, the loss is GumbelBCE(background_channel=True)."
    C = 8
    head = _head(dict(type='GumbelLoss', num_classes=C, background_channel=True), C)
    assert head.fc_cls.out_features == C + 1
    logits, labels = torch.randn(32, C + 1), torch.randint(0, C + 1, (32,))
    got = head.loss(logits, None, None, labels, torch.ones(32), None, None)['loss_cls']
    torch.testing.assert_close(got, GumbelBCE(C, background_channel=True)(logits, labels, avg_factor=32))
    scores = head.loss_cls.get_activation(logits)
    torch.testing.assert_close(scores[:, :C], torch.exp(-torch.exp(-logits[:, :C])))
    assert (scores[:, C] == 0).all()


def test_every_config_has_info_and_file():
    assert set(PAPER_CONFIGS) == set(PAPER_CONFIG_INFO) and set(BASELINE_CONFIGS) == set(BASELINE_CONFIG_INFO)
    assert all(p.is_file() for p in MMDET_CONFIGS.values())
    assert all(i.engine == 'mmdet' for i in {**PAPER_CONFIG_INFO, **BASELINE_CONFIG_INFO}.values())
    assert {n for n, i in PAPER_CONFIG_INFO.items() if i.study == 'backbones'} == {
        'mmdet_softmax_cascade_r101_1x', 'mmdet_gumbel_cascade_r101_1x', 'mmdet_softmax_htc_r101_1x',
        'mmdet_gumbel_htc_r101_1x'}
    dense = {n: i for n, i in PAPER_CONFIG_INFO.items() if i.study == 'dense'}
    assert len(dense) == 4 and sum(i.baseline for i in dense.values()) == 2
    coco = [dense[f'mmdet_{k}_focal_retinanet_r50_coco_1x'].paper['AP'] for k in ('sigmoid', 'gumbel')]
    assert coco[1] - coco[0] == pytest.approx(0.4)  # the paper's claim, section 6
    assert all(i.paper and i.note and i.study == 'baselines' for i in BASELINE_CONFIG_INFO.values())


def test_gumbel_retinanet_head_prior_and_loss():
    "The Gumbel RetinaNet config: anchors start at G(b) = 0.01 (not the sigmoid prior), loss and scores are Gumbel's."
    from mmengine import Config
    from gol_nb.losses import build_loss
    cfg = Config.fromfile(PAPER_CONFIGS['mmdet_gumbel_focal_retinanet_r50_coco_1x']).model.bbox_head
    C = 4
    head = MODELS.build(dict(cfg.to_dict(), num_classes=C, in_channels=8, feat_channels=8, stacked_convs=1,
                             loss_cls=dict(cfg.loss_cls.to_dict(), num_classes=C)))
    head.init_weights()
    b = head.retina_cls.bias.detach()
    assert torch.allclose(b, torch.full_like(b, prior_bias('gumbel', 0.01)))
    assert torch.allclose(torch.exp(-torch.exp(-b)), torch.full_like(b, 0.01))  # sigmoid's prior would give 1e-43
    torch.manual_seed(0)
    x = [torch.randn(2, 8, s, s) for s in (8, 4, 2, 1, 1)]
    scores, deltas = head(x)
    n = sum(s.shape[2] * s.shape[3] * 9 for s in scores) * 2
    labels, weights = torch.randint(0, C + 1, (n,)), (torch.rand(n) > 0.2).float()
    flat = torch.cat([s.permute(0, 2, 3, 1).reshape(-1, C) for s in scores])
    got = head.loss_cls(flat, labels, weights, avg_factor=11.0)
    want = build_loss('gumbel_focal', C, alpha=0.25, gamma=2.0)(flat, labels, weights, 11.0)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(head.loss_cls.get_activation(flat), torch.exp(-torch.exp(-flat)))


def test_backbone_weights_offline(tmp_path, monkeypatch):
    "torchvision:// weights come from torch's hub cache; else downloaded; else a sentence says what to do."
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    def offline(url, dst, progress=True): raise OSError('Name or service not known')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    model = {'backbone': {'init_cfg': {'type': 'Pretrained', 'checkpoint': 'torchvision://resnet50'}}}
    with pytest.raises(RuntimeError, match=r'Download https://download.pytorch.org/models/resnet50-0676ba61.pth to .*'
                                           r'pretrained=none'):
        backbone_weights(model)
    cached = tmp_path / 'checkpoints' / 'resnet50-0676ba61.pth'
    cached.parent.mkdir(exist_ok=True); cached.write_bytes(b'weights')
    assert backbone_weights(model).startswith('torchvision://resnet50')
    assert model['backbone']['init_cfg']['checkpoint'] == str(cached)  # mmengine loads the local file
    assert backbone_weights({'backbone': {'init_cfg': None}}) == 'none'


# Every config trains on the same two images (batch 2: the same batch each iteration). The backbone, FPN and RPN get
# lr 0 (their gradients are still computed): the proposals then stay the same, so each iteration samples its RoIs
# from the same candidates (all positives, a random share of the negatives) and the loss curve is smooth; the RoI
# heads, where the gol_nb losses act, learn. With the RPN learning too, which RoIs turn positive changes from one
# iteration to the next and the first few losses go up and down (the notebook's smoke run trains everything).
FROZEN = ('optim_wrapper.paramwise_cfg='
          '{custom_keys: {backbone: {lr_mult: 0}, neck: {lr_mult: 0}, rpn_head: {lr_mult: 0}}}')
TINY = [o for o in SMOKE_OVERRIDES if not o.startswith(('synth_num_train', 'max_iters'))] + [
    'synth_num_train=2', 'max_iters=6', FROZEN]


@pytest.mark.parametrize('name', list(MMDET_CONFIGS))
def test_paper_config_trains(name, tmp_path, monkeypatch):
    "Every paper and baseline config trains a few iterations on the tiny synthetic set: the loss decreases, metrics."
    monkeypatch.setenv('GOL_DATA_ROOT', str(tmp_path / 'data'))
    out = tmp_path / 'run'
    evaluate = name == 'mmdet_gol_r50_lvis_v1_2x'  # one config is evaluated on the val set, the others on 1 image
    dense = ['model.test_cfg.score_thr=0.0'] if 'retinanet' in name else []  # 6 iterations: scores still low
    metrics = run_mmdet(name, TINY + [f'output_dir={out}'] + dense + ([] if evaluate else ['max_val_images=1']))
    steps = [r for r in read_jsonl(out / 'log.jsonl') if 'loss' in r]
    losses = [r['loss'] for r in steps]
    assert len(losses) == 6 and all(map(math.isfinite, losses))
    assert losses[-1] < losses[0] and sum(losses[-3:]) < sum(losses[:3]), f"{name}: no decrease: {losses}"
    assert run_status(out) == 'finished'
    saved = json.loads((out / 'metrics.json').read_text())
    coco = 'coco' in name  # mmdet's CocoMetric: box AP (also as AP), by object size, no frequency groups
    want = {'AP', 'APb', 'APs', 'bbox_mAP', 'iterations'} if coco else {'AP', 'APr', 'APc', 'APf', 'APb', 'bbox_AP',
                                                                          'iterations'}
    assert saved == metrics and want <= set(saved)
    assert (out / 'per_class_ap.csv').is_file() != coco
    print(f"{name}: losses {[round(l, 3) for l in losses]}, s/step {[round(r['time'], 2) for r in steps]}")
    if evaluate:  # computed on the 4 val images (no class is without ground truth: -1 would mean that)
        assert 0 <= metrics['AP'] <= 1 and 0 <= metrics['APb'] <= 1 and saved['iterations'] == 6


SMALL = SMOKE_OVERRIDES + ['max_val_images=1']


def test_resume_continues_and_refuses_changes(tmp_path, monkeypatch):
    "resume=true continues from the newest verified checkpoint (a corrupt newer one is skipped); changes are refused."
    monkeypatch.setenv('GOL_DATA_ROOT', str(tmp_path / 'data'))
    out = tmp_path / 'run'
    run_mmdet('mmdet_gumbel_r50_1x', SMALL + [f'output_dir={out}', 'max_iters=2', 'checkpoint_interval=1'])
    ckpts = sorted((out / 'checkpoints').glob('*.pth'))
    assert [p.name for p in ckpts] == ['iter_00000001.pth', 'iter_00000002.pth']
    with pytest.raises(RunFolderError, match='already holds a run'):
        run_mmdet('mmdet_gumbel_r50_1x', SMALL + [f'output_dir={out}', 'max_iters=2'])
    with pytest.raises(ConfigMismatchError, match='lambda_'):
        run_mmdet('mmdet_gumbel_r50_1x', SMALL + [f'output_dir={out}', 'resume=true', 'lambda_=0.5'])
    with open(ckpts[-1], 'r+b') as f: f.seek(1000); f.write(b'corrupted')  # the newest no longer verifies
    (out / 'metrics.json').unlink()
    run_mmdet('mmdet_gumbel_r50_1x', SMALL + [f'output_dir={out}', 'max_iters=4', 'resume=true'])
    log = read_jsonl(out / 'log.jsonl')
    resumed = [r for r in log if r.get('event') == 'resume']
    assert resumed and resumed[-1]['checkpoint'] == 'iter_00000001.pth'
    assert 'iter_00000002.pth' in resumed[-1]['skipped'][0]
    iters = [r['iteration'] for r in log if 'loss' in r]
    assert iters == [1, 2, 2, 3, 4]  # the second run restarted after iteration 1, the corrupt checkpoint's work redone
    assert run_status(out) == 'finished'


def test_resume_is_exact(tmp_path, monkeypatch):
    "Stopping after 2 iterations and resuming to 4 gives the weights of 4 uninterrupted iterations."
    monkeypatch.setenv('GOL_DATA_ROOT', str(tmp_path / 'data'))
    opts = SMALL + ['max_iters=4', 'num_workers=1']
    run_mmdet('mmdet_gol_r50_lvis_v1_2x', opts + [f'output_dir={tmp_path}/a'])
    run_mmdet('mmdet_gol_r50_lvis_v1_2x', opts + [f'output_dir={tmp_path}/b', 'max_iters=2'])
    run_mmdet('mmdet_gol_r50_lvis_v1_2x', opts + [f'output_dir={tmp_path}/b', 'resume=true'])
    a = torch.load(latest_checkpoint(tmp_path / 'a'), weights_only=False)
    b = torch.load(latest_checkpoint(tmp_path / 'b'), weights_only=False)
    assert a['meta']['iter'] == b['meta']['iter'] == 4
    a, b = a['state_dict'], b['state_dict']
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], msg=lambda m: f"{k}: {m}")


def test_sigterm_checkpoints_and_stops(tmp_path):
    "SIGTERM: the CLI writes a checkpoint at the end of the iteration, exits 128+15; resume=true finishes the run."
    env = {**os.environ, 'GOL_DATA_ROOT': str(tmp_path / 'data'), 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    out = tmp_path / 'run'
    args = [sys.executable, '-m', 'gol_nb.mmdet_runner', '--config', 'mmdet_softmax_r50_1x', *SMALL,
            f'output_dir={out}', 'max_iters=50', 'synth_num_train=100']
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any(r.get('iteration', 0) >= 2 for r in read_jsonl(out / 'log.jsonl')):
        time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert 'resume=true' in output
    assert run_status(out) == 'interrupted'
    stopped = max(r['iteration'] for r in read_jsonl(out / 'log.jsonl') if 'loss' in r)
    assert (out / 'checkpoints' / f'iter_{stopped:08d}.pth').is_file()
    done = subprocess.run(args[:-2] + ['max_iters=%d' % (stopped + 1), 'synth_num_train=100', 'resume=true'], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert run_status(out) == 'finished'


def test_torchrun_two_cpu_processes(tmp_path, monkeypatch):
    "launcher='pytorch' under torchrun: two gloo processes train, rank logs are written, rank 0 evaluates."
    monkeypatch.setenv('GOL_DATA_ROOT', str(tmp_path / 'data'))
    out = tmp_path / 'run'
    metrics = run_mmdet('mmdet_gol_r50_lvis_v1_2x', SMALL + [f'output_dir={out}', 'device=cpu', 'max_iters=2'], nproc=2)
    assert {'AP', 'APb'} <= set(metrics)
    assert "'AP'" in (out / 'logs' / 'rank1.log').read_text()  # rank 1 ran to the end (it prints the metrics too)
    scaling = [r for r in read_jsonl(out / 'log.jsonl') if r.get('event') == 'lr_scaling']
    assert scaling[0]['total_batch'] == 4  # 2 processes x 2 images
    assert torch.load(latest_checkpoint(out), weights_only=False)['world_size'] == 2
    assert run_status(out) == 'finished'
    lists = sorted(p.parent.name for p in (tmp_path / 'annotation-cache').glob('*/data_bytes.npy'))
    assert len(lists) == 2 and lists[0].startswith('lvis_v1_train'), lists  # train and val: one data list per file


def _coco_file(lvis_json: Path, images: Path, out: Path) -> Path:
    "A COCO-format file of an LVIS-format one, written here by hand (file_name per image, iscrowd per annotation)."
    d = json.loads(lvis_json.read_text())
    coco = dict(images=[dict(id=im['id'], width=im['width'], height=im['height'],
                             file_name=im['coco_url'].rsplit('/', 1)[-1]) for im in d['images']],
                annotations=[dict(a, iscrowd=0) for a in d['annotations']],
                categories=[dict(id=c['id'], name=c['name']) for c in d['categories']])
    assert all((images / im['file_name']).is_file() for im in coco['images'])
    out.write_text(json.dumps(coco))
    return out


def test_coco_config_from_the_command_line(tmp_path, monkeypatch, capsys):
    "gol-train --engine mmdet on a COCO config and COCO-format files: CocoMetric's box AP; a short console output."
    monkeypatch.setenv('GOL_DATA_ROOT', str(tmp_path / 'data'))
    syn = make_synthetic_lvis(tmp_path / 'syn', num_train=6, num_val=3, num_classes=4, image_size=64)
    tr = _coco_file(syn.train_json, syn.train_images, tmp_path / 'train.json')
    va = _coco_file(syn.val_json, syn.val_images, tmp_path / 'val.json')
    out = tmp_path / 'run'
    opts = [o for o in SMOKE_OVERRIDES if not o.startswith('synth_')] + [
        f'train_ann={tr}', f'train_images={syn.train_images}', f'val_ann={va}', f'val_images={syn.val_images}',
        'train_scales=[64]', 'test_size=64', 'max_iters=2', 'pretrained=none', 'model.test_cfg.score_thr=0.0',
        f'output_dir={out}']
    main(['--config', 'mmdet_gumbel_focal_retinanet_r50_coco_1x', *opts])
    printed = capsys.readouterr()
    metrics = json.loads((out / 'metrics.json').read_text())
    assert {'AP', 'APb', 'AP50', 'APs', 'APm', 'APl', 'bbox_mAP'} <= set(metrics)
    assert metrics['AP'] == metrics['APb'] == metrics['bbox_mAP'] and -1 <= metrics['AP'] <= 1
    assert not (tmp_path / 'data').exists()  # the given files, not a synthetic set
    # the console: the run in a few lines; mmengine's environment and config dump only in its log file
    console = printed.out + printed.err
    assert len(console.splitlines()) < 30, console
    assert 'faster_coco_eval' not in console and 'sys.platform' not in console and 'Config:' not in console
    mm_log = next(out.glob('*/*.log')).read_text()
    assert 'sys.platform' in mm_log and 'GumbelFocalLoss' in mm_log


def test_faster_coco_eval_warning_is_gone():
    "Registering mmdet's modules through the plug-in does not claim that metrics will not be computed."
    try: import faster_coco_eval  # noqa: F401
    except ImportError: pass
    else: pytest.skip('faster_coco_eval is installed: mmdet does not warn')
    code = ('import warnings; warnings.simplefilter("default"); import gol_nb.mmdet_plugin; '
            'from mmdet.utils import register_all_modules; register_all_modules()')
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'faster_coco_eval' not in r.stdout + r.stderr


def _own_config(tmp_path: Path, syn) -> Path:
    "A user's config: the package's Softmax Mask R-CNN on the user's own 4-class data set."
    cfg = tmp_path / 'my_config.py'
    cfg.write_text(f"""_base_ = '{CONFIG_DIR}/softmax_mask-rcnn_r50_fpn_random-1x_lvis-v1.py'
model = dict(backbone=dict(init_cfg=None), roi_head=dict(
    bbox_head=dict(num_classes=4, loss_cls=dict(num_classes=4)), mask_head=dict(num_classes=4)))
train_dataloader = dict(dataset=dict(dataset=dict(data_root='', ann_file='{syn.train_json}',
                                                  data_prefix=dict(img='{syn.train_images}'))))
val_dataloader = dict(dataset=dict(data_root='', ann_file='{syn.val_json}', data_prefix=dict(img='{syn.val_images}')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='{syn.val_json}')
test_evaluator = val_evaluator
""")
    return cfg


def test_own_config_trains_on_its_own_data(tmp_path, monkeypatch):
    "A user's config trains and evaluates on the data it names (no synthetic set); missing data: one sentence."
    monkeypatch.setenv('GOL_DATA_ROOT', str(tmp_path / 'data'))
    syn = make_synthetic_lvis(tmp_path / 'mine', num_train=4, num_val=2, num_classes=4, image_size=64)
    cfg = _own_config(tmp_path, syn)
    opts = [o for o in SMALL if not o.startswith(('synth_', 'lambda_'))] + [
        'train_scales=[64]', 'test_size=64', 'max_iters=2', f'output_dir={tmp_path}/run']
    metrics = run_mmdet(str(cfg), opts)
    assert not (tmp_path / 'data').exists()  # before: a 12-class synthetic set was made and trained on
    table = (tmp_path / 'run' / 'per_class_ap.csv').read_text().splitlines()
    assert len(table) == 1 + 4 and {'AP', 'APb'} <= set(metrics)  # the config's 4 classes, evaluated on its val file
    gone = tmp_path / 'gone.py'
    gone.write_text(cfg.read_text().replace(str(syn.train_json), str(tmp_path / 'missing.json')))
    with pytest.raises(ValueError, match=r"gone\.py: train_dataloader's annotation file .*missing\.json does not "
                                         r"exist"):
        run_mmdet(str(gone), opts[:-1] + [f'output_dir={tmp_path}/run2'])
    assert not (tmp_path / 'run2').exists()  # refused before the run folder was made


@pytest.mark.parametrize('text, option, match', [
    ("model = dict(\n", None, r"bad\.py: Python syntax error at line \d"),
    (None, 'model.roi_head.bbox_headd.num_classes=3', r"option 'model\.roi_head\.bbox_headd\.num_classes': .* has no "
                                                      r"'bbox_headd' under 'model\.roi_head'"),
    (None, 'model.roi_head.bbox_head.loss_cls.foo=1', r"has no key 'foo' under 'model\.roi_head\.bbox_head\.loss_cls'"),
    (None, 'train_cfg.max_epochs=abc', r"option 'train_cfg\.max_epochs': expected a number like the config's value"),
])
def test_bad_mmdet_config_is_one_sentence(text, option, match, tmp_path, capsys):
    "A config with a syntax error, an option the config lacks or of the wrong kind: one line naming it, no traceback."
    config = 'mmdet_gol_r50_lvis_v1_2x'
    if text is not None:
        (tmp_path / 'bad.py').write_text(text)
        config = str(tmp_path / 'bad.py')
    with pytest.raises(SystemExit) as e:
        main(['--config', config, *SMALL, f'output_dir={tmp_path}/run'] + ([option] if option else []))
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'Traceback' not in err, err
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err


def test_nan_from_a_huge_lr_names_iteration_and_lr(tmp_path, monkeypatch):
    "base_lr=1e6: the run stops with the iteration, the lr and a hint (not a bare 'logits contain NaN')."
    monkeypatch.setenv('GOL_DATA_ROOT', str(tmp_path / 'data'))
    with pytest.raises(NonFiniteError, match=r"iteration \d+.*lr .*lower base_lr") as e:
        run_mmdet('mmdet_gol_r50_lvis_v1_2x', SMALL + [f'output_dir={tmp_path}/run', 'base_lr=1000000.0', 'max_iters=6'])
    print(e.value)


def test_metric_groups_come_from_the_training_file(tmp_path):
    "GolLVISMetric(train_ann=...) groups classes by their training image counts, whatever the val file says."
    from gol_nb.data import frequency_group
    from gol_nb.mmdet_plugin import GolLVISMetric
    syn = make_synthetic_lvis(tmp_path / 'syn', num_train=40, num_val=6, num_classes=5, image_size=64)
    counts = {c['id']: c['image_count'] for c in load_lvis(syn.train_json)['categories']}
    val = json.loads(syn.val_json.read_text())
    for c in val['categories']: c['frequency'] = 'r'  # the val file's field disagrees with the training counts
    val_file = tmp_path / 'val.json'
    val_file.write_text(json.dumps(val))
    want = {i: frequency_group(n) for i, n in counts.items()}
    assert set(want.values()) != {'r'}
    for train_ann, expected in ((str(syn.train_json), want), (None, {i: 'r' for i in want})):
        metric = GolLVISMetric(ann_file=str(val_file), train_ann=train_ann)
        metric.process({}, [dict(img_id=im['id'], pred_instances=dict(
            bboxes=torch.tensor([[0., 0., 10., 10.]]), scores=torch.ones(1), labels=torch.zeros(1, dtype=torch.long),
            masks=torch.zeros(1, 64, 64, dtype=torch.bool))) for im in val['images']])
        metric.compute_metrics(metric.results)
        got = dict(zip(metric.per_class['category_id'], metric.per_class['frequency']))
        assert got == expected


def _gol_set(syn, **options):
    "The mmdetection engine's data set on the synthetic training file (no pipeline: data infos only)."
    from gol_nb.mmdet_plugin import GolLVISDataset
    return GolLVISDataset(ann_file=str(syn.train_json), data_prefix=dict(img=str(syn.train_images)), **options)


def _infos(ds) -> list:
    return [ds.get_data_info(i) for i in range(len(ds))]


@pytest.mark.parametrize('options', [{}, dict(filter_cfg=dict(filter_empty_gt=True, min_size=32)),
                                     dict(test_mode=True), dict(indices=7), dict(indices=-5),
                                     dict(indices=[9, 2, -1, 9]), dict(lazy_init=True)])
def test_cached_data_list_is_mmengines(syn, options):
    "GolLVISDataset's data list from the annotation cache equals mmengine's own, info by info and byte for byte."
    parsed, built, mapped = _gol_set(syn, cache=False, **options), _gol_set(syn, **options), _gol_set(syn, **options)
    want = _infos(parsed)  # (lazy_init: the first get_data_info initializes)
    assert len(want) >= 4 and all(i['instances'] for i in want) >= ('filter_cfg' in options)
    assert _infos(built) == want and _infos(mapped) == want
    assert parsed.cache is None and built.cache.built and not mapped.cache.built
    assert built.cache.folder == mapped.cache.folder
    assert bytes(mapped.data_bytes) == bytes(parsed.data_bytes) and (mapped.data_address == parsed.data_address).all()
    assert (mapped.metainfo, mapped.cat_ids, mapped.cat2label, mapped.cat_img_map) == (
        parsed.metainfo, parsed.cat_ids, parsed.cat2label, parsed.cat_img_map)
    assert [mapped.get_cat_ids(i) for i in range(len(mapped))] == [parsed.get_cat_ids(i) for i in range(len(parsed))]


def test_data_list_cache_key(tmp_path):
    "One cache per file content and options (not the pipeline); rebuilt for a new file, a new image folder, damage."
    syn = make_synthetic_lvis(tmp_path / 'syn', num_train=8, num_val=2, num_classes=4, image_size=64)
    load = [dict(type='LoadImageFromFile')]
    first, same = _gol_set(syn), _gol_set(syn, pipeline=load)
    assert first.cache.built and not same.cache.built and same[0]['img'].shape == (64, 64, 3)
    other = _gol_set(syn, filter_cfg=dict(filter_empty_gt=True, min_size=40))
    assert other.cache.built and other.cache.folder != first.cache.folder
    (syn.train_images / 'extra').mkdir()  # images may now be found elsewhere: a new list
    moved = _gol_set(syn)
    assert moved.cache.built and moved.cache.folder != first.cache.folder
    d = json.loads(syn.train_json.read_text())
    gone = d['images'].pop()['id']
    d['annotations'] = [a for a in d['annotations'] if a['image_id'] != gone]
    syn.train_json.write_text(json.dumps(d))  # the same name, new content
    fewer = _gol_set(syn)
    assert fewer.cache.built and len(fewer) == len(first) - 1 == len(_gol_set(syn, cache=False))
    with open(fewer.cache.folder / 'data_bytes.npy', 'r+b') as f: f.seek(-3, 2); f.write(b'\x00\x01\x02')
    rebuilt = _gol_set(syn)
    assert rebuilt.cache.built and _infos(rebuilt) == _infos(_gol_set(syn, cache=False))


def test_data_list_cache_fallbacks_and_pickle(syn, tmp_path):
    "An unwritable cache folder, serialize_data=False or cache=False: mmengine's path; pickled without the mapped list."
    parsed = _gol_set(syn, cache=False)
    blocked = tmp_path / 'a-file'
    blocked.write_text('')
    with pytest.warns(UserWarning, match=r'a-file/cache is not writable .*is parsed in this process instead'):
        unwritable = _gol_set(syn, cache_dir=str(blocked / 'cache'))
    assert unwritable.cache is None and _infos(unwritable) == _infos(parsed)
    listed = _gol_set(syn, serialize_data=False)
    assert listed.cache is None and _infos(listed) == _infos(parsed)
    mapped = _gol_set(syn)
    blob = pickle.dumps(mapped)  # what a spawned DataLoader worker receives
    assert len(blob) < len(mapped.data_bytes) // 2, (len(blob), len(mapped.data_bytes))
    again = pickle.loads(blob)
    assert again.cache.folder == mapped.cache.folder and _infos(again) == _infos(parsed)
    subset = _gol_set(syn, indices=[3, 1])  # a gathered subset is the set's own: pickled with it
    assert _infos(pickle.loads(pickle.dumps(subset))) == _infos(_gol_set(syn, cache=False, indices=[3, 1]))
