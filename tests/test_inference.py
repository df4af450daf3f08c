"""Tests of gol_nb.detection.inference: LVIS detections from model outputs, the streamed validation pass, load_model,
gol-eval on a finished tiny run, gol-predict."""
import dataclasses, hashlib, json, warnings
from importlib.metadata import entry_points
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as pmu

from gol_nb.data import LVISDetection, make_synthetic_lvis
from gol_nb.detection.presets import get_config
from gol_nb.detection.inference import (checkpoint_classes, eval_main, evaluate_checkpoint, evaluate_detector,
                                        load_model, predict_images, predict_main, to_lvis_detections, to_lvis_records)
from gol_nb.detection.model import predict
from gol_nb.engine import load_checkpoint, save_checkpoint
from gol_nb.evaluate import read_detections, run_lvis_eval


def reference_records(det, image_id, category_ids, mask_thresh=.5):
    "The records as the trainer built them one by one with pycocotools (before the vectorised version)."
    boxes = det['boxes'].float().numpy()
    rles = pmu.encode(np.asfortranarray((det['masks'][:, 0] > mask_thresh).numpy().astype(np.uint8).transpose(1, 2, 0)))
    return [{'image_id': image_id, 'category_id': int(category_ids[l - 1]), 'score': float(s),
             'bbox': [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
             'segmentation': {'size': [int(v) for v in r['size']], 'counts': r['counts'].decode()}}
            for b, s, l, r in zip(boxes, det['scores'].tolist(), det['labels'].tolist(), rles)]


def random_outputs(n, h, w, num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * .7, h * .7])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w * .3, h * .3]) + .5
    return {'boxes': torch.cat([xy, xy + wh], 1) * 1.0001,
            'labels': torch.randint(1, num_classes + 1, (n,), generator=g), 'scores': torch.rand(n, generator=g),
            'masks': torch.rand(n, 1, h, w, generator=g) ** 3}


def test_to_lvis_detections_equals_the_record_by_record_reference():
    cats = [3, 7, 19, 20]
    outs = [random_outputs(n, h, w, 4, s) for n, h, w, s in [(30, 37, 53, 0), (0, 20, 20, 1), (5, 64, 48, 2)]]
    d = to_lvis_detections(outs, [11, 12, 13], cats, mask_thresh=.4)
    ref = [r for o, i in zip(outs, [11, 12, 13]) for r in reference_records(o, i, cats, .4)]
    assert d.to_records() == ref and len(d) == 35
    assert to_lvis_records(outs[2], 13, cats, .4) == reference_records(outs[2], 13, cats, .4)
    boxes_only = {k: v for k, v in outs[0].items() if k != 'masks'}
    assert not to_lvis_detections([boxes_only], [11], cats).has_masks


def tiny_config(root: Path, **kw):
    "A run that trains in seconds on a small synthetic set given as a real (file) data set."
    syn = make_synthetic_lvis(root / 'data', num_train=24, num_val=6, num_classes=6, image_size=64, seed=1)
    over = dict(train_ann=str(syn.train_json), train_images=str(syn.train_images), val_ann=str(syn.val_json),
                val_images=str(syn.val_images), output_dir=str(root / 'run'), max_iters=4, epochs=1, steps=[1],
                warmup_iters=1, batch_size=2, train_scales=[64], test_size=64, max_size=64, tensorboard=False,
                score_thresh=0.0, rfs=False, **kw)
    return get_config('demo_cpu', [f'{k}={json.dumps(v)}' for k, v in over.items()])


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    from gol_nb.detection.train import run_training
    root = tmp_path_factory.mktemp('tiny')
    cfg = tiny_config(root)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        metrics = run_training(cfg)
    return root / 'run', cfg, metrics


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob('*') if p.is_file()}


