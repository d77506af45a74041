"""Step 3: what to plan for: this machine (probed), a GPU from the table, or a memory size."""
from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.widgets import DataTable, Input, Label, Static

from autoft.advisor.units import GIB
from autoft.errors import AutoftError
from autoft.tui.screens.base import Step, help_of
from autoft.tui.services import parse_int


def describe(hw) -> str:
    """One line about a Hardware: what the advisor will plan for."""
    if hw is None:
        return "-"
    if getattr(hw, "kind", "cpu") == "cpu" or not getattr(hw, "gpus", None):
        ram = getattr(hw, "ram_bytes", 0) / GIB
        why = f" - {hw.reason}" if getattr(hw, "reason", None) else ""
        return f"CPU, {getattr(hw, 'cpu_cores', 1)} cores, {ram:.1f} GiB RAM{why}"
    g = hw.gpus[0]
    n = len(hw.gpus)
    free = f", {g.free_bytes / GIB:.1f} GiB free" if g.free_bytes is not None else ""
    return (f"{n} x {g.name}, {g.memory_bytes / GIB:.1f} GiB{free}, bf16 {'yes' if g.bf16 else 'no'}"
            f" ({hw.source})")


class HardwareScreen(Step):
    STEP = "hardware"
    HELP = ("The first row is this machine as probed. Pick another row to plan for a GPU you do not "
            "have here (Enter or click), or type a memory size to plan for any GPU of that size.")

    _ready = False

    def body(self) -> ComposeResult:
        a = self.answers
        yield Label("This machine", classes="field-label")
        yield Static("probing ...", id="probe")
        yield Label("Plan for (arrow keys or click a row)", classes="field-label")
        yield DataTable(id="gpu-table", cursor_type="row", zebra_stripes=True)
        yield Label("GPU memory (optional)", classes="field-label")
        yield Input(a.get("gpu_memory") or "", id="gpu_memory", placeholder="e.g. 24GiB",
                    tooltip=help_of("gpu_memory"))
        yield Static(help_of("gpu_memory"), classes="help")
        yield Label("Number of GPUs", classes="field-label")
        yield Input(str(a.get("gpus") or 1), id="gpus", type="integer", tooltip=help_of("gpus"))
        yield Label("Planning for", classes="field-label")
        yield Static("-", id="plan", classes="plan")

    def on_mount(self) -> None:
        table = self.query_one("#gpu-table", DataTable)
        table.add_columns("choice", "memory", "bf16")
        table.add_row("auto", "this machine (probed)", "", key="auto")
        table.add_row("cpu", "plan for the CPU", "", key="cpu")
        self._probe()
        self._table()
        table.focus()

    def can_next(self) -> bool:
        return self.answers.hardware is not None

    # -- workers ---------------------------------------------------------------------------------
    @work(thread=True, group="probe")
    def _probe(self) -> None:
        hw = self.services.probe()
        self.app.call_from_thread(self.query_one("#probe", Static).update, describe(hw))

    @work(thread=True, group="table")
    def _table(self) -> None:
        try:
            rows = self.services.gpu_table()
        except AutoftError as err:
            self.app.call_from_thread(self.say, f"autoft: error: {err}", True)
            rows = {}
        self.app.call_from_thread(self._fill_table, rows)

    def _fill_table(self, rows: dict) -> None:
        table = self.query_one("#gpu-table", DataTable)
        for name, g in rows.items():
            table.add_row(name, f"{g.memory_bytes / GIB:.0f} GiB", "yes" if g.bf16 else "no", key=name)
        chosen = self.answers.get("gpu") or "auto"
        keys = [r.value for r in table.rows]
        if chosen in keys:
            table.move_cursor(row=keys.index(chosen))
        self._ready = True
        self._plan()

    @work(thread=True, exclusive=True, group="plan")
    def _plan(self) -> None:
        a = self.answers
        try:
            hw = self.services.plan_hardware(a.get("gpu") or "auto", a.get("gpu_memory"), a.get("gpus"))
        except AutoftError as err:
            self.app.call_from_thread(self._planned, None, err)
            return
        self.app.call_from_thread(self._planned, hw, None)

    def _planned(self, hw, err) -> None:
        self.answers.hardware = hw
        self.answers.recommendation = None
        self.query_one("#plan", Static).update(describe(hw) if hw is not None else "-")
        if err is not None:
            self.say(f"autoft: error: {err}", True)
        else:
            self.say("press Ctrl+N for the recommendation")
        self.refresh_bindings()

    # -- answers ---------------------------------------------------------------------------------
    @on(DataTable.RowSelected, "#gpu-table")
    @on(DataTable.RowHighlighted, "#gpu-table")
    def _selected(self, event) -> None:
        # A click or the arrow keys choose (a plan is cheap); ignored until the table is filled,
        # so that the cursor's first position does not replace the saved answer.
        if not self._ready or event.row_key.value == self.answers.get("gpu"):
            return
        self.answers.set("gpu", event.row_key.value)
        self._replan()

    @on(Input.Changed)
    def _typed(self) -> None:
        self._replan()

    def _replan(self) -> None:
        self.answers.hardware = None
        self.refresh_bindings()
        if self.save():
            self._plan()

    def save(self) -> bool:
        a = self.answers
        a.set("gpu_memory", self.query_one("#gpu_memory", Input).value.strip() or None)
        try:
            a.set("gpus", parse_int(self.query_one("#gpus", Input).value, "gpus") or 1)
        except AutoftError as err:
            self.say(f"autoft: error: {err}", True)
            return False
        return True
