"Long-tailed image classification with Gumbel (paper Table 4): data sets, models, metrics and training."
# Hand-written (not exported by nbdev). The trainer (`gol_nb.classification.train`) is not re-exported here,
# so that `python -m gol_nb.classification.train` does not import itself twice.
from .data import *
from .models import *
from .metrics import *
