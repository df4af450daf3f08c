"""The run-folder policy every trainer shares: atomic files, checked checkpoints, resumes, guards and the launcher.

One concept a module (nbs/04_engine.ipynb maps them); every public name is re-exported here, so callers write
`from gol_nb.engine import prepare_run`. Written by hand: no notebook exports this file.
"""
from . import files, config, checkpoints, runs, schedule, distributed, logs, guard, launch, cli
from .files import *
from .config import *
from .checkpoints import *
from .runs import *
from .schedule import *
from .distributed import *
from .logs import *
from .guard import *
from .launch import *
from .cli import *

__all__ = [n for m in (files, config, checkpoints, runs, schedule, distributed, logs, guard, launch, cli)
           for n in m.__all__]