def test_gol_eval_reproduces_the_run_metrics(tiny_run, tmp_path):
    run, cfg, metrics = tiny_run
    saved = json.loads((run / 'metrics.json').read_text())
    assert saved['AP'] == metrics['AP']
    before = digest(run)
    out = tmp_path / 'ev'
    eval_main([str(run), '--out', str(out), '--num-workers', '0'])
    assert digest(run) == before  # the run's own files untouched, nothing added to them
    got = json.loads((out / 'metrics.json').read_text())
    keys = [k for k in saved if k.startswith(('AP', 'AR', 'bbox_'))]
    assert len(keys) >= 27 and {k: got[k] for k in keys} == {k: saved[k] for k in keys}
    assert got['iterations'] == saved['iterations']
    assert sorted(p.name for p in out.iterdir()) == ['eval_info.json', 'lvis_results.json', 'metrics.json',
                                                    'per_class_ap.csv']
    results = json.loads((out / 'lvis_results.json').read_text())
    assert results and set(results[0]) == {'image_id', 'category_id', 'score', 'bbox', 'segmentation'}
    # the results json is a complete answer: evaluating it gives the same figures
    assert run_lvis_eval(cfg.val_ann, results, 'segm').metrics['AP'] == got['AP']
    assert run_lvis_eval(cfg.val_ann, results, 'bbox').metrics['AP'] == got['APb']
    info = json.loads((out / 'eval_info.json').read_text())
    assert info['ann'] == cfg.val_ann and info['num_images'] == 6 and info['backend'] == 'hotcoco'


def test_gol_eval_other_set_and_default_folder(tiny_run, tmp_path):
    run, cfg, _ = tiny_run
    syn = make_synthetic_lvis(tmp_path / 'other', num_train=4, num_val=3, num_classes=6, image_size=64, seed=5)
    syn_more = make_synthetic_lvis(tmp_path / 'more', num_train=4, num_val=3, num_classes=8, image_size=64, seed=5)
    m = evaluate_checkpoint(run, syn.val_json, syn.val_images, num_workers=0, progress=False, max_images=2)
    folders = list((run / 'gol_eval').iterdir())
    assert len(folders) == 1 and folders[0].name.endswith('-lvis_v1_val')
    assert json.loads((folders[0] / 'eval_info.json').read_text())['num_images'] == 2
    assert 0 <= m['AP'] <= 1 and 0 <= m['APb'] <= 1
    with pytest.raises(ValueError, match='--ann and --images go together'): evaluate_checkpoint(run, syn.val_json)
    few = make_synthetic_lvis(tmp_path / 'few', num_train=4, num_val=3, num_classes=4, image_size=64, seed=5)
    with pytest.warns(UserWarning, match="2 of the model's classes .* are not categories of this file"):
        m = evaluate_checkpoint(run, few.val_json, few.val_images, out_dir=tmp_path / 'x', progress=False,
                                num_workers=0)
    assert (tmp_path / 'x' / 'per_class_ap.csv').read_text().count('\n') == 7  # the model's 6 classes
    with pytest.raises(ValueError, match='not in the training file'):  # a category the model does not know
        evaluate_checkpoint(run, syn_more.val_json, syn_more.val_images, out_dir=tmp_path / 'y', progress=False)
    import shutil; shutil.rmtree(run / 'gol_eval')


def test_load_model_ready_without_warnings(tiny_run):
    run, cfg, _ = tiny_run
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model = load_model(run)
    assert not model.training and model.category_ids == list(range(1, 7)) and len(model.class_names) == 6
    ckpt = load_checkpoint(model.checkpoint_path)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ckpt['model'].items())
    # the class-statistics loss got the training set's statistics, not placeholders
    stats = LVISDetection(cfg.train_ann, cfg.train_images).class_statistics()
    assert torch.equal(model.roi_heads.cls_loss.image_counts, torch.as_tensor(stats.image_counts, dtype=torch.float32))


