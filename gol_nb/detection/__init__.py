"Detection: Mask R-CNN whose box classifier uses a gol_nb loss, its run configuration and its trainer."
from .model import (to_loss_labels, LossBoxPredictor, CosineMaskPredictor, LossRoIHeads, BACKBONES, build_backbone,
                    DetTransform, build_detector, predict, tiny_targets)

_CONFIG = ('DetConfig', 'PRESETS', 'get_config', 'validate_config')
_TRAIN = ('train', 'run_training', 'main', 'evaluate_detector', 'to_lvis_records', 'lr_at', 'resolve_data',
          'synthetic_root', 'project_root', 'SimulatedCrash')

def __getattr__(name):
    # config and train import the engine and data layers: load them on first use (and keep
    # `python -m gol_nb.detection.train` free of the "already imported" warning)
    import importlib
    if name in _CONFIG: return getattr(importlib.import_module('.config', __name__), name)
    if name in _TRAIN: return getattr(importlib.import_module('.train', __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
