"""python -m rdmamsg info, doctor and bench, run as a user runs them, on the device."""
import json
import os
import subprocess
import sys

import pytest

IP = os.environ.get("RDMAMSG_SELF", "")
POLLER = os.environ.get("RDMAMSG_POLLER", "auto")
DATA = os.path.join(os.path.dirname(__file__), "..", "unit", "data")


def rdmamsg(*args, prefix=(), timeout=240):
    return subprocess.run([*prefix, sys.executable, "-m", "rdmamsg", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_info_shows_the_device_its_gids_the_limit_and_the_poller():
    out = rdmamsg("info")
    assert out.returncode == 0, out.stderr
    assert "ACTIVE, Ethernet" in out.stdout
    assert f"::ffff:{IP}" in out.stdout and "RoCE v2" in out.stdout
    assert "RLIMIT_MEMLOCK" in out.stdout
    info = json.loads(rdmamsg("info", "--json").stdout)
    gids = [g for d in info["devices"] for p in d["ports"] for g in p["gids"]]
    assert any(g["gid"] == f"::ffff:{IP}" and g["type"] == "RoCE v2" for g in gids)
    assert info["poller"]["in_use"] == ("python" if POLLER == "python" else "cython")


def test_doctor_passes_here_and_its_loopback_uses_the_poller_in_use():
    out = rdmamsg("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ERROR" not in out.stdout
    want = "python" if POLLER == "python" else "cython"
    assert f"a loopback connection on {IP} sent and received (poller: {want})" in out.stdout


def test_doctor_names_a_memlock_limit_too_small_for_the_pool():
    # As root the limit does not apply (CAP_IPC_LOCK): drop the capability, as a user has none.
    shell = ("ulimit -l 1024 && exec setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock "
             f"{sys.executable} -m rdmamsg doctor")
    out = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=240)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "ERROR RLIMIT_MEMLOCK is 1 MiB; one connection registers about" in out.stdout
    assert "ulimit -l unlimited" in out.stdout
    # The loopback really failed to register, and says so with the limit's name.
    assert "ibv_reg_mr" in out.stdout and "RLIMIT_MEMLOCK is 1048576 bytes" in out.stdout


def test_doctor_says_which_ips_have_a_gid_when_given_another():
    out = rdmamsg("doctor", "--ip", "10.99.0.7")
    assert out.returncode == 1
    assert f"no active RoCE v2 GID has the address 10.99.0.7 (those with one: {IP})" in out.stdout


@pytest.fixture
def bench_server():
    started = []

    def start(count):
        srv = subprocess.Popen([sys.executable, "-m", "rdmamsg", "bench", "--server", "--bind", IP,
                                "--port", "18590", "--count", str(count)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(srv)
        assert "bench server on" in srv.stdout.readline()
        return srv

    yield start
    for srv in started:
        try:
            _, err = srv.communicate(timeout=60)      # also closes the pipes
        finally:
            srv.kill()
        assert srv.returncode == 0, err


ALL = "send_bw,send_lat,write_bw,write_lat,rma_bw,rma_lat,stream_bw,stream_lat,rpc_lat,rpc_rate"


def test_bench_runs_every_test_by_count_and_plots_beside_perftest(bench_server, tmp_path):
    bench_server(10)
    plot = tmp_path / "bench.png"
    out = rdmamsg("bench", "--client", IP, "--port", "18590", "--test", ALL, "--size", "4096",
                  "--iters", "300", "--json", "--plot", str(plot),
                  "--compare", os.path.join(DATA, "ib_send_bw.txt"),
                  "--compare", os.path.join(DATA, "ib_send_lat.txt"), timeout=280)
    assert out.returncode == 0, out.stderr
    rows = {r["test"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert sorted(rows) == sorted(ALL.split(","))
    assert rows["send_bw"]["messages"] == rows["write_bw"]["messages"] == 300   # the server's count
    assert rows["rma_bw"]["messages"] == 300 and rows["stream_bw"]["messages"] == 600
    for t in ("send_lat", "write_lat", "rma_lat", "stream_lat", "rpc_lat"):
        assert rows[t]["iters"] == 300
    assert rows["send_lat"]["median_us"] > 0 and rows["rpc_rate"]["calls"] >= 268
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_by_duration_with_a_table_and_a_progress_bar(bench_server):
    bench_server(4)
    out = rdmamsg("bench", "--client", IP, "--port", "18590", "--test",
                  "send_lat,stream_bw,rma_lat,rpc_lat", "--size", "64", "--duration", "1",
                  "--progress", "--rpc-handlers", "inline")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["test", "bytes", "result"] and len(lines) == 5
    assert "one-way" in lines[1] and "MB/s" in lines[2] and "one-way" in lines[3]
    assert "round trip" in lines[4] and "inline handlers" in lines[4]
    assert "4/4 rpc_lat 64 B" in out.stderr
