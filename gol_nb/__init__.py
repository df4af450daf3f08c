__version__ = "0.1.0"

# The losses at the top level (`from gol_nb import GOL`), imported on first use so that `import gol_nb` stays light.
_LOSS_NAMES = ('build_loss', 'loss_options', 'LOSSES', 'ClassificationLoss', 'SoftmaxCE', 'SigmoidBCE', 'GumbelBCE',
               'EQL', 'DropLoss', 'FederatedLoss', 'GOL', 'EQLv2', 'GumbelFocalLoss', 'SigmoidFocalLoss',
               'gumbel_bce', 'gumbel_focal_loss', 'prior_bias', 'init_classifier')
__all__ = list(_LOSS_NAMES)


def __getattr__(name):
    if name in _LOSS_NAMES:
        from . import losses
        return getattr(losses, name)
    raise AttributeError(f"module 'gol_nb' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LOSS_NAMES))
