"""Step 5: the run, live. The pipeline runs in a worker thread and reports progress events
(autoft/autotrain/progress.py); this screen draws them: trials by rung with the survivors
highlighted, the current trial's loss, step and ETA. Cancel asks first and leaves a resumable run."""
from __future__ import annotations

import threading

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, Log, Sparkline, Static

from autoft.autotrain.progress import fmt_duration as fmt_s  # same strings as the CLI
from autoft.errors import AutoftError
from autoft.tui.screens.base import Step
from autoft.tui.screens.dialogs import ConfirmScreen


class SearchView:
    """The search as the events describe it (pure: no widgets, so it is easy to test)."""

    def __init__(self) -> None:
        self.rungs: list[int] = []  # budget steps per rung
        self.cells: dict[int, dict[int, tuple]] = {}  # trial -> rung -> (metric, status)
        self.lr: dict[int, float] = {}
        self.promoted: dict[int, set[int]] = {}  # rung -> trials promoted out of it
        self.metric_name = "metric"
        self.losses: list[float] = []
        self.where = ""
        self.step_line = ""

    def feed(self, ev: dict) -> None:
        k = ev.get("kind")
        if k == "rung_start":
            r = int(ev.get("rung", 0))
            while len(self.rungs) <= r:
                self.rungs.append(0)
            self.rungs[r] = int(ev.get("budget_steps") or 0)
        elif k == "trial_start":
            t = int(ev.get("trial", 0))
            self.cells.setdefault(t, {})
            lr = (ev.get("config") or {}).get("learning_rate")
            if lr is not None:
                self.lr[t] = lr
            self.losses = []
            self.where = f"rung {int(ev.get('rung', 0)) + 1}, trial {t}"
        elif k == "phase" and ev.get("name") == "final":
            self.losses = []
            self.where = "final fine-tune"
        elif k == "step":
            loss = ev.get("loss")
            if isinstance(loss, (int, float)) and loss == loss:
                self.losses.append(float(loss))
            where = self.where if ev.get("phase", "search") == "search" else "final fine-tune"
            loss_s = f"{loss:.4f}" if isinstance(loss, (int, float)) else "-"
            self.step_line = (f"{where}: step {ev.get('step')}/{ev.get('total')}, loss {loss_s}, "
                              f"ETA {fmt_s(ev.get('eta_s'))}")
        elif k == "trial_end":
            t, r = int(ev.get("trial", 0)), int(ev.get("rung", 0))
            self.metric_name = ev.get("metric_name") or self.metric_name
            self.cells.setdefault(t, {})[r] = (ev.get("metric"), ev.get("status", "ok"))
            while len(self.rungs) <= r:
                self.rungs.append(int(ev.get("steps") or 0))
            lr = (ev.get("config") or {}).get("learning_rate")
            if lr is not None:
                self.lr.setdefault(t, lr)
        elif k == "rung_end":
            self.promoted[int(ev.get("rung", 0))] = {int(t) for t in ev.get("promoted") or []}
        elif k == "heartbeat":  # the ray backend: several trials at once, in other processes
            running = ", ".join(str(t) for t in ev.get("running") or []) or "-"
            self.step_line = f"search on Ray: trials {running} running, {ev.get('done_steps', 0)} steps done"

    def rows(self) -> list[list]:
        """One row per trial: trial, learning rate, then one cell per rung (Text, survivors green)."""
        out = []
        for t in sorted(self.cells):
            row: list = [str(t), f"{self.lr[t]:.2g}" if t in self.lr else "-"]
            for r in range(len(self.rungs)):
                cell = self.cells[t].get(r)
                if cell is None:
                    row.append(Text(""))
                    continue
                metric, status = cell
                txt = f"{metric:.4f}" if isinstance(metric, (int, float)) else "-"
                if str(status).startswith("failed"):
                    row.append(Text(f"{txt} {status}", style="red"))
                elif t in self.promoted.get(r, set()):
                    row.append(Text(f"▲ {txt}", style="bold green"))
                elif r in self.promoted:
                    row.append(Text(txt, style="dim"))
                else:
                    row.append(Text(txt))
            out.append(row)
        return out


