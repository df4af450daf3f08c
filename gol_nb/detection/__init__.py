"Detection: Mask R-CNN with a gol_nb loss as its box classifier; its run config, presets, trainer and inference."
from .model import (to_loss_labels, LossBoxPredictor, CosineMaskPredictor, LossRoIHeads, BACKBONES, build_backbone,
                    DetTransform, build_detector, predict, tiny_targets, detector_from_config, loss_kwargs_for,
                    default_nms_thresh)

_CONFIG = ('DetConfig', 'validate_config')
_PRESETS = ('PRESETS', 'PRESET_INFO', 'PresetInfo', 'STUDIES', 'study_presets', 'get_config')
_INFERENCE = ('load_model', 'evaluate_detector', 'to_lvis_records', 'to_lvis_detections', 'evaluate_checkpoint',
              'predict_images', 'checkpoint_classes')
_TRAIN = ('train', 'run_training', 'main', 'config_lr', 'load_data', 'check_run', 'SimulatedCrash')

def __getattr__(name):
    # config, presets and train import the engine and data layers: load them on first use (and keep
    # `python -m gol_nb.detection.train` free of the "already imported" warning)
    import importlib
    if name in _CONFIG: return getattr(importlib.import_module('.config', __name__), name)
    if name in _PRESETS: return getattr(importlib.import_module('.presets', __name__), name)
    if name in _INFERENCE: return getattr(importlib.import_module('.inference', __name__), name)
    if name in _TRAIN: return getattr(importlib.import_module('.train', __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
