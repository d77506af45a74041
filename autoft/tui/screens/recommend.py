"""Step 4: the advisor's recommendation, every field overridable, the memory bar live.

Each change re-asks the advisor (in a worker, debounced) with the overrides, exactly as
`autoft advise --batch-size N ...` would: an override that does not fit comes back as the
advisor's one-line error naming the nearest setting that fits, and the bar shows the forced
estimate so you see by how much it misses."""
from __future__ import annotations

import dataclasses

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.widgets import Checkbox, DataTable, Input, Label, Select, Static

from autoft.advisor.question import OPTIMIZERS, PRECISIONS, TECHNIQUES
from autoft.advisor.units import GIB, fmt_params
from autoft.autotrain.options import RunOptions
from autoft.errors import AutoftError
from autoft.tui.screens.base import Step, help_of
from autoft.tui.services import OVERRIDE_FIELDS, default_output, parse_int, to_dict
from autoft.tui.widgets import MemoryBar

LABELS = {"model": "Model", "technique": "Technique", "batch_size": "Batch size",
          "gradient_accumulation_steps": "Accumulation", "seq_len": "Sequence length",
          "precision": "Precision", "gradient_checkpointing": "Checkpointing", "optimizer": "Optimizer",
          "lora_rank": "LoRA rank", "freeze_layers": "Frozen layers"}
SELECTS = {"technique": TECHNIQUES, "precision": PRECISIONS, "optimizer": OPTIMIZERS,
           "gradient_checkpointing": ("on", "off")}
INTS = ("batch_size", "gradient_accumulation_steps", "seq_len", "lora_rank", "freeze_layers")
DEBOUNCE_S = 0.25
# `autoft run` options shown under the overrides (help as in `autoft run --help`).
RUN_OPTIONS = (("search_trials", "Search trials", "configurations the successive-halving search starts "
                "with (default 9)"),
               ("max_steps", "Final steps", "optimizer steps of the final run (default: 3 epochs)"))
# Where the search's trials run (`--search-backend`, `--trials-in-parallel`, `--ray-address`).
BACKENDS = tuple(RunOptions.field_help()["search_backend"]["choices"])


def plan_value(rec: dict, name: str):
    """The value of an override field in a Recommendation's dict."""
    if name == "model":
        m = rec.get("model")
        return m.get("id") if isinstance(m, dict) else m
    if name == "lora_rank":
        lora = rec.get("lora") or {}
        return lora.get("rank", lora.get("r")) if isinstance(lora, dict) else None
    if name == "gradient_checkpointing":
        v = rec.get(name)
        return None if v is None else ("on" if v else "off")
    return rec.get(name)


def capacity_gib(hardware, rec: dict) -> float:
    """Memory the plan must fit in (per GPU, or RAM on the CPU), in GiB."""
    if hardware is not None and getattr(hardware, "memory_bytes", None):
        return hardware.memory_bytes / GIB
    gpu = rec.get("gpu") or {}
    return float(gpu.get("memory_gib") or 0.0) if isinstance(gpu, dict) else 0.0


def speed_text(sp: dict | None, data_size: int | None = None) -> tuple[str, str]:
    """The predicted (or measured) training speed of the plan in one line, and what it assumes
    (the tooltip)."""
    from autoft.advisor.speed import fmt_duration

    if not sp:
        return "speed not predicted: no throughput figures for this GPU", ""
    how = "measured" if sp.get("method") == "probe" else "predicted"
    text = f"⏱ {how} {sp['examples_per_s']:.3g} examples/s"
    if sp.get("epoch_s") is not None:
        text += f", {fmt_duration(sp['epoch_s'])}/epoch"
    size = f"an epoch is {data_size:,} examples; " if data_size else ""
    return text, f"{size}{sp.get('tokens_assumed', '')}; {sp.get('assumption', '')}"