def test_load_model_from_checkpoint_with_classes_and_errors(tiny_run, tmp_path):
    run, cfg, _ = tiny_run
    ckpt = load_checkpoint(load_model(run).checkpoint_path)
    ckpt = {k: v for k, v in ckpt.items() if k not in ('classes', 'data')}  # as checkpoints from before they were stored
    synthetic = {**ckpt['config'], 'train_ann': '', 'train_images': '', 'val_ann': '', 'val_images': ''}
    save_checkpoint(tmp_path / 'a', {**ckpt, 'config': synthetic}, 'epoch_001')
    with pytest.raises(ValueError, match='train_ann'): load_model(tmp_path / 'a')
    save_checkpoint(tmp_path / 'b', {**ckpt, 'config': synthetic, 'classes': checkpoint_classes(cfg.train_ann)}, 'x')
    model = load_model(tmp_path / 'b' / 'checkpoints' / 'x.pth')  # a checkpoint file; classes from the checkpoint
    assert model.category_ids == list(range(1, 7))
    with pytest.raises(ValueError, match='--ann and --images'): evaluate_checkpoint(tmp_path / 'b', progress=False)
    with pytest.raises(FileNotFoundError, match='no readable checkpoint'): load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match='neither a run folder nor a checkpoint'): load_model(tmp_path / 'none')
    bad = dict(ckpt, model={k: v for k, v in ckpt['model'].items() if 'box_predictor' not in k})
    save_checkpoint(tmp_path / 'c', bad, 'x')
    with pytest.raises(RuntimeError, match='do not fit'): load_model(tmp_path / 'c')


def test_validation_pass_sharded_over_ranks_through_files(tiny_run, tmp_path):
    run, cfg, _ = tiny_run
    cfg = dataclasses.replace(cfg, batch_size=1)  # the same batches whatever the sharding: the same detections
    model = load_model(run)
    val = LVISDetection(cfg.val_ann, cfg.val_images, train=False, scales=(cfg.test_size,), max_size=cfg.max_size)
    one = evaluate_detector(model, val, cfg.val_ann, cfg, torch.device('cpu'), out_dir=tmp_path / 'one')
    assert not (tmp_path / 'one').exists()
    # two ranks (run one after the other here; under torchrun a barrier separates writing and reading)
    assert evaluate_detector(model, val, None, cfg, torch.device('cpu'), rank=1, world_size=2, out_dir=tmp_path / 'two',
                             keep_detections=True) is None
    r1 = read_detections(tmp_path / 'two' / 'detections_rank1.dets')
    assert set(r1.image_id.tolist()) == {val.images[i]['id'] for i in (1, 3, 5)}
    two = evaluate_detector(model, val, None, cfg, torch.device('cpu'), rank=0, world_size=2, out_dir=tmp_path / 'two')
    assert two[0] == one[0] and two[1].equals(one[1])
    assert not (tmp_path / 'two').exists()


def test_gol_predict_writes_drawn_images_and_json(tiny_run, tmp_path, capsys):
    run, cfg, _ = tiny_run
    imgs = sorted(Path(cfg.val_images).iterdir())[:2]
    out = tmp_path / 'pred'
    predict_main([str(run), *map(str, imgs), '--out', str(out), '--score', '0'])
    assert 'detections with score >= 0.0' in capsys.readouterr().out
    recs = json.loads((out / 'detections.json').read_text())
    assert [r['file'] for r in recs] == [str(p) for p in imgs]
    for r, p in zip(recs, imgs):
        drawn = np.array(Image.open(out / r['drawn']))
        src = np.array(Image.open(p).convert('RGB'))
        assert drawn.shape == src.shape and r['height'] == src.shape[0]
        assert len(r['detections']) > 0 and (drawn != src).any()  # something was drawn
        assert {'category_id', 'name', 'score', 'bbox', 'segmentation'} == set(r['detections'][0])
    # a folder of images, a high threshold: nothing drawn, the images unchanged
    recs = predict_images(load_model(run), [cfg.val_images], tmp_path / 'hi', score_thresh=1.01)
    assert len(recs) == 6 and all(not r['detections'] for r in recs)
    r = recs[0]
    assert (np.array(Image.open(tmp_path / 'hi' / r['drawn'])) == np.array(Image.open(r['file']).convert('RGB'))).all()
    with pytest.raises(SystemExit): predict_main([str(run), str(tmp_path / 'missing.jpg')])


