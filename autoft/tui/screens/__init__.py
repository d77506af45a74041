"""The six steps of the app, and its dialogs. `make(name)` builds a step's screen."""
from __future__ import annotations

STEPS = ("data", "task", "hardware", "recommend", "run", "results")


def make(name: str):
    if name == "data":
        from autoft.tui.screens.data import DataScreen as S
    elif name == "task":
        from autoft.tui.screens.task import TaskScreen as S
    elif name == "hardware":
        from autoft.tui.screens.hardware import HardwareScreen as S
    elif name == "recommend":
        from autoft.tui.screens.recommend import RecommendScreen as S
    elif name == "run":
        from autoft.tui.screens.run import RunScreen as S
    elif name == "results":
        from autoft.tui.screens.results import ResultsScreen as S
    else:
        raise KeyError(name)
    return S()
