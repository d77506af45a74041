"""Modal dialogs: the help screen and a yes/no confirmation."""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Markdown

GENERAL = """\
autoft walks from data to a trained model in six steps: **Data**, **Task**, **Hardware**,
**Recommendation**, **Run**, **Results**. Every decision is made by the same code as the command
line (`autoft advise`, `autoft run`); the Results screen shows the command that reproduces the run.

Keys: **Ctrl+N** next step, **Esc** back (your answers are kept), **Tab** / **Shift+Tab** move
between fields, **Enter** selects, **F1** or **?** this help, **Ctrl+Q** quit (asks first during
a run). The mouse works too: click fields, rows and buttons.
"""


class HelpScreen(ModalScreen[None]):
    """What the current screen does and every key it has (read from its bindings)."""

    BINDINGS = [Binding("escape,f1,q,question_mark", "close", "Close help")]

    def __init__(self, about) -> None:
        super().__init__()
        self.about = about

    def compose(self) -> ComposeResult:
        title = getattr(self.about, "STEP", "")
        keys = []
        for _, binding, enabled, _tip in self.about.active_bindings.values():
            if binding.show and binding.description:
                keys.append(f"| {binding.key_display or self.app.get_key_display(binding)} | "
                            f"{binding.description}{'' if enabled else ' (not available now)'} |")
        text = GENERAL + (f"\n### This screen: {title}\n\n{getattr(self.about, 'HELP', '')}\n" if title else "")
        if keys:
            text += "\n| key | action |\n|---|---|\n" + "\n".join(keys) + "\n"
        with Vertical(id="help-box"):
            with VerticalScroll():
                yield Markdown(text)
            yield Button("Close (Esc)", id="close", variant="primary")

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A question with Yes (y) and No (n, Esc)."""

    BINDINGS = [Binding("y", "yes", "Yes"), Binding("n,escape", "no", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Label(self.question, id="question")
            with Horizontal(id="confirm-buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed, "#yes")
    def action_yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#no")
    def action_no(self) -> None:
        self.dismiss(False)
