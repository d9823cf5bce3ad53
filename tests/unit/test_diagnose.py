"""The doctor's rules: what it concludes from what it found (no device needed)."""
import pytest

from rdmamsg.cli.diagnose import ERROR, OK, WARN, Facts, blocked, diagnose
from rdmamsg.verbs.device import DeviceInfo, GidEntry, PortInfo

MIB = 1 << 20


def port(state="ACTIVE", mtu=4096, max_mtu=4096, ip="10.88.0.1", netdev="d0", name="rxe0"):
    gids = (GidEntry(0, "fe80::1", "RoCE v2", netdev),
            GidEntry(1, f"::ffff:{ip}", "RoCE v2", netdev)) if ip else ()
    return PortInfo(name, 1, state, "Ethernet", 0, mtu, max_mtu, gids)


def healthy(**changes) -> Facts:
    f = Facts(pyverbs_version="44.0-2", devices=[DeviceInfo("rxe0", "g", (port(),))],
              netdev_mtu={"d0": 9000}, interfaces=[("eth0", "192.0.2.5")], kernel_has_rxe=True,
              memlock_soft=None, pool_need=6 * MIB, pool_max=512 * MIB, ip="10.88.0.1",
              selftest="", selftest_poller="cython")
    for k, v in changes.items():
        setattr(f, k, v)
    return f


def levels(f: Facts) -> dict[str, list[str]]:
    out = {ERROR: [], WARN: [], OK: []}
    for x in diagnose(f):
        out[x.level].append(f"{x.what} | {x.fix}")
    return out


def test_a_healthy_host_has_no_errors_or_warnings():
    got = levels(healthy())
    assert got[ERROR] == [] and got[WARN] == []
    assert any("loopback connection" in line and "cython" in line for line in got[OK])


def test_pyverbs_missing_says_what_to_install_and_stops_there():
    findings = diagnose(Facts(pyverbs_error="No module named 'pyverbs'"))
    assert len(findings) == 1 and blocked(findings)
    assert "python3-pyverbs" in findings[0].fix and "--system-site-packages" in findings[0].fix


def test_no_device_gives_the_rdma_link_command_for_a_real_interface():
    got = levels(healthy(devices=[], selftest=None))
    assert len(got[ERROR]) == 1
    assert "rdma link add rxe0 type rxe netdev eth0" in got[ERROR][0]
    assert "modprobe rdma_rxe" in got[ERROR][0]


def test_no_device_and_no_rxe_in_the_kernel_points_at_the_vm():
    got = levels(healthy(devices=[], selftest=None, kernel_has_rxe=False))
    assert "ci/rxe-vm" in got[ERROR][0] and "rdma link add" not in got[ERROR][0]


def test_a_down_port_is_an_error_only_when_no_port_is_active():
    down = DeviceInfo("rxe0", "g", (port(state="DOWN"),))
    got = levels(healthy(devices=[down], selftest=None))
    assert any("rxe0 port 1 is DOWN" in e and "ip link set d0 up" in e for e in got[ERROR])
    other = DeviceInfo("rxe1", "g", (port(name="rxe1", ip="10.99.0.1", netdev="d1"),))
    got = levels(healthy(devices=[down, other], selftest=None))
    assert not any("DOWN" in e for e in got[ERROR]) and any("DOWN" in w for w in got[WARN])


def test_an_ip_without_a_roce_v2_gid_names_the_ones_that_exist():
    got = levels(healthy(ip="10.99.0.7", selftest=None))
    assert len(got[ERROR]) == 1
    assert "10.99.0.7" in got[ERROR][0] and "10.88.0.1" in got[ERROR][0]
    assert "ip addr add 10.99.0.7/24 dev d0" in got[ERROR][0]


def test_no_gid_with_an_ip_at_all_is_an_error():
    bare = DeviceInfo("rxe0", "g", (port(ip=None),))
    got = levels(healthy(devices=[bare], ip=None, selftest=None))
    assert any("no active RoCE v2 GID has an IP address" in e for e in got[ERROR])


def test_mtus_capped_by_the_interface_or_different_between_ports():
    small = DeviceInfo("rxe0", "g", (port(mtu=1024),))
    got = levels(healthy(devices=[small], netdev_mtu={"d0": 1500}))
    assert any("runs at MTU 1024" in w and "mtu 4296" in w for w in got[WARN])
    other = DeviceInfo("rxe1", "g", (port(name="rxe1", ip="10.99.0.1", netdev="d1"),))
    got = levels(healthy(devices=[small, other], netdev_mtu={"d0": 1500, "d1": 9000}))
    assert any("different MTUs" in w for w in got[WARN])
    too_big = DeviceInfo("rxe0", "g", (port(mtu=4096),))
    got = levels(healthy(devices=[too_big], netdev_mtu={"d0": 1500}))
    assert any("does not fit d0's MTU 1500" in e for e in got[ERROR])


@pytest.mark.parametrize("limit, level", [(MIB, ERROR), (64 * MIB, WARN), (1 << 30, OK)])
def test_memlock_is_compared_with_what_the_pool_needs(limit, level):
    got = levels(healthy(memlock_soft=limit))
    lines = [line for line in got[level] if "RLIMIT_MEMLOCK" in line]
    assert len(lines) == 1
    if level != OK:
        assert "ulimit -l unlimited" in lines[0] and "limits.conf" in lines[0]
    assert levels(healthy(memlock_soft=MIB, ipc_lock=True))[ERROR] == []


def test_the_fallback_poller_is_a_warning_unless_cython_was_required():
    got = levels(healthy(cython_error="not built"))
    assert any("fallback" in w and "build ext/" in w for w in got[WARN]) and not got[ERROR]
    got = levels(healthy(cython_error="not built", poller_mode="cython"))
    assert any("RDMAMSG_POLLER=cython" in e for e in got[ERROR])
    got = levels(healthy(cython_error="not built", poller_mode="python"))
    assert not got[WARN] and not got[ERROR]


def test_a_failed_selftest_blocks():
    findings = diagnose(healthy(selftest="RdmaError: ibv_reg_mr failed"))
    assert blocked(findings)
    assert any("ibv_reg_mr" in x.what for x in findings if x.level == ERROR)


def test_an_older_rdma_core_is_a_warning():
    got = levels(healthy(pyverbs_version="38.0-1"))
    assert any("rdma-core 38.0-1, older than the 39" in w for w in got[WARN])
    assert not levels(healthy(pyverbs_version="50.0-2"))[WARN]
