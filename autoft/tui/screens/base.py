"""What every step shares: a title line with the step number, Back/Next keys, the footer."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Label, Static

from autoft.advisor.question import Question
from autoft.tui.screens import STEPS

TITLES = {"data": "Data", "task": "Task, domain, language", "hardware": "Hardware",
          "recommend": "Recommendation", "run": "Run", "results": "Results"}


def help_of(name: str) -> str:
    """A Question field's help text: the same words as the CLI flag's --help."""
    return Question.field_help()[name]["help"].replace("%%", "%")


class Step(Screen):
    """One step. Subclasses set STEP and HELP, compose `body()`, and implement `can_next()`."""

    STEP = "data"
    HELP = ""
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+n", "next", "Next"),
    ]

    @property
    def answers(self):
        return self.app.answers

    @property
    def services(self):
        return self.app.services

    def compose(self) -> ComposeResult:
        yield Static(f"[b]{self.app.TITLE}[/b] - {self.app.SUB_TITLE}", id="app-title")
        n = STEPS.index(self.STEP) + 1
        crumbs = "  ".join(f"[b]{i + 1} {TITLES[s]}[/b]" if s == self.STEP else f"[dim]{i + 1} {TITLES[s]}[/dim]"
                           for i, s in enumerate(STEPS))
        yield Static(crumbs, id="crumbs")
        yield Label(f"Step {n} of {len(STEPS)}: {TITLES[self.STEP]}", id="step-title")
        with VerticalScroll(id="body"):
            yield from self.body()
        yield Static("", id="status")
        yield Footer()

    def body(self) -> ComposeResult:
        yield from ()

    def say(self, text: str, error: bool = False) -> None:
        """The status line above the footer (errors in red, one line, as the CLI prints them)."""
        status = self.query_one("#status", Static)
        status.update(text)
        status.set_class(error, "error")

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "back":
            return self.STEP != "data"  # hidden on the first step
        if action == "next":
            return True if self.can_next() else None  # None: shown dimmed in the footer
        return True

    def can_next(self) -> bool:
        return True

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.save()
            self.app.pop_screen()

    def action_next(self) -> None:
        if not self.can_next():
            return
        self.save()
        nxt = STEPS[STEPS.index(self.STEP) + 1]
        self.app.goto(nxt)

    def save(self) -> None:
        """Write this screen's answers into app.answers (called before Next and Back)."""
