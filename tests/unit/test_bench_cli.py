"""The bench's device-free parts: budgets, reading perftest's and rstream's
output (as they printed it on rxe, in data/), the plot, the argument checks."""
import json
import os
import struct
import time

import pytest

from rdmamsg.__main__ import main as rdmamsg_main
from rdmamsg.cli import bench
from rdmamsg.cli.budget import Budget, Progress
from rdmamsg.cli.plot import load_baseline, plot, points_of

DATA = os.path.join(os.path.dirname(__file__), "data")


def test_a_budget_counts_or_times():
    b = Budget(3, None)
    assert [b.more(n) for n in range(5)] == [True, True, True, False, False]
    b = Budget(None, 0.05)
    b.start()
    assert b.more(10**9)
    time.sleep(0.06)
    assert not b.more(0)
    with pytest.raises(ValueError):
        Budget(None, None)
    with pytest.raises(ValueError):
        Budget(1, 1.0)


def test_the_progress_bar_draws_only_when_enabled(capsys):
    import sys

    p = Progress(2, enabled=True, out=sys.stdout)
    p.next("send_bw 64 B")
    p.show(0.5, force=True)
    p.finish()
    assert "1/2 send_bw 64 B" in capsys.readouterr().out
    q = Progress(2, enabled=False, out=sys.stdout)
    q.next("x")
    assert capsys.readouterr().out == ""


def test_perftest_output_is_read_as_printed():
    bw = load_baseline(os.path.join(DATA, "ib_send_bw.txt"))
    assert {p["label"] for p in bw} == {"ib_send_bw"} and {p["kind"] for p in bw} == {"bw"}
    assert [p["size"] for p in bw][:3] == [2, 4, 8] and bw[-1]["size"] == 8 << 20
    assert bw[-1]["value"] == 71.89                      # BW average, MiB/s
    lat = load_baseline(os.path.join(DATA, "ib_send_lat.txt"))
    assert lat[5] == {"label": "ib_send_lat", "kind": "lat", "size": 64, "value": 11.58}


def test_rstream_output_is_read_as_printed():
    bw, = load_baseline(os.path.join(DATA, "rstream_bw.txt"))
    assert bw["kind"] == "bw" and bw["size"] == 65536
    assert bw["value"] == pytest.approx(0.45e9 / 8 / (1 << 20))
    lat, = load_baseline(os.path.join(DATA, "rstream_lat.txt"))
    assert lat["kind"] == "lat" and lat["size"] == 64 and lat["value"] == 15.28


def test_our_json_rows_are_a_baseline_too(tmp_path):
    rows = [{"test": "send_bw", "size": 64, "MB_per_s": 1.048576, "msg_per_s": 1, "poller": "c"},
            {"test": "rpc_lat", "size": 64, "rtt_median_us": 90.0, "poller": "c"}]
    f = tmp_path / "before.json"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    got = load_baseline(str(f))
    assert got[0] == {"label": "before send_bw", "kind": "bw", "size": 64, "value": 1.0}
    assert got[1]["label"] == "before rpc_lat (round trip)"
    bad = tmp_path / "junk.txt"
    bad.write_text("hello\n")
    with pytest.raises(ValueError, match="neither perftest nor rstream"):
        load_baseline(str(bad))


def test_the_plot_is_a_png(tmp_path):
    rows = [{"test": "send_bw", "size": s, "MB_per_s": s / 100, "msg_per_s": 1, "poller": "c"}
            for s in (64, 4096)]
    rows.append({"test": "send_lat", "size": 64, "median_us": 20.0, "poller": "c"})
    out = tmp_path / "p.png"
    plot(points_of(rows) + load_baseline(os.path.join(DATA, "ib_send_bw.txt")), str(out))
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width > 600 and height > 300


@pytest.mark.parametrize("args, message", [
    (["--client", "h", "--test", "nope"], "unknown test"),
    (["--client", "h", "--size", "0"], "positive byte counts"),
    (["--client", "h", "--iters", "0"], "must be positive"),
    (["--client", "h", "--compare", "x.txt"], "--compare goes with --plot"),
    (["--client", "h", "--opt", "spin_us"], "NAME=NUMBER"),
])
def test_bench_rejects_bad_arguments(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        bench.main(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_bench_budgets_follow_the_kind_of_test():
    p = Progress(1, enabled=False)
    assert bench._budget("send_bw", None, None, p).duration == 5.0
    assert bench._budget("send_lat", None, None, p).iters == 5000
    assert bench._budget("send_lat", 100, 2.0, p).iters == 100
    assert bench._budget("send_bw", 100, 2.0, p).duration == 2.0
    assert bench._budget("send_lat", None, 2.0, p).duration == 2.0
    assert bench._budget("send_bw", 100, None, p).iters == 100


def test_the_command_line_names_its_commands(capsys):
    assert rdmamsg_main([]) == 2
    err = capsys.readouterr().err
    assert all(c in err for c in ("info", "doctor", "bench"))
    assert rdmamsg_main(["--help"]) == 0


def test_without_pyverbs_the_package_imports_and_the_doctor_says_what_to_install(tmp_path):
    import subprocess
    import sys

    fake = tmp_path / "pyverbs"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('simulated: no pyverbs here')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "rdmamsg", "doctor"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "ERROR pyverbs does not import: simulated: no pyverbs here" in out.stdout
    assert "apt install python3-pyverbs" in out.stdout
    code = ("import rdmamsg\n"
            "try:\n    rdmamsg.connect\nexcept rdmamsg.NoDeviceError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)
    assert "pyverbs is not importable" in out.stdout and "doctor" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, "-m", "rdmamsg", "info"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 1 and "python3-pyverbs" in out.stderr
