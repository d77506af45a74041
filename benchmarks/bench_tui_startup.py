"""Benchmark: time from starting `autoft` (no arguments: the TUI) to its first screen painted.

    python benchmarks/bench_tui_startup.py [--repeats 10]

Each run starts `python -m autoft` as a new process on a pseudo-terminal (110x36), the way a user
starts it, and reads what it writes to the terminal. Two clocks, both from just before the
process is spawned:
  * terminal: when the first screen's text ("Step 1 of 6") has arrived on the terminal, i.e. it is
    painted (the goal's figure);
  * app: when the first screen's `call_after_refresh` ran inside the app (AUTOFT_TUI_PAINTED hook).
The app exits right after painting (AUTOFT_TUI_EXIT_AFTER_PAINT=1). `python -c pass` and
`python -c "import textual.app"` are measured alongside for scale. One warm-up run first (bytecode
and page caches), then the commands take turns. Goal (issue 5): first screen within 1 s.
Writes benchmarks/results/tui_startup.json and tui_startup.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import pty
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
MARK = b"Step 1 of 6"
COLS, ROWS = 110, 36


def _set_size(fd: int) -> None:
    import fcntl
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))


def time_tui(timeout: float = 30.0) -> dict:
    """One start of `autoft` on a pty: seconds to the text on the terminal and to the app's hook."""
    master, slave = pty.openpty()
    _set_size(slave)
    with tempfile.TemporaryDirectory() as tmp:
        stamp = Path(tmp) / "painted"
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(COLS), "LINES": str(ROWS),
               "AUTOFT_TUI_PAINTED": str(stamp), "AUTOFT_TUI_EXIT_AFTER_PAINT": "1", "HF_HUB_OFFLINE": "1"}
        t0 = time.time()
        proc = subprocess.Popen([PY, "-m", "autoft"], stdin=slave, stdout=slave, stderr=slave, env=env,
                                cwd=tmp, close_fds=True)
        os.close(slave)
        seen, t_screen, buf = None, None, b""
        while True:  # drain the terminal (the app blocks if nobody reads it)
            if time.time() - t0 > timeout:
                proc.kill()
                raise SystemExit(f"autoft did not paint within {timeout} s: {buf[-400:]!r}")
            r, _, _ = select.select([master], [], [], 0.05)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                buf += chunk
                if t_screen is None and MARK in buf:
                    t_screen = time.time()
            elif proc.poll() is not None:
                break
        proc.wait()
        t_exit = time.time()
        os.close(master)
        if t_screen is None or not stamp.exists():
            raise SystemExit(f"no first paint seen (exit {proc.returncode}): {buf[-400:]!r}")
        seen = float(stamp.read_text())
    return {"terminal_s": t_screen - t0, "app_hook_s": seen - t0, "exit_s": t_exit - t0}


def time_cmd(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def _stats(xs: list[float]) -> dict:
    return {"median_s": round(statistics.median(xs), 4), "min_s": round(min(xs), 4),
            "max_s": round(max(xs), 4), "runs_s": [round(x, 4) for x in xs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(HERE / "results" / "tui_startup"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON")
    args = ap.parse_args()
    out = Path(args.out)
    if args.plot_only:
        plot(json.loads(out.with_suffix(".json").read_text())["results"], out.with_suffix(".png"))
        return
    others = {"python -c 'pass' (interpreter start)": [PY, "-c", "pass"],
              "python -c 'import textual.app'": [PY, "-c", "import textual.app"]}
    time_tui()  # warm-up
    for cmd in others.values():
        time_cmd(cmd)
    tui: list[dict] = []
    times: dict[str, list[float]] = {k: [] for k in others}
    for _ in range(args.repeats):
        tui.append(time_tui())
        for name, cmd in others.items():
            times[name].append(time_cmd(cmd))
    rows = {"autoft: first screen on the terminal": _stats([r["terminal_s"] for r in tui]),
            "autoft: in-app hook (frame after the first)": _stats([r["app_hook_s"] for r in tui]),
            "autoft: start, paint and exit": _stats([r["exit_s"] for r in tui])}
    rows.update({name: _stats(ts) for name, ts in times.items()})
    first = rows["autoft: first screen on the terminal"]
    result = {
        "benchmark": "autoft (TUI) start to first screen painted, on a 110x36 pseudo-terminal",
        "goal": "first screen painted within 1 s of `autoft` starting",
        "repeats": args.repeats,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "note": "shared machine (2 cores, several engineers)"},
        "results": rows,
        "first_paint_median_s": first["median_s"],
        "first_paint_max_s": first["max_s"],
        "meets_1s_median": first["median_s"] <= 1.0,
        "meets_1s_every_run": first["max_s"] <= 1.0,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))
    for name, r in rows.items():
        print(f"{name:<44} median {r['median_s']:.3f} s  (min {r['min_s']:.3f}, max {r['max_s']:.3f})")
    print(f"first paint <= 1 s: median {result['meets_1s_median']}, every run {result['meets_1s_every_run']}")


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    med = [rows[n]["median_s"] for n in names]
    lo = [rows[n]["median_s"] - rows[n]["min_s"] for n in names]
    hi = [rows[n]["max_s"] - rows[n]["median_s"] for n in names]
    colors = ["#2a7ab0" if n.startswith("autoft") else "#999999" for n in names]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    y = list(range(len(names)))
    ax.barh(y, med, xerr=[lo, hi], color=colors, capsize=3)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="#c0392b", ls="--", lw=1, label="goal: first screen within 1 s")
    for i, n in enumerate(names):
        ax.text(rows[n]["max_s"], i, f"  {med[i]:.2f} s", va="center", fontsize=8)
    ax.set_xlabel("seconds from process start (median; bars: min-max)")
    ax.set_title("autoft TUI: start to first screen painted")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
