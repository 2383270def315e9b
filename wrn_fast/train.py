"""Compatibility module: the training code lives in :mod:`wrn_fast.training` (see its docstring for the layout)."""
from .training import *  # noqa: F401,F403
from .training import __all__  # noqa: F401
from .training.rng import derive_seed  # noqa: F401
