"""The Cython poller's layout rule accepts every pyverbs from rdma-core 39 to
master, and refuses, saying why, a layout it cannot read.

The sizes are each class's tp_basicsize on x86-64, read from rdma-core's own
.pxd files at each tag (issue 24).  Before v61 the pointer is read at its
offset; from v61 pyverbs' integer pointer properties give it, except for
CompChannel and MR, which have none in any release.
"""
import pytest

from rdmamsg.errors import PollerUnavailableError
from rdmamsg.transport import _cpoller

CLASSES = ("pyverbs.device.Context", "pyverbs.pd.PD", "pyverbs.cq.CompChannel",
           "pyverbs.cq.CQ", "pyverbs.qp.QP", "pyverbs.mr.MR")

#: rdma-core release: sizes in CLASSES order, and whether it has the integer properties.
SIZES = {
    "v39": ((160, 128, 64, 88, 128, 104), False),
    "v40-41": ((176, 136, 64, 96, 128, 104), False),
    "v42-58": ((184, 136, 64, 96, 128, 104), False),
    "v59": ((184, 136, 64, 96, 128, 104), False),
    "v60": ((200, 136, 64, 96, 128, 104), False),
    "v61-63": ((200, 136, 64, 96, 128, 104), True),
    "v64": ((216, 144, 64, 96, 128, 104), True),
    "master": ((224, 144, 64, 96, 128, 104), True),
}


@pytest.mark.parametrize("release", sorted(SIZES))
def test_every_release_since_39_is_accepted(release):
    sizes, props = SIZES[release]
    for path, size in zip(CLASSES, sizes):
        how, where = _cpoller.layout_rule(path, size, props)
        name = path.rsplit(".", 1)[1]
        if props and name not in ("CompChannel", "MR"):
            assert (how, where) == ("property", name.lower())
        else:
            assert (how, where) == ("offset", 56 if name == "MR" else 40)


def test_before_61_no_property_is_ever_used():
    for release, (sizes, props) in SIZES.items():
        if not props:
            assert all(_cpoller.layout_rule(p, s, False)[0] == "offset"
                       for p, s in zip(CLASSES, sizes)), release


@pytest.mark.parametrize("path, size, why", [
    ("pyverbs.cq.CQ", 40, "CQ layout not recognised: 40 bytes cannot hold its pointer at offset 40"),
    ("pyverbs.mr.MR", 56, "MR layout not recognised: 56 bytes cannot hold its pointer at offset 56"),
    ("pyverbs.qp.QP", 47, "QP layout not recognised"),
    ("pyverbs.srq.SRQ", 128, "pyverbs.srq.SRQ is not a pyverbs class the poller reads"),
])
def test_a_layout_that_does_not_match_is_refused_with_the_reason(path, size, why):
    with pytest.raises(PollerUnavailableError, match=why):
        _cpoller.layout_rule(path, size, False)


def test_without_integer_properties_even_a_v61_size_needs_room_for_the_pointer():
    with pytest.raises(PollerUnavailableError, match="MR layout not recognised"):
        _cpoller.layout_rule("pyverbs.mr.MR", 60, True)


def test_this_hosts_pyverbs_is_readable():
    assert _cpoller.layout_problem() is None
