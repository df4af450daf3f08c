"""Presets: one per experiment of the paper, each the authors' recipe, with the paper's numbers; the demo runs GOL."""
import dataclasses, types, warnings
import numpy as np
import pytest
import torch
from gol_nb.engine import save_config, load_config
from gol_nb.losses import build_loss
from gol_nb.detection.config import DetConfig, validate_config
from gol_nb.detection.presets import PRESETS, PRESET_INFO, PresetInfo, STUDIES, study_presets, get_config
from gol_nb.detection.model import loss_kwargs_for, default_nms_thresh

# the paper's tables (mask AP, APr, APc, APf, box AP on LVIS val), typed from the paper independently of the presets
PAPER = {
    'sigmoid_r50_1x': (16.4, 0.8, 12.7, 27.3, 17.2), 'softmax_r50_1x': (15.2, 0.0, 10.6, 26.9, 16.1),
    'gumbel_r50_1x': (19.0, 4.9, 16.8, 27.6, 19.1),
    'sigmoid_r50_rfs_1x': (22.0, 11.4, 20.9, 27.9, 23.0), 'softmax_r50_rfs_1x': (21.5, 9.7, 20.7, 27.6, 22.4),
    'gumbel_r50_rfs_1x': (22.7, 12.2, 21.2, 28.0, 22.9),
    'softmax_r101_1x': (16.7,), 'gumbel_r101_1x': (20.6,), 'softmax_x101_1x': (18.6,), 'gumbel_x101_1x': (22.6,),
    'gol_r50_lvis_v1_2x': (27.7, 21.4, 27.7, 30.4, 27.5), 'gol_r101_lvis_v1_2x': (29.0, 22.8, 29.0, 31.7, 29.2),
    'gol_r50_lvis_v05_2x': (29.5, 22.5, 31.3, 30.1, 28.2)}
ORDER = {
    'activations': ['softmax_r50_1x', 'sigmoid_r50_1x', 'gumbel_r50_1x', 'softmax_r50_rfs_1x', 'sigmoid_r50_rfs_1x',
                    'gumbel_r50_rfs_1x'],
    'backbones': ['softmax_r50_1x', 'gumbel_r50_1x', 'softmax_r101_1x', 'gumbel_r101_1x', 'softmax_x101_1x',
                  'gumbel_x101_1x'],
    'losses': ['eql_r50_1x', 'eql_gumbel_r50_1x', 'droploss_r50_1x', 'droploss_gumbel_r50_1x', 'federated_r50_1x',
               'federated_gumbel_r50_1x'],
    'components': ['eql_r50_rfs_2x', 'eql_gumbel_r50_rfs_2x', 'eql_gumbel_enh_r50_rfs_2x', 'gol_r50_lvis_v1_2x'],
    'gol': ['gol_r50_lvis_v1_2x', 'gol_r101_lvis_v1_2x', 'gol_r50_lvis_v05_2x']}
