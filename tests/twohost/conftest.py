from __future__ import annotations

import os

import pytest
from support.bed import peer_ip, self_ip
from support.pair import Pair


@pytest.fixture
def pair(request):
    """This host's side of the test (host 0 serves, host 1 connects)."""
    if os.environ.get("RDMAMSG_HOSTS") != "2":
        pytest.fail("two-host tests need RDMAMSG_HOSTS=2 (run them under ci/rxe-vm --hosts 2)",
                    pytrace=False)
    p = Pair(int(os.environ["RDMAMSG_HOST_INDEX"]), self_ip(), peer_ip(), request.node.nodeid)
    yield p
    p.close()
