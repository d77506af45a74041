"""Progress of a run: events that the CLI prints on stderr and the TUI subscribes to.

The pipeline and the search call `progress.emit(kind, **fields)`; every subscriber gets the event
as a dict {"kind": ..., **fields, "elapsed_s": ..., "eta_s": ...}. Kinds:

    stage        name ("data", "advise", "search", "final", "evaluate", "save"), detail
    phase        name ("search" | "final"), total_steps: planned optimizer steps of the phase
    rung_start   rung, n_rungs, n_trials, budget_steps
    trial_start  rung, trial, index (within rung), n_trials, config
    step         phase, rung, trial, step, total (the trial's target), loss, lr, done_steps
    eval         phase, step, metric_name, metric, (val) loss
    trial_end    the stored record (trial, rung, metric, status, seconds, ...)
    rung_end     rung, promoted (trial ids)
    heartbeat    phase, running (trial ids), done_steps: the ray backend, about once a second while
                 its trials run in other processes (Cancel is checked on it, as on step events)
    warning      text
    message      text
    done         output_dir, seconds

ETA: the bus tracks the phase's planned steps and how many are done, and adds `eta_s` (seconds,
from the phase's own rate since its first step event; at that first event, since the phase began)
to step events.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

Listener = Callable[[dict], None]


class RunInterrupted(KeyboardInterrupt):
    """Raised by a listener to stop a run at its next step (the TUI's Cancel, `should_stop`).

    A KeyboardInterrupt on purpose: the run treats it like Ctrl-C (it stops after the persisted
    trials and leaves a resumable output folder), and the bus, which swallows a listener's
    ordinary exceptions, lets it through."""


class Progress:
    """Event bus. `subscribe(fn)`; `emit(kind, **fields)`. Listener errors never stop a run."""

    def __init__(self, listeners: list[Listener] | None = None):
        self.listeners: list[Listener] = list(listeners or [])
        self.t0 = time.monotonic()
        self._phase_t0 = self.t0
        self._phase_total = 0
        self._phase_base = 0  # done_steps at the first step event (resumed work is not timed)
        self._phase_first = None

    def subscribe(self, fn: Listener) -> Listener:
        self.listeners.append(fn)
        return fn

    def emit(self, kind: str, **fields) -> None:
        now = time.monotonic()
        if kind == "phase":
            self._phase_t0, self._phase_total, self._phase_first = now, int(fields.get("total_steps") or 0), None
        ev = {"kind": kind, **fields, "elapsed_s": round(now - self.t0, 2)}
        if kind == "step" and self._phase_total:
            done = int(fields.get("done_steps") or 0)
            if self._phase_first is None:
                self._phase_first = (now, done)
            t_first, d_first = self._phase_first
            rate = (done - d_first) / (now - t_first) if now > t_first and done > d_first else None
            if rate is None and done and now > self._phase_t0:
                # the first step event of the phase: its rate since the phase began (warm-up
                # included) rather than no ETA until the next one, which may be many minutes away
                rate = done / (now - self._phase_t0)
            ev["eta_s"] = round(max(0, self._phase_total - done) / rate, 1) if rate else None
        for fn in list(self.listeners):
            try:
                fn(ev)
            except Exception:  # noqa: BLE001  (a broken display must not kill training)
                pass


def fmt_duration(s) -> str:
    """Seconds as 1m05s or 1h02m ("?" when unknown); the TUI shows the same strings."""
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class StderrReporter:
    """One line per event on stderr; step lines are overwritten in place on a terminal."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._open_line = False

    def _line(self, text: str, transient: bool = False) -> None:
        if self.tty and transient:
            self.stream.write("\r\033[K" + text)
            self._open_line = True
        else:
            if self._open_line:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            self._open_line = False
        self.stream.flush()

    def __call__(self, ev: dict) -> None:
        k = ev["kind"]
        if k == "warning":
            self._line(f"autoft: warning: {ev.get('text')}")
            return
        if self.quiet:
            return
        if k == "stage":
            self._line(f"[{ev.get('name')}] {ev.get('detail', '')}".rstrip())
        elif k == "message":
            self._line(f"  {ev.get('text')}")
        elif k == "rung_start":
            self._line(f"rung {ev['rung'] + 1}/{ev['n_rungs']}: {ev['n_trials']} trials to "
                       f"{ev['budget_steps']} steps each")
        elif k == "step":
            where = (f"rung {ev.get('rung', 0) + 1} trial {ev.get('trial')}" if ev.get("phase") == "search"
                     else "final")
            loss = ev.get("loss")
            loss_s = f"{loss:.4f}" if isinstance(loss, (int, float)) else "-"
            self._line(f"  {where} step {ev.get('step')}/{ev.get('total')} loss {loss_s} "
                       f"ETA {fmt_duration(ev.get('eta_s'))}", transient=True)
        elif k == "eval":
            m = ev.get("metric")
            self._line(f"  step {ev.get('step')}: validation {ev.get('metric_name')} "
                       f"{m:.4f}" if isinstance(m, (int, float)) else f"  step {ev.get('step')}: validation -")
        elif k == "trial_end":
            m = ev.get("metric")
            m_s = f"{m:.4f}" if isinstance(m, (int, float)) else "-"
            lr = (ev.get("config") or {}).get("learning_rate")
            done = " (finished before the resume)" if ev.get("resumed") else ""
            self._line(f"  trial {ev.get('trial')} rung {ev.get('rung', 0) + 1}: {ev.get('metric_name')} "
                       f"{m_s} [{ev.get('status')}] lr {lr:.2g} {ev.get('seconds') or 0:.0f}s{done}"
                       if isinstance(lr, float) else f"  trial {ev.get('trial')}: {m_s} [{ev.get('status')}]{done}")
        elif k == "rung_end":
            self._line(f"  promoted: {', '.join(str(t) for t in ev.get('promoted', [])) or '-'}")
        elif k == "done":
            self._line(f"done in {fmt_duration(ev.get('seconds'))}: {ev.get('output_dir')}")


class Recorder:
    """Keeps every event (tests, and a TUI that redraws from history)."""

    def __init__(self):
        self.events: list[dict] = []

    def __call__(self, ev: dict) -> None:
        self.events.append(ev)

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["kind"] == kind]
