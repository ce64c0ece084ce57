"""Test setup: the project's OpenMP setting before torch loads, and the ``shipped`` marker.

Tests marked ``shipped`` load the checkpoints in ``model_checkpoints/``; ``pytest -m "not shipped"``
runs the quick subset that needs none of them.
"""
import config as _project_config  # noqa: F401  first: OpenMP's passive waiting, before torch is imported


def pytest_configure(config):
    config.addinivalue_line("markers", "shipped: needs the shipped checkpoints in model_checkpoints/")
