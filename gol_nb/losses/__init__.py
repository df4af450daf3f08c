"The losses (notebooks 01-01h): the Gumbel kernel, the base class, the baselines, GumbelBCE, GOL and the others."
# Hand-written (not exported by nbdev): every loss module's names, so that `from gol_nb.losses import X` reads as one.
from .reduce import *
from .kernel import *
from .base import *
from .baselines import *
from .gumbel_loss import *
from .class_stats import *
from .focal import *
from .eqlv2 import *
from .registry import *
from .base import _one_hot  # benchmarks/bench_losses.py builds its targets with it
from . import reduce, kernel, base, baselines, gumbel_loss, class_stats, focal, eqlv2, registry
__all__ = [n for m in (reduce, kernel, base, baselines, gumbel_loss, class_stats, focal, eqlv2, registry)
           for n in m.__all__]
