"""The autoft Textual app: six screens from data to a trained model, over the same core as the CLI.

    from autoft.tui.app import create_app
    create_app().run()                      # the real core
    create_app(Services(advise=fake, ...))  # tests

Screens are pushed in order (Data -> Task -> Hardware -> Recommendation -> Run -> Results) and
popped by Back; all answers live in `app.answers` (one `Answers` object), so nothing is lost.
"""
from __future__ import annotations

import os
import time

from textual.app import App
from textual.binding import Binding

from autoft.tui.services import Answers, Services

# Benchmark hook (benchmarks/bench_tui_startup.py): when set, the first screen writes the wall
# clock time of its first paint to this file (and the app exits if AUTOFT_TUI_EXIT_AFTER_PAINT=1).
PAINT_ENV = "AUTOFT_TUI_PAINTED"


class AutoftApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "autoft"
    SUB_TITLE = "what to fine-tune, how, and whether it fits"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("f1", "help", "Help"),
        Binding("question_mark", "help", "Help", show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, services: Services | None = None, answers: Answers | None = None) -> None:
        super().__init__()
        self.services = services or Services()
        self.answers = answers or Answers()
        self.run_active = False  # a training run is in progress (quitting asks first)

    def get_default_screen(self):
        # The first step is the base screen (nothing else is styled before the first paint).
        from autoft.tui.screens.data import DataScreen

        return DataScreen()

    # -- navigation ------------------------------------------------------------------------------
    def goto(self, name: str) -> None:
        """Push the named step's screen (a fresh one: it reads its values from `answers`)."""
        from autoft.tui import screens

        self.push_screen(screens.make(name))

    _paint_armed = False

    def first_paint(self) -> None:
        """Called by the first screen after its first refresh: the next display is its paint."""
        self._paint_armed = bool(os.environ.get(PAINT_ENV))

    def _display(self, screen, renderable) -> None:
        # Textual writes a frame to the terminal here; the benchmark hook stamps the first one
        # the first screen wrote (a call with nothing to write does not count).
        super()._display(screen, renderable)
        if self._paint_armed and renderable is not None and not self._batch_count:
            self._paint_armed = False
            with open(os.environ[PAINT_ENV], "w", encoding="utf-8") as f:
                f.write(repr(time.time()))
            if os.environ.get("AUTOFT_TUI_EXIT_AFTER_PAINT") == "1":
                self.exit()

    # -- actions ---------------------------------------------------------------------------------
    def action_help(self) -> None:
        from autoft.tui.screens.dialogs import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    async def action_quit(self) -> None:
        if not self.run_active:
            self.exit()
            return
        from autoft.tui.screens.dialogs import ConfirmScreen

        def answer(yes: bool | None) -> None:
            if yes:
                run_screen = self._run_screen()
                if run_screen is not None:
                    run_screen.cancel_run()
                self.exit()

        self.push_screen(ConfirmScreen("A run is in progress. Stop it and quit? The finished trials "
                                       "are kept: `autoft run --resume` continues it."), answer)

    def _run_screen(self):
        from autoft.tui.screens.run import RunScreen

        for s in self.screen_stack:
            if isinstance(s, RunScreen):
                return s
        return None


def create_app(services: Services | None = None, answers: Answers | None = None) -> AutoftApp:
    """The app over the real core (default) or over the given services (tests)."""
    return AutoftApp(services, answers)