class RecommendScreen(Step):
    STEP = "recommend"
    HELP = ("The advisor's plan and why. Type in any field to override it (empty: the advisor "
            "decides); the memory bar and the fit are recomputed as you type. A setting that does "
            "not fit is flagged with the nearest one that does; tick Force to run it anyway. "
            "Ctrl+N starts the run.")
    BINDINGS = [Binding("ctrl+n", "next", "Run"), Binding("ctrl+r", "reset", "Reset overrides")]

    def __init__(self) -> None:
        super().__init__()
        self.error: AutoftError | None = None
        self._timer = None
        self._filling = False

    def body(self) -> ComposeResult:
        a = self.answers
        with Horizontal(id="rec-cols"):
            with Grid(id="overrides"):
                for name in OVERRIDE_FIELDS:
                    yield Label(LABELS[name], id=f"l-{name}", classes="field-label")
                    cur = a.fields.get(name)
                    if name in SELECTS:
                        value = cur if name != "gradient_checkpointing" or cur is None else ("on" if cur else "off")
                        yield Select([(o, o) for o in SELECTS[name]], value=value if value is not None else Select.NULL,
                                     prompt="advisor decides", id=name, tooltip=help_of(name), compact=True)
                    else:
                        yield Input("" if cur is None else str(cur), id=name, placeholder="advisor decides",
                                    type="integer" if name in INTS else "text", tooltip=help_of(name),
                                    compact=True)
                yield Label("Force", classes="field-label")
                yield Checkbox("run anyway", bool(a.fields.get("force")), id="force",
                               tooltip=help_of("force"), compact=True)
                for name, label, tip in RUN_OPTIONS:
                    cur = a.run_options.get(name)
                    yield Label(label, classes="field-label")
                    yield Input("" if cur is None else str(cur), id=name, type="integer", compact=True,
                                placeholder="autoft run's default", tooltip=tip)
                yield from self._parallel_fields()
                yield Label("Output folder", classes="field-label")
                yield Input(a.output or default_output(a.data), id="output", compact=True,
                            tooltip="where the model, card, report and trials are written")
            with Vertical(id="report"):
                yield Static("asking the advisor ...", id="headline")
                yield MemoryBar(id="membar")
                yield Static("", id="fit")
                yield Static("", id="speed")
                yield Label("Why", classes="section")
                yield Static("", id="reasons")
                yield Label("Alternatives", classes="section")
                yield DataTable(id="alternatives", cursor_type="row", zebra_stripes=True)

    def _parallel_fields(self) -> ComposeResult:
        """Search backend, trials at once, Ray address: where the search's trials run."""
        a, run_help = self.answers, RunOptions.field_help()
        yield Label("Search on", classes="field-label")
        yield Select([(b, b) for b in BACKENDS], value=a.run_options.get("search_backend") or "local",
                     allow_blank=False, id="search_backend", compact=True, tooltip=run_help["search_backend"]["help"])
        cur = a.run_options.get("trials_in_parallel")
        yield Label("Trials at once", classes="field-label")
        yield Input("" if cur is None else str(cur), id="trials_in_parallel", type="integer", compact=True,
                    placeholder="ray: as many as fit", tooltip=run_help["trials_in_parallel"]["help"])
        yield Label("Ray address", classes="field-label")
        yield Input(a.run_options.get("ray_address") or "", id="ray_address", compact=True,
                    placeholder="ray: start Ray here", tooltip=run_help["ray_address"]["help"])

    def on_mount(self) -> None:
        alt = self.query_one("#alternatives", DataTable)
        alt.add_columns("model", "technique", "batch", "peak", "fits")
        self.answers.output = self.query_one("#output", Input).value.strip()
        self._advise()

    def can_next(self) -> bool:
        return self.answers.recommendation is not None and self.error is None

    # -- overrides -------------------------------------------------------------------------------
    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _changed(self) -> None:
        if self._filling:
            return
        a = self.answers
        before = (dict(a.fields), dict(a.run_options), a.output)
        if not self.save():
            return
        if (dict(a.fields), dict(a.run_options), a.output) == before and self.error is None:
            return  # nothing changed (e.g. the fields' first values on mount)
        self.answers.recommendation = None
        self.refresh_bindings()
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(DEBOUNCE_S, self._advise)

    def save(self) -> bool:
        a = self.answers
        try:
            for name in OVERRIDE_FIELDS:
                w = self.query_one(f"#{name}")
                if isinstance(w, Select):
                    v = None if w.value is Select.NULL else w.value
                    if name == "gradient_checkpointing" and v is not None:
                        v = v == "on"
                elif name in INTS:
                    v = parse_int(w.value, name)
                else:
                    v = w.value.strip() or None
                a.set(name, v)
        except AutoftError as err:
            self._show_error(err)
            return False
        try:
            for name, _, _ in RUN_OPTIONS + (("trials_in_parallel", "", ""),):
                a.run_options[name] = parse_int(self.query_one(f"#{name}", Input).value, name)
            backend = self.query_one("#search_backend", Select).value
            a.run_options["search_backend"] = None if backend in (Select.NULL, "local") else backend
            a.run_options["ray_address"] = self.query_one("#ray_address", Input).value.strip() or None
            a.options()  # Ray fields without the ray backend: the same one-line error as `autoft run`
        except AutoftError as err:
            self._show_error(err)
            return False
        a.set("force", self.query_one("#force", Checkbox).value)
        a.output = self.query_one("#output", Input).value.strip() or default_output(a.data)
        return True

    def action_reset(self) -> None:
        self._filling = True
        for name in OVERRIDE_FIELDS:
            w = self.query_one(f"#{name}")
            if isinstance(w, Select):
                w.clear()
            else:
                w.value = ""
        self.query_one("#force", Checkbox).value = False
        self._filling = False
        self._changed()

    # -- the advisor (worker) --------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="advise")
    def _advise(self) -> None:
        a = self.answers
        try:
            q = a.question()
        except AutoftError as err:
            self.app.call_from_thread(self._advised, None, err)
            return
        err = None
        try:
            rec = self.services.advise(q, a.hardware)
        except AutoftError as e:
            err = e
            try:  # what the override would cost: the same question, forced
                rec = self.services.advise(dataclasses.replace(q, force=True), a.hardware)
            except AutoftError:
                rec = None
        self.app.call_from_thread(self._advised, rec, err)

    def _advised(self, rec, err: AutoftError | None) -> None:
        self.error = err
        self.answers.recommendation = rec if err is None else None
        d = to_dict(rec)
        self._show_plan(d)
        if err is not None:
            self._show_error(err)
        else:
            self.say("Ctrl+N runs this plan: " + self.answers.command())
        self.refresh_bindings()

    def _show_error(self, err: AutoftError) -> None:
        self.error = err
        fit = self.query_one("#fit", Static)
        fit.update(f"✗ autoft: error: {err}")
        fit.set_classes("bad")
        self.say("fix the flagged setting (or tick Force)", True)
        self.refresh_bindings()

    def _show_plan(self, d: dict) -> None:
        if not d:
            self.query_one("#headline", Static).update("no recommendation")
            return
        m = d.get("model") or {}
        params = m.get("params") if isinstance(m, dict) else None
        lora = d.get("lora") or {}
        lora_s = (f", LoRA r={lora.get('rank', lora.get('r'))} alpha={lora.get('alpha')}"
                  + (f" on {lora.get('target_modules') or lora.get('targets')}" if lora.get("target_modules") or lora.get("targets") else "")
                  if isinstance(lora, dict) and lora else "")
        ckpt = ", gradient checkpointing" if d.get("gradient_checkpointing") else ""
        self.query_one("#headline", Static).update(
            f"[b]{plan_value(d, 'model')}[/b]" + (f" ({fmt_params(params)} parameters)" if params else "")
            + f"\n{d.get('technique')}, batch {d.get('batch_size')} x {d.get('gradient_accumulation_steps')} "
              f"accumulation, {d.get('seq_len')} tokens, {d.get('precision')}{ckpt}{lora_s}")
        for name in OVERRIDE_FIELDS:  # an empty field shows what the advisor chose
            v = plan_value(d, name)
            text = f"advisor: {v}" if v is not None else "advisor decides"
            w = self.query_one(f"#{name}")
            if isinstance(w, Select):
                w.prompt = text
            else:
                w.placeholder = text
        est = d.get("estimate") or {}
        cap = capacity_gib(self.answers.hardware, d)
        peak = float(est.get("peak_gib") or 0.0)
        self.query_one("#membar", MemoryBar).update_estimate(est.get("breakdown_gib") or {}, peak, cap)
        fit = self.query_one("#fit", Static)
        if d.get("fits", peak <= cap):
            fit.update(f"✓ fits: predicted peak {peak:.2f} GiB of {cap:.1f} GiB")
            fit.set_classes("good")
        else:
            fit.update(f"✗ does not fit: predicted peak {peak:.2f} GiB of {cap:.1f} GiB")
            fit.set_classes("bad")
        text, why = speed_text(d.get("speed"), (d.get("question") or {}).get("data_size"))
        speed = self.query_one("#speed", Static)
        speed.update(text)
        speed.tooltip = why or None
        self.query_one("#reasons", Static).update(
            "\n".join(f"[b]{r.get('rule')}[/b] {r.get('because')}" for r in d.get("reasons") or []))
        alt = self.query_one("#alternatives", DataTable)
        alt.clear()
        for x in d.get("alternatives") or []:
            e = x.get("estimate") or {}
            alt.add_row(str(plan_value(x, "model")), str(x.get("technique")), str(x.get("batch_size")),
                        f"{float(e.get('peak_gib') or 0):.2f} GiB", "yes" if x.get("fits", True) else "no")