CONST = lambda w, b: {'type': 'Constant', 'val': w, 'bias': b}
# the authors' configs (kostas1515/GOL configs/activations and configs/gol): loss, channels, fc_cls init, test NMS,
# backbone, sampler, schedule, normalised mask head, lambda
A_SM, A_SG = CONST(0.001, -6.5), CONST(0.001, -2.)
RECIPE = {  # name: (loss, channels, init, nms, backbone, rfs, epochs, cosine mask, lambda)
    'softmax_r50_1x': ('softmax', 1204, A_SM, .5, 'resnet50', False, 12, False, None),
    'sigmoid_r50_1x': ('sigmoid', 1204, A_SM, .5, 'resnet50', False, 12, False, None),
    'gumbel_r50_1x': ('gumbel', 1204, A_SG, .5, 'resnet50', False, 12, False, None),
    'softmax_r50_rfs_1x': ('softmax', 1204, A_SM, .5, 'resnet50', True, 12, False, None),
    'sigmoid_r50_rfs_1x': ('sigmoid', 1204, A_SM, .5, 'resnet50', True, 12, False, None),
    'gumbel_r50_rfs_1x': ('gumbel', 1204, A_SG, .5, 'resnet50', True, 12, False, None),
    'softmax_r101_1x': ('softmax', 1204, A_SM, .5, 'resnet101', False, 12, False, None),
    'gumbel_r101_1x': ('gumbel', 1204, A_SG, .5, 'resnet101', False, 12, False, None),
    'softmax_x101_1x': ('softmax', 1204, A_SM, .5, 'resnext101_64x4d', False, 12, False, None),
    'gumbel_x101_1x': ('gumbel', 1204, A_SG, .5, 'resnext101_64x4d', False, 12, False, None),
    'eql_r50_1x': ('eql', 1203, {'type': 'Normal', 'std': 0.01, 'bias': 0.}, .5, 'resnet50', False, 12, False, .0011),
    'eql_gumbel_r50_1x': ('eql_gumbel', 1203, A_SG, .3, 'resnet50', False, 12, False, .0011),
    'droploss_r50_1x': ('droploss', 1203, CONST(0.01, -6.9), .5, 'resnet50', False, 12, False, .0011),
    'droploss_gumbel_r50_1x': ('droploss_gumbel', 1203, A_SG, .3, 'resnet50', False, 12, False, .0011),
    'federated_r50_1x': ('federated', 1203, None, .5, 'resnet50', False, 12, False, None),
    'federated_gumbel_r50_1x': ('federated_gumbel', 1203, A_SG, .3, 'resnet50', False, 12, False, None),
    'eql_r50_rfs_2x': ('eql', 1203, {'type': 'Normal', 'std': 0.01, 'bias': 0.}, .5, 'resnet50', True, 24, False, .0011),
    'eql_gumbel_r50_rfs_2x': ('eql_gumbel', 1203, A_SG, .3, 'resnet50', True, 24, False, .0011),
    'eql_gumbel_enh_r50_rfs_2x': ('eql_gumbel', 1203, A_SG, .3, 'resnet50', True, 24, True, .0011),
    'gol_r50_lvis_v1_2x': ('gol', 1203, A_SG, .3, 'resnet50', True, 24, True, .0011),
    'gol_r101_lvis_v1_2x': ('gol', 1203, A_SG, .3, 'resnet101', True, 24, True, .0011),
    'gol_r50_lvis_v05_2x': ('gol', 1203, A_SG, .3, 'resnet50', True, 24, True, .00177),
}


def lvis_like_stats(num_classes=1203, num_images=99_388):
    "Image counts spanning LVIS's groups (1 to 20,000 images), so lambda 0.0011 marks many classes."
    counts = np.unique(np.geomspace(1, 20_000, 4000).astype(int))
    counts = np.resize(counts, num_classes)
    return types.SimpleNamespace(category_ids=np.arange(1, num_classes + 1), image_counts=counts,
                                 num_images=num_images, frequency=['r'] * num_classes)


def test_interface():
    assert {f.name for f in dataclasses.fields(PresetInfo)} >= {'description', 'study', 'row', 'baseline', 'paper',
                                                                 'engine'}
    assert dataclasses.is_dataclass(PresetInfo) and PresetInfo.__dataclass_params__.frozen
    assert set(PRESET_INFO) == set(PRESETS)
    for name, info in PRESET_INFO.items():
        assert info.engine == 'torchvision' and info.description and '\n' not in info.description, name
        assert info.study is None or info.study in STUDIES, name
        assert info.paper is None or set(info.paper) == {'AP', 'APr', 'APc', 'APf', 'APb'}, name
    with pytest.raises(ValueError, match='activations'): study_presets('table9')


