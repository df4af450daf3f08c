"""The run-folder policy every trainer shares: atomic files, checked checkpoints, resumes, guards and the launcher.

One concept a module (nbs/04_engine.ipynb maps them); every public name is re-exported here, so callers write
`from gol_nb.engine import prepare_run`. Written by hand: no notebook exports this file.
"""
# absolute imports: tools/code_shape.py would read `from .x` in this __init__ as gol_nb.x
from gol_nb.engine import files, config, checkpoints, runs, weights, schedule, distributed, logs, guard, launch, cli
from gol_nb.engine.files import *
from gol_nb.engine.config import *
from gol_nb.engine.checkpoints import *
from gol_nb.engine.runs import *
from gol_nb.engine.weights import *
from gol_nb.engine.schedule import *
from gol_nb.engine.distributed import *
from gol_nb.engine.logs import *
from gol_nb.engine.guard import *
from gol_nb.engine.launch import *
from gol_nb.engine import cluster
from gol_nb.engine.cluster import *
from gol_nb.engine.cli import *

__all__ = [n for m in (files, config, checkpoints, runs, weights, schedule, distributed, logs, guard, launch, cli)
           for n in m.__all__]
__all__ += cluster.__all__