def _ddp_rank(rank, world, port, run, cfg, out, result):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    try:
        model = load_model(run)
        val = LVISDetection(cfg.val_ann, cfg.val_images, train=False, scales=(cfg.test_size,), max_size=cfg.max_size)
        res = evaluate_detector(model, val, cfg.val_ann, cfg, torch.device('cpu'), rank, world, out_dir=out)
        if rank == 0: Path(result).write_text(json.dumps(res[0]))
        else: assert res is None
    finally: dist.destroy_process_group()


def test_validation_pass_under_two_processes(tiny_run, tmp_path):
    "Two gloo processes: each writes its share, the barrier, rank 0 evaluates all: the single-process figures."
    import socket
    import torch.multiprocessing as mp
    run, cfg, _ = tiny_run
    cfg = dataclasses.replace(cfg, batch_size=1)
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, run, cfg, tmp_path / 'eval', tmp_path / 'm.json'), nprocs=2)
    single = evaluate_detector(load_model(run), LVISDetection(cfg.val_ann, cfg.val_images, train=False,
                               scales=(cfg.test_size,), max_size=cfg.max_size), None, cfg, torch.device('cpu'),
                               out_dir=tmp_path / 'one')[0]
    assert json.loads((tmp_path / 'm.json').read_text()) == single
    assert not (tmp_path / 'eval').exists()


def test_console_scripts_declared():
    import gol_nb.detection
    assert gol_nb.detection.load_model is load_model and gol_nb.detection.evaluate_detector is evaluate_detector
    scripts = {e.name: e.value for e in entry_points(group='console_scripts')}
    assert scripts.get('gol-eval') == 'gol_nb.detection.inference:eval_main'
    assert scripts.get('gol-predict') == 'gol_nb.detection.inference:predict_main'


def test_evaluation_set_prepared_as_the_trainer_does(tiny_run):
    from gol_nb.detection.inference import as_validation_set
    run, cfg, _ = tiny_run
    classes = load_model(run).classes
    coco = json.loads(Path(cfg.val_ann).read_text())
    for im in coco['images']: im.pop('neg_category_ids', None); im.pop('not_exhaustive_category_ids', None)
    for c in coco['categories']: c.pop('frequency', None); c.pop('image_count', None)
    val = as_validation_set(coco, classes)
    assert [c['frequency'] for c in sorted(val['categories'], key=lambda c: c['id'])] == classes['frequency']
    for im in val['images']:  # COCO format: exhaustive, every absent class is a verified negative
        present = {a['category_id'] for a in val['annotations'] if a['image_id'] == im['id']}
        assert sorted(im['neg_category_ids']) == sorted(set(classes['category_ids']) - present)


def _one_line_error(capsys, f, prog='gol-eval'):
    "Run a CLI that must fail: exit code 2 and one line `prog: error: ...` on stderr; the message."
    with pytest.raises(SystemExit) as e: f()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(f'{prog}: error: '), err
    return err


