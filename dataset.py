"""Splits by place and the training and evaluation pairs.

An entry point of the original design, kept: the code lives in ``s2coreg/training/dataset.py``
(``s2coreg.training.dataset``); this file re-exports it, so ``from dataset import …`` works in a checkout.
"""
from s2coreg.training.dataset import *  # noqa: F401,F403  re-exported
