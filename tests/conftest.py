import os

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
