"""Throughput and latency against message size, ours beside perftest's and
rstream's (``bench --plot``, ci/bench).

A baseline file is what perftest (ib_send_bw, ib_write_lat, ...) or rsockets'
rstream printed, as is, or JSON rows.  Each becomes points
``{"label", "kind": "bw" | "lat", "size", "value"}``: MiB/s, or one-way µs.
"""
from __future__ import annotations

import json
import os
import re

MIB = 1 << 20

_PERFTEST_BANNER = re.compile(r"^\s*(\w+) (BW|Latency) Test", re.M)


def _number(text: str) -> float:
    return float(text.rstrip("s"))


def parse_perftest(text: str) -> list[dict]:
    """Rows of perftest's table; the tool named from its banner (``Send BW Test``)."""
    m = _PERFTEST_BANNER.search(text)
    if not m:
        raise ValueError("no perftest banner ('... BW Test' or '... Latency Test')")
    verb = m.group(1).lower().replace("rdma_", "")
    kind = "bw" if m.group(2) == "BW" else "lat"
    label = f"ib_{verb}_{kind}"
    head = None
    out = []
    for line in text.splitlines():
        cols = line.split()
        if cols and cols[0] == "#bytes":
            head = line
            continue
        if head is None or len(cols) < 5 or not cols[0].isdigit():
            continue
        size = int(cols[0])
        if kind == "bw":      # #bytes #iterations BW-peak BW-average[MB/sec, 2^20] MsgRate
            value = float(cols[3])
        else:                 # #bytes #iterations t_min t_max t_typical ...
            value = float(cols[4])
        out.append({"label": label, "kind": kind, "size": size, "value": value})
    if not out:
        raise ValueError(f"{label}: no result rows under '#bytes'")
    return out


_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _count(text: str) -> int:
    """rstream's sizes and counts: ``64``, ``64k``, ``1m`` (binary units)."""
    unit = _UNITS.get(text[-1:].lower(), 1)
    return int(text[:-1] if unit > 1 else text) * unit


def parse_rstream(text: str, label: str = "rstream") -> list[dict]:
    """rstream's rows: ``name bytes xfers iters total time Gb/sec usec/xfer``;
    a ``*_lat`` row, or a custom one of one transfer per iteration, is latency."""
    out = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) != 8 or cols[0] == "name":
            continue
        try:
            size, xfers = _count(cols[1]), _count(cols[2])
        except ValueError:
            continue
        if cols[0].endswith("_lat") or (cols[0] == "custom" and xfers == 1):
            out.append({"label": label, "kind": "lat", "size": size, "value": _number(cols[7])})
        else:
            out.append({"label": label, "kind": "bw", "size": size,
                        "value": _number(cols[6]) * 1e9 / 8 / MIB})
    if not out:
        raise ValueError("no rstream result rows")
    return out


def points_of(rows: list[dict], label: str = "rdmamsg") -> list[dict]:
    """Our bench rows (``bench --json``) as plot points."""
    out = []
    for r in rows:
        name = f"{label} {r['test']}"
        if "MB_per_s" in r:
            out.append({"label": name, "kind": "bw", "size": r["size"],
                        "value": r["MB_per_s"] * 1e6 / MIB})
        elif "median_us" in r:
            out.append({"label": name, "kind": "lat", "size": r["size"], "value": r["median_us"]})
        elif "rtt_median_us" in r:
            out.append({"label": name + " (round trip)", "kind": "lat", "size": r["size"],
                        "value": r["rtt_median_us"]})
    return out


def load_baseline(path: str) -> list[dict]:
    """Points from a perftest or rstream output file, or from JSON (points, or
    our bench rows, as a list or one object per line)."""
    with open(path) as f:
        text = f.read()
    stem = os.path.splitext(os.path.basename(path))[0]
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        data = data if isinstance(data, list) else [data]
        if all("kind" in d and "value" in d for d in data):
            return data
        return points_of(data, stem)
    if _PERFTEST_BANNER.search(text):
        return parse_perftest(text)
    if "usec/xfer" in text:
        return parse_rstream(text, f"rstream ({stem})")
    raise ValueError(f"{path}: neither perftest nor rstream output, nor JSON")


def _size_label(n: int) -> str:
    for unit, k in (("M", MIB), ("K", 1024)):
        if n >= k and n % k == 0:
            return f"{n // k}{unit}"
    return str(n)


def plot(points: list[dict], path: str, title: str = "rdmamsg") -> None:
    """Two panels, throughput and latency against size; ``rdmamsg`` series
    solid, baselines dashed."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: 'apt install python3-matplotlib' or "
                           "'pip install matplotlib'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, kind, ylabel in ((axes[0], "bw", "throughput (MiB/s)"),
                             (axes[1], "lat", "latency, median (µs; one-way unless marked)")):
        series: dict[str, list[tuple[int, float]]] = {}
        for p in points:
            if p["kind"] == kind:
                series.setdefault(p["label"], []).append((p["size"], p["value"]))
        sizes = sorted({s for pts in series.values() for s, _ in pts})
        for label, pts in sorted(series.items()):
            pts.sort()
            ours = label.startswith("rdmamsg")
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o" if ours else "s",
                    linestyle="-" if ours else "--", label=label)
        ax.set_xscale("log", base=2)
        if sizes:
            ax.set_xticks(sizes, [_size_label(s) for s in sizes], rotation=45)
        if kind == "lat" and series:
            ax.set_yscale("log")
        elif series:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_rows(rows: list[dict], baselines: list[dict], path: str) -> None:
    plot(points_of(rows) + baselines, path)