def test_studies_in_table_order_with_their_baselines():
    assert set(STUDIES) == set(ORDER)
    for study, rows in ORDER.items():
        assert study_presets(study) == rows, study
        assert {n for n, i in PRESET_INFO.items() if i.study == study} <= set(rows)
    baselines = {n for n, i in PRESET_INFO.items() if i.baseline}
    assert baselines == {'softmax_r50_1x', 'softmax_r50_rfs_1x', 'softmax_r101_1x', 'softmax_x101_1x', 'eql_r50_1x',
                         'droploss_r50_1x', 'federated_r50_1x', 'eql_r50_rfs_2x'}
    for study in ('activations', 'backbones', 'losses', 'components'):
        assert PRESET_INFO[study_presets(study)[0]].baseline  # every row has a reference above it


def test_paper_numbers():
    for name, info in PRESET_INFO.items():
        if name not in PAPER:
            assert info.paper is None, name
            continue
        want = dict(zip(('AP', 'APr', 'APc', 'APf', 'APb'), PAPER[name] + (None,) * (5 - len(PAPER[name]))))
        assert info.paper == want, name


@pytest.mark.parametrize('name', sorted(RECIPE))
def test_each_preset_is_the_authors_recipe(name):
    loss_name, channels, init, nms, backbone, rfs, epochs, cosine, lam = RECIPE[name]
    cfg = get_config(name)
    assert (cfg.loss, cfg.backbone, cfg.rfs, cfg.epochs, cfg.cosine_mask) == (loss_name, backbone, rfs, epochs, cosine)
    assert cfg.steps == ([8, 11] if epochs == 12 else [16, 22]) and cfg.warmup_iters == 500
    # item 10: 4 GPUs x 4 images at lr 0.02; item 8: IMAGENET1K_V1, norm_eval, stage 1 frozen, L1 losses, fp32
    assert (cfg.batch_size, cfg.base_batch, cfg.base_lr, cfg.momentum, cfg.weight_decay) == (4, 16, 0.02, 0.9, 1e-4)
    assert (cfg.pretrained, cfg.norm, cfg.trainable_layers, cfg.amp) == ('IMAGENET1K_V1', 'norm_eval', 3, False)
    assert (cfg.box_loss, cfg.rpn_box_loss, cfg.rois_per_image, cfg.rfs_thresh) == ('l1', 'l1', 512, 0.001)
    assert (cfg.score_thresh, cfg.detections_per_img, cfg.test_size) == (1e-4, 300, 800)
    assert ('v0.5' in cfg.train_ann) == name.endswith('v05_2x') and cfg.train_ann and cfg.val_ann
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # lambda marks classes on an LVIS-sized set: no warning
        loss = build_loss(cfg.loss, 1203, **loss_kwargs_for(cfg, lvis_like_stats()))
    assert loss.num_channels == channels
    if init is not None: assert loss.classifier_init == init
    assert (cfg.nms_thresh if cfg.nms_thresh is not None else default_nms_thresh(loss)) == nms
    if lam is not None:
        assert loss.lambda_ == lam and loss.rare.any()


def test_presets_are_plain_fields_that_compose_with_overrides(tmp_path):
    fields = {f.name for f in dataclasses.fields(DetConfig)}
    for name, p in PRESETS.items():
        assert set(p) <= fields, name
        cfg = get_config(name, ['epochs=1', 'steps=[1]', 'lambda_=rare', 'backbone=resnet18', 'batch_size=2'])
        assert (cfg.epochs, cfg.lambda_, cfg.backbone, cfg.loss) == (1, 'rare', 'resnet18', p['loss'])
        save_config(cfg, tmp_path / f'{name}.yaml')
        assert load_config(DetConfig, tmp_path / f'{name}.yaml') == cfg
        assert get_config(str(tmp_path / f'{name}.yaml')) == cfg


