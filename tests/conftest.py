import os

import pytest

from tests.netns import NetLab


@pytest.fixture
def netlab(request):
    """A server namespace with a veth pair to one client namespace per `add_client`; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    lab = NetLab(f"bt{os.getpid() % 100000}")
    with lab:
        yield lab