def test_gol_eval_errors_are_one_sentence(tiny_run, tmp_path, capsys, monkeypatch):
    run, cfg, _ = tiny_run
    out = ['--out', str(tmp_path / 'o'), '--num-workers', '0']
    err = _one_line_error(capsys, lambda: eval_main([str(run), '--max-images', '-1', *out]))
    assert '--max-images: must be >= 1, got -1' in err
    with pytest.raises(ValueError, match='max_images must be >= 1'): evaluate_checkpoint(run, max_images=-1)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    err = _one_line_error(capsys, lambda: eval_main([str(run), '--device', 'cuda', *out]))
    assert "device 'cuda' asked for, but no GPU is visible" in err and 'Traceback' not in err
    err = _one_line_error(capsys, lambda: eval_main([str(run), '--device', 'tpu', *out]))
    assert "expected 'auto', 'cpu' or 'cuda'" in err
    from gol_nb.engine import DeviceError
    with pytest.raises(DeviceError): eval_main([str(run), '--device', 'cuda', '--debug', *out])  # the traceback
    # checkpoints of the other trainers: named, with what gol-eval takes
    save_checkpoint(tmp_path / 'cls', {'stage': 1, 'epoch': 3, 'model': {}, 'config': {'dataset': 'cifar10'}}, 'x')
    err = _one_line_error(capsys, lambda: eval_main([str(tmp_path / 'cls'), *out]))
    assert 'classification run' in err and "gol-train's torchvision detectors" in err and 'unknown key' not in err
    save_checkpoint(tmp_path / 'mm', {'state_dict': {}, 'meta': {}, 'model': {}, 'config': {'options': {}}}, 'x')
    err = _one_line_error(capsys, lambda: eval_main([str(tmp_path / 'mm' / 'checkpoints' / 'x.pth'), *out]))
    assert 'mmdetection run' in err
    assert not (tmp_path / 'o').exists()


