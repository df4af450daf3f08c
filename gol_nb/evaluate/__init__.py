"LVIS and COCO evaluation (notebooks 03a-03f): detections as columns, files, checks, the backends, calibration."
# Hand-written (not exported by nbdev): every evaluation module's names, so that `from gol_nb.evaluate import X` reads
# as one module.
from .detections import *
from .files import *
from .checks import *
from .lvis import *
from .coco import *
from .calibration import *
from .checks import _rle_counts_problem  # tests/test_evaluate.py
from .lvis import _eval_hotcoco, _per_class_table  # tests/test_evaluate.py, benchmarks/bench_eval.py
from . import detections, files, checks, lvis, coco, calibration
__all__ = [n for m in (detections, files, checks, lvis, coco, calibration) for n in m.__all__]
