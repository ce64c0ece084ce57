"""`PipelineError`, atomic writes, torch's threads.

An entry point of the original design, kept: the code lives in ``s2coreg/utils.py``
(``s2coreg.utils``); this file re-exports it, so ``from utils import …`` works in a checkout.
"""
from s2coreg.utils import *  # noqa: F401,F403  re-exported
