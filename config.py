"""Every default, as a dataclass per stage (the scripts' flags have the same names).

An entry point of the original design, kept: the code lives in ``s2coreg/config.py``
(``s2coreg.config``); this file re-exports it, so ``from config import …`` works in a checkout.
"""
from s2coreg.config import *  # noqa: F401,F403  re-exported
