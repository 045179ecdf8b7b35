import os
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess
from tests.netns import NetLab


@pytest.fixture(scope="session", autouse=True)
def no_daemon_outlives_the_session():
    """Every test stops the daemons it starts; this ends any that a failing test left behind, by PID."""
    yield
    for bootd in list(BootdProcess.live):
        bootd.kill()


@pytest.fixture
def netlab(request):
    """A server namespace with a veth pair to one client namespace per `add_client`; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with NetLab(f"bt{os.getpid() % 100000}") as lab:
        yield lab


@pytest.fixture
def bridged_netlab(request):
    """Like `netlab`, but every client is on one bridge in the server namespace: one Ethernet segment."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with NetLab(f"bb{os.getpid() % 100000}", bridge=True) as lab:
        yield lab


# tests/setup.sh leaves this mark once it has installed everything the suite needs. From then on a skipped test
# (a tool missing, a namespace refused) is a failure: CI must never pass by quietly skipping what it exists to run.
SETUP_DONE = Path(__file__).resolve().parent.parent / ".venv" / "bootd-test-setup-done"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.geteuid() == 0 and SETUP_DONE.exists() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped after tests/setup.sh installed everything: {reason}"
