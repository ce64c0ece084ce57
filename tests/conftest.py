"""Test setup: the project's OpenMP setting before torch loads, the ``shipped`` and ``slow``
markers, and what the tests share.

Tests marked ``shipped`` load the checkpoints in ``model_checkpoints/``; ``pytest -m "not shipped"``
runs the quick subset that needs none of them. Tests marked ``slow`` (registered in pytest.ini) are
the few long runs, left out of ``python -m pytest``; ``python -m pytest -m slow`` runs them
(``.ci/run`` runs both). Where pytest-xdist is installed, a run is spread over two processes
(``pytest_cmdline_main``): the tests are CPU-bound on about one core each.

``dask_client``: one Dask cluster for the whole run (not one started, its workers importing torch
and loading the model, for each stack). A test that is about starting a cluster, Ctrl-C reaching
its workers, or a monkeypatched task starts its own; the others pass ``client=dask_client`` (or
take ``stack_cli_on_shared_cluster`` for ``coregister.main(["--stack", ...])``).
"""
import s2coreg.config as _project_config  # noqa: F401  first: OpenMP's passive waiting, before torch is imported

import signal
import threading

import pytest


SLOW_LEFT_OUT = pytest.StashKey[int]()
PROCESSES = 2          # test processes where pytest-xdist is installed: the tests use about one core each


@pytest.hookimpl(tryfirst=True)                # before xdist's own, which turns -n into workers
def pytest_cmdline_main(config):
    """``python -m pytest`` in ``PROCESSES`` processes where pytest-xdist is installed
    (requirements.txt names it), a file's tests in one of them (``--dist loadfile``: its module
    fixtures made once) — unless ``-n`` or test ids were given (``-n 0``: this process alone)."""
    if (config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput")
            and config.option.numprocesses is None and not config.option.collectonly
            and not any("::" in arg for arg in config.args)):
        config.option.numprocesses = PROCESSES
        config.option.dist = "loadfile"


def pytest_configure(config):
    config.addinivalue_line("markers", "shipped: needs the shipped checkpoints in model_checkpoints/")
    if hasattr(config, "workerinput") and threading.current_thread() is threading.main_thread():
        # pytest-xdist's workers start with Ctrl-C ignored, and an ignored SIGINT is inherited by
        # every process a test starts: the tests of a Ctrl-C (a terminal's, or _thread.interrupt_main
        # in a task) need Python's own handler, as in a terminal.
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(trylast=True)               # after -m and -k chose: only what they kept is counted
def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` are left out unless ``-m`` names the marker (``-m slow``: that tier
    alone) or tests are named by their id (``tests/test_stack.py::test_x``)."""
    if "slow" in (config.getoption("markexpr") or "") or any("::" in arg for arg in config.args):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
    config.stash[SLOW_LEFT_OUT] = len(slow)


def pytest_terminal_summary(terminalreporter, config):
    n = config.stash.get(SLOW_LEFT_OUT, 0)
    if n:
        terminalreporter.write_line(f"{n} slow tests left out: python -m pytest -m slow runs them")
    elif config.pluginmanager.hasplugin("dsession") and "slow" not in (config.getoption("markexpr") or ""):
        terminalreporter.write_line("slow tests left out: python -m pytest -m slow runs them")   # xdist's workers chose


@pytest.fixture(scope="session")
def dask_client():
    """A client of one in-process LocalCluster (one worker thread) for the whole run (for each test
    process). In-process: measured on this two-core machine beside another job, the stack test
    files took 2m52 wall and 2m32 CPU on it against 3m23 and 3m30 on two worker processes (which
    pickle every date's features across and poll their memory). Not Dask's default client: a test's own ``.compute()`` (``align``, odc-stac)
    runs where it would alone. Worker processes are started by the tests of that:
    ``test_coregister_stack_from_a_plain_script_without_a_main_guard``, the Ctrl-C tests of
    ``test_publishing`` and ``test_separately_started_dask_cluster_gives_the_same_results``."""
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def stack_cli_on_shared_cluster(monkeypatch, dask_client):
    """``coregister.main(["--stack", ...])`` run on ``dask_client`` (its flags parsed as ever;
    ``--workers`` then names no cluster of its own)."""
    import s2coreg.coregistration.stack as stack

    real = stack.coregister_stack
    monkeypatch.setattr(stack, "coregister_stack", lambda *a, **k: real(*a, **{**k, "client": dask_client,
                                                                            "scheduler": None, "workers": None}))
    return dask_client