class RunScreen(Step):
    STEP = "run"
    HELP = ("The search trains several configurations briefly, keeps the best third at each rung "
            "(green, marked ▲) and trains those longer; then the best one is fine-tuned in full. "
            "C cancels (after asking): the finished trials stay in the output folder and R resumes.")
    BINDINGS = [Binding("c", "cancel", "Cancel run"), Binding("r", "resume", "Resume"),
                Binding("ctrl+n", "next", "Results")]

    def __init__(self) -> None:
        super().__init__()
        self.view = SearchView()
        self.cancel_event = threading.Event()
        self.state = "idle"  # idle | running | cancelling | cancelled | failed | done

    def body(self) -> ComposeResult:
        yield Static("", id="command", classes="command")
        yield Static("starting ...", id="progress")
        yield Label("Trials by rung (metric on the validation split; ▲ promoted)", classes="section")
        yield DataTable(id="trials", zebra_stripes=True, cursor_type="row")
        yield Label("Loss of the current trial", classes="section")
        yield Sparkline([], id="loss")
        yield Log(id="log", max_lines=200)

    def on_mount(self) -> None:
        self.start(resume=False)

    # -- running ---------------------------------------------------------------------------------
    def start(self, resume: bool) -> None:
        a = self.answers
        self.cancel_event = threading.Event()
        self.state = "running"
        self.app.run_active = True
        argv = a.run_argv(resume=resume)
        self.query_one("#command", Static).update("$ " + a.command(resume=resume))
        self.query_one("#log", Log).write_line(("resuming " if resume else "starting ") + a.command(resume=resume))
        self.say("running: C cancels")
        self.refresh_bindings()
        self._run(argv)

    @work(thread=True, exclusive=True, group="run")
    def _run(self, argv: list[str]) -> None:
        def on_event(ev: dict) -> None:
            self.app.call_from_thread(self.feed, ev)

        try:
            result = self.services.run(argv, on_event=on_event, cancel=self.cancel_event)
        except KeyboardInterrupt:  # progress.RunInterrupted (Cancel), or Ctrl-C
            self.app.call_from_thread(self._finished, None, None, True)
            return
        except AutoftError as err:
            self.app.call_from_thread(self._finished, None, err, False)
            return
        except Exception as err:  # noqa: BLE001  (a bug: show it, keep the app)
            self.app.call_from_thread(self._finished, None, AutoftError(
                f"{type(err).__name__}: {err}", "this is a bug in autoft; please report it"), False)
            return
        self.app.call_from_thread(self._finished, result, None, self.cancel_event.is_set())

    def feed(self, ev: dict) -> None:
        """One progress event from the pipeline (called on the UI thread)."""
        self.view.feed(ev)
        k = ev.get("kind")
        if k in ("rung_start", "trial_start", "trial_end", "rung_end"):
            self._draw_table()
        if k in ("step", "trial_start", "phase", "heartbeat"):
            self.query_one("#loss", Sparkline).data = list(self.view.losses[-200:])
            self.query_one("#progress", Static).update(self.view.step_line or self.view.where)
        if k in ("stage", "message", "warning", "rung_start", "rung_end", "trial_end", "done"):
            self.query_one("#log", Log).write_line(self._log_line(ev))

    def _log_line(self, ev: dict) -> str:
        k = ev["kind"]
        if k == "stage":
            return f"[{ev.get('name')}] {ev.get('detail', '')}"
        if k in ("message", "warning"):
            return ("warning: " if k == "warning" else "") + str(ev.get("text"))
        if k == "rung_start":
            return (f"rung {int(ev.get('rung', 0)) + 1}/{ev.get('n_rungs')}: {ev.get('n_trials')} trials "
                    f"to {ev.get('budget_steps')} steps each")
        if k == "rung_end":
            return "promoted: " + (", ".join(str(t) for t in ev.get("promoted") or []) or "-")
        if k == "trial_end":
            m = ev.get("metric")
            return (f"trial {ev.get('trial')} rung {int(ev.get('rung', 0)) + 1}: {ev.get('metric_name')} "
                    f"{m:.4f} [{ev.get('status')}]" if isinstance(m, (int, float))
                    else f"trial {ev.get('trial')}: [{ev.get('status')}]")
        return f"done in {fmt_s(ev.get('seconds'))}: {ev.get('output_dir')}"

    def _draw_table(self) -> None:
        table = self.query_one("#trials", DataTable)
        columns = ["trial", "lr", *[f"rung {i + 1} ({s} steps)" for i, s in enumerate(self.view.rungs)]]
        if [str(c.label) for c in table.columns.values()] != columns:  # a new rung: new columns
            table.clear(columns=True)
            table.add_columns(*columns)
        else:
            table.clear()
        for row in self.view.rows():
            table.add_row(*row)

    def _finished(self, result, err: AutoftError | None, cancelled: bool) -> None:
        self.app.run_active = False
        out = self.answers.output
        if cancelled:
            self.state = "cancelled"
            self.say(f"cancelled: the finished trials are kept in {out}; R resumes "
                     f"(autoft run --resume {out})")
        elif err is not None:
            self.state = "failed"
            self.say(f"autoft: error: {err}", True)
        else:
            self.state = "done"
            self.answers.result = result
            self.say("done: Ctrl+N shows the results")
            self.app.goto("results")
        self.query_one("#log", Log).write_line(self.state)
        self.refresh_bindings()

    # -- actions ---------------------------------------------------------------------------------
    def check_action(self, action: str, parameters) -> bool | None:
        # Hidden when they cannot apply (False); Back and Results shown dimmed (None) meanwhile.
        if action == "cancel":
            return self.state == "running"
        if action == "resume":
            return self.state in ("cancelled", "failed")
        if action == "back":
            return self.state != "running" and self.state != "cancelling" or None
        if action == "next":
            return self.state == "done" or None
        return True

    def can_next(self) -> bool:
        return self.state == "done"

    def action_next(self) -> None:
        if self.state == "done":
            self.app.goto("results")

    def action_cancel(self) -> None:
        if self.state != "running":
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.cancel_run()

        self.app.push_screen(ConfirmScreen("Cancel the run? Finished trials are kept and R (or "
                                           "`autoft run --resume`) continues it."), answer)

    def cancel_run(self) -> None:
        if self.state == "running":
            self.cancel_event.set()
            self.state = "cancelling"
            self.say("cancelling at the next step ...")
            self.refresh_bindings()

    def action_resume(self) -> None:
        if self.state in ("cancelled", "failed"):
            self.start(resume=True)
