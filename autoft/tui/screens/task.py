"""Step 2: task, domain, language, pre-filled from the data profile and editable."""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.suggester import SuggestFromList
from textual.containers import Vertical
from textual.widgets import Input, Label, Select, Static

from autoft.advisor.question import TASKS
from autoft.tui.screens.base import Step, help_of

DOMAINS = ("general", "biomedical", "scientific", "legal", "finance", "code", "news", "social-media",
           "customer-support", "reviews")


class TaskScreen(Step):
    STEP = "task"
    HELP = ("Check what the data profile inferred and correct it: the task family, the subject area "
            "and the language steer the model choice. Leave a value as it is to keep the inferred one.")

    def body(self) -> ComposeResult:
        a = self.answers
        yield Static("", id="size")
        yield Label("Task", classes="field-label")
        yield Select([(t, t) for t in TASKS], value=a.get("task") or Select.NULL, allow_blank=True,
                     prompt="infer from the data", id="task", tooltip=help_of("task"))
        yield Static(help_of("task"), classes="help")
        yield Label("Domain", classes="field-label")
        yield Input(a.get("domain") or "", id="domain", placeholder="general",
                    suggester=SuggestFromList(DOMAINS), tooltip=help_of("domain"))
        yield Static(help_of("domain"), classes="help")
        yield Label("Language", classes="field-label")
        yield Input(a.get("language") or "", id="language", placeholder="en", max_length=8,
                    tooltip=help_of("language"))
        yield Static(help_of("language"), classes="help")
        # translation only: the direction (pre-filled from a translation data set's columns)
        with Vertical(id="pair"):
            for name, label in (("source_lang", "Source language"), ("target_lang", "Target language")):
                yield Label(label, classes="field-label")
                yield Input(a.get(name) or "", id=name, placeholder="en" if name == "source_lang" else "de",
                            max_length=8, tooltip=help_of(name))
                yield Static(help_of(name), classes="help")

    def on_mount(self) -> None:
        a = self.answers
        n = a.get("data_size")
        rows = f"{n:,} training examples" if isinstance(n, int) else "unknown size"
        labels = a.get("num_labels")
        p95 = a.get("seq_len_p95")
        extra = (f", {labels} classes" if labels else "") + (f", 95% of examples within {p95} tokens" if p95 else "")
        self.query_one("#size", Static).update(f"Data: [b]{rows}[/b]{extra}  ({a.data})")
        self.query_one("#domain", Input).focus()
        self._show_pair()

    def _show_pair(self) -> None:
        self.query_one("#pair").display = self.query_one("#task", Select).value == "translation"

    @on(Select.Changed)
    @on(Input.Changed)
    def _changed(self) -> None:
        self.save()
        self._show_pair()

    def save(self) -> None:
        a = self.answers
        task = self.query_one("#task", Select).value
        a.set("task", None if task is Select.NULL else task)
        a.set("domain", self.query_one("#domain", Input).value.strip().lower() or "general")
        a.set("language", self.query_one("#language", Input).value.strip().lower() or "en")
        for name in ("source_lang", "target_lang"):
            a.set(name, self.query_one("#" + name, Input).value.strip().lower() or None)
        a.recommendation = None