def test_gol_eval_refuses_an_unverifiable_checkpoint(tiny_run, tmp_path, capsys):
    "A bit-flipped copy without its .sha256 is not evaluated silently; with the .sha256 the flip is caught."
    import shutil
    run, cfg, _ = tiny_run
    src = load_model(run).checkpoint_path
    copy = tmp_path / 'copy.pth'; shutil.copy(src, copy)
    data = bytearray(copy.read_bytes()); data[len(data) // 2] ^= 0x10; copy.write_bytes(bytes(data))
    err = _one_line_error(capsys, lambda: eval_main([str(copy), '--out', str(tmp_path / 'o')]))
    assert 'copy.pth.sha256' in err and 'cannot be verified' in err and 'trust_checkpoint' in err
    shutil.copy(src.with_name(src.name + '.sha256'), tmp_path / 'copy.pth.sha256')
    err = _one_line_error(capsys, lambda: eval_main([str(copy), '--out', str(tmp_path / 'o')]))
    assert 'checksum mismatch' in err
    # an intact copy without its .sha256: refused, accepted when trusted; a run folder likewise
    (tmp_path / 'copy.pth.sha256').unlink(); shutil.copy(src, copy)
    with pytest.raises(Exception, match='cannot be verified'): load_model(copy)
    assert load_model(copy, trust_checkpoint=True).category_ids == list(range(1, 7))
    shutil.copytree(run / 'checkpoints', tmp_path / 'r' / 'checkpoints')
    for p in (tmp_path / 'r' / 'checkpoints').glob('*.sha256'): p.unlink()
    with pytest.raises(Exception, match='cannot be verified'): load_model(tmp_path / 'r')
    assert not (tmp_path / 'o').exists()


def test_gol_eval_refuses_a_renamed_category(tiny_run, tmp_path):
    run, cfg, _ = tiny_run
    va = json.loads(Path(cfg.val_ann).read_text())
    va['categories'][0]['name'] = 'renamed'
    (tmp_path / 'va.json').write_text(json.dumps(va))
    from gol_nb.data import DatasetError
    with pytest.raises(DatasetError, match=r"category ids name other classes .*'renamed' here"):
        evaluate_checkpoint(run, tmp_path / 'va.json', cfg.val_images, out_dir=tmp_path / 'o', progress=False)
    assert not (tmp_path / 'o').exists()


def test_gol_eval_protocols_rules_and_calibration(tiny_run, tmp_path):
    from gol_nb.evaluate import evaluate_coco, evaluate_lvis
    run, cfg, _ = tiny_run
    common = ['--num-workers', '0']
    eval_main([str(run), '--out', str(tmp_path / 'std'), *common])
    eval_main([str(run), '--out', str(tmp_path / 'fixed'), '--protocol', 'fixed', *common])
    got = json.loads((tmp_path / 'fixed' / 'metrics.json').read_text())
    results = json.loads((tmp_path / 'fixed' / 'lvis_results.json').read_text())
    assert got['AP'] == evaluate_lvis(cfg.val_ann, results, 'segm', protocol='fixed')['AP']
    assert json.loads((tmp_path / 'fixed' / 'eval_info.json').read_text())['protocol'] == 'fixed'
    eval_main([str(run), '--out', str(tmp_path / 'coco'), '--rules', 'coco', *common])
    coco = json.loads((tmp_path / 'coco' / 'metrics.json').read_text())
    assert 'APr' not in coco and {'APs', 'AR100', 'bbox_APl'} <= set(coco)
    assert coco['AP'] == evaluate_coco(cfg.val_ann, results, 'segm')['AP']
    std = json.loads((tmp_path / 'std' / 'metrics.json').read_text())
    std_res = json.loads((tmp_path / 'std' / 'lvis_results.json').read_text())
    for how in ('frequency', 'fracal'):
        eval_main([str(run), '--out', str(tmp_path / how), '--calibrate', how, *common])
        cal = json.loads((tmp_path / how / 'metrics.json').read_text())
        cal_res = json.loads((tmp_path / how / 'lvis_results.json').read_text())
        assert [r['score'] for r in cal_res] != [r['score'] for r in std_res]  # rescored...
        assert abs(cal['AP'] - std['AP']) < 1e-12  # ...increasing within each class, and no image holds 300
    with pytest.raises(ValueError, match='calibrate must be one of'): evaluate_checkpoint(run, calibrate='platt')


def test_gol_predict_score_range_and_unreadable_image(tiny_run, tmp_path, capsys):
    run, cfg, _ = tiny_run
    img = sorted(Path(cfg.val_images).iterdir())[0]
    err = _one_line_error(capsys, lambda: predict_main([str(run), str(img), '--score', '2']), 'gol-predict')
    assert '--score: must be a score in [0, 1], got 2' in err
    Image.open(img).convert('RGB').save(tmp_path / 'full.jpg', quality=95)
    data = (tmp_path / 'full.jpg').read_bytes()
    (tmp_path / 'cut.jpg').write_bytes(data[:len(data) // 2])
    err = _one_line_error(capsys, lambda: predict_main([str(run), str(tmp_path / 'cut.jpg'), '--out',
                                                       str(tmp_path / 'p')]), 'gol-predict')
    assert str(tmp_path / 'cut.jpg') in err and 'not a readable image' in err


def test_labels_placed_inside_small_images_without_overlap():
    from gol_nb.detection.inference import draw_detections, label_positions
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(12, 2, generator=g) * 40
    det = {'boxes': torch.cat([xy, xy + 4 + torch.rand(12, 2, generator=g) * 20], 1).clamp(max=63),
           'labels': torch.randint(1, 4, (12,), generator=g), 'scores': torch.rand(12, generator=g) * .5 + .5}
    spots = label_positions(det['boxes'].tolist(), [(30, 11)] * 12, 64, 48)
    rects = [(x, y, x + 30, y + 11) for x, y in (s for s in spots if s is not None)]
    assert len(rects) >= 4  # as many as the greedy placement fits; the others are left out
    for i, r in enumerate(rects):
        assert r[0] >= 0 and r[1] >= 0 and r[2] <= 64 and r[3] <= 48
        assert not any(r[0] < q[2] and q[0] < r[2] and r[1] < q[3] and q[1] < r[3] for q in rects[i + 1:])
    drawn = draw_detections(torch.zeros(3, 48, 64, dtype=torch.uint8), det, ['cat', 'dog', 'umbrella'], .3)
    assert drawn.shape == (3, 48, 64) and drawn.dtype == torch.uint8 and drawn.any()