def test_validate_config_names_the_choices():
    with pytest.raises(ValueError, match="'loss'.*droploss_gumbel.*gol"): get_config('demo_cpu', ['loss=gool'])
    with pytest.raises(ValueError, match="'backbone'.*resnext101_64x4d"): get_config('demo_cpu', ['backbone=r50'])
    with pytest.raises(ValueError, match="'norm'.*norm_eval"): get_config('demo_cpu', ['norm=frozen'])
    with pytest.raises(ValueError, match='loss_mode'): get_config('softmax_r50_1x', ['loss_mode=official'])
    with pytest.raises(ValueError, match='background_channel'): get_config('gol_r50_lvis_v1_2x', ['background_channel=true'])
    with pytest.raises(ValueError, match='background_channel'): get_config('softmax_r50_1x', ['background_channel=false'])
    with pytest.raises(ValueError, match="'fused'.*fused_loss"): get_config('demo_cpu', ['loss_kwargs={fused: true}'])
    with pytest.raises(ValueError, match='lambda_'): get_config('demo_cpu', ['lambda_=0'])
    assert get_config('gol_r50_lvis_v1_2x', ['loss_mode=official']).loss_mode == 'official'


def test_demo_runs_gol_with_a_non_empty_rare_mask(tmp_path):
    from gol_nb.data import make_synthetic_lvis, class_statistics
    cfg = get_config('demo_cpu')
    syn = make_synthetic_lvis(tmp_path, num_train=cfg.synth_num_train, num_val=cfg.synth_num_val,
                              num_classes=cfg.synth_num_classes, image_size=cfg.synth_image_size, seed=cfg.synth_seed)
    stats = class_statistics(syn.train_json)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        loss = build_loss(cfg.loss, len(stats.category_ids), **loss_kwargs_for(cfg, stats))
    assert cfg.loss == 'gol' and loss.activation == 'gumbel'
    assert int(loss.rare.sum()) == 8                                            # the classes GOL drops negatives of
    assert loss.rare.tolist() == [n <= 10 for n in stats.image_counts]         # LVIS's rare rule
    with pytest.warns(UserWarning, match='marks no class'):                     # LVIS's lambda would not
        build_loss('gol', len(stats.category_ids), **loss_kwargs_for(get_config('demo_cpu', ['lambda_=0.0011']), stats))


# --- the demo preset's README figures (tools/readme_results.py) ----------------------------------------------------
def _demo_run(run, cpu, wall, cpu_s, ap, apb):
    import json
    run.mkdir(parents=True)
    (run / 'metrics.json').write_text(json.dumps({'AP': ap, 'APr': .3, 'APc': .4, 'APf': .5, 'APb': apb,
                                                 'bbox_APr': .3, 'bbox_APc': .4, 'bbox_APf': .5, 'iterations': 360}))
    (run / 'config.yaml').write_text("# backbone_weights: none\npreset: demo_cpu\nloss: gol\nbackbone: resnet18\n"
                                     "epochs: 6\nbatch_size: 4\ntrain_ann: ''\nsynth_num_train: 240\nsynth_num_val: 40\n")
    (run / 'per_class_ap.csv').write_text('category_id,frequency\n1,r\n2,c\n3,f\n')
    (run / 'run_info.json').write_text(json.dumps({'wall_s': wall, 'cpu_s': cpu_s, 'cpu_count': 2, 'cpu_model': cpu,
                                                   'torch_threads': 2, 'device': f'a 2-core CPU ({cpu})',
                                                   'load_average': 1.0}))


def test_readme_demo_block_states_machine_wall_and_cpu_time_and_spread(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
    try: import readme_results
    finally: sys.path.pop(0)
    amd, intel = tmp_path / 'amd', tmp_path / 'intel'
    _demo_run(amd, 'AMD EPYC 7B13', 120.0, 780.0, .399, .423)
    _demo_run(intel, 'Intel Xeon Platinum 8375C', 150.0, 800.0, .398, .481)
    one = readme_results.results_block(amd)
    assert 'It took 2.0 min of wall time and 13.0 min of CPU time on a 2-core CPU (AMD EPYC 7B13), 2 torch threads.' in one
    assert 'Another CPU model or thread count gives other figures' in one
    both = readme_results.results_block(amd, [intel])
    assert 'Over 2 demo runs on 2 machine class(es) (AMD EPYC 7B13; Intel Xeon Platinum 8375C)' in both
    assert 'mask AP 39.8-39.9' in both and 'box AP 42.3-48.1' in both and 'wall time 2.0-2.5 min' in both
