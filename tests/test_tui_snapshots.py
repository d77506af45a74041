"""Snapshots of every screen at a fixed terminal size (pytest-textual-snapshot), over the
deterministic fakes of tests/tui_fakes.py. Update after an intended change with
`pytest tests/test_tui_snapshots.py --snapshot-update` and look at the report's pictures."""
from __future__ import annotations

import pytest

pytest.importorskip("pytest_textual_snapshot")

from textual.widgets import Input  # noqa: E402

from autoft.tui.app import create_app  # noqa: E402
from autoft.tui.screens.dialogs import ConfirmScreen, HelpScreen  # noqa: E402
from autoft.tui.screens.hardware import HardwareScreen  # noqa: E402
from autoft.tui.screens.recommend import RecommendScreen  # noqa: E402
from autoft.tui.screens.results import ResultsScreen  # noqa: E402
from autoft.tui.screens.run import RunScreen  # noqa: E402
from autoft.tui.screens.task import TaskScreen  # noqa: E402
from tui_fakes import FakeRun, fake_services, until  # noqa: E402

SIZE = (110, 36)


@pytest.fixture(autouse=True)
def _fixed_folder(tmp_path, monkeypatch):
    """Relative paths under a fresh folder, so the screens show the same text on every machine."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()


async def _data(pilot, path="data"):
    await until(pilot, lambda: pilot.app.screen.query("#path"))  # the auto-pilot starts early
    pilot.app.screen.query_one("#path", Input).value = path
    await pilot.press("enter")
    await until(pilot, lambda: pilot.app.answers.profile is not None or pilot.app.screen.query_one("#error").render().plain)
    await pilot.pause()


async def _task(pilot):
    await _data(pilot)
    await pilot.press("ctrl+n")
    await until(pilot, lambda: isinstance(pilot.app.screen, TaskScreen))
    await pilot.pause()


async def _hardware(pilot):
    await _task(pilot)
    await pilot.press("ctrl+n")
    await until(pilot, lambda: isinstance(pilot.app.screen, HardwareScreen) and pilot.app.answers.hardware is not None
                and pilot.app.screen.query_one("#gpu-table").row_count == 4)
    await pilot.pause()


async def _recommend(pilot):
    await _hardware(pilot)
    await pilot.press("ctrl+n")
    await until(pilot, lambda: isinstance(pilot.app.screen, RecommendScreen) and pilot.app.answers.recommendation)
    pilot.app.screen.query_one("#output", Input).value = "out"
    await pilot.pause(0.4)
    await until(pilot, lambda: pilot.app.answers.recommendation is not None)
    await pilot.pause()


def test_data_screen(snap_compare):
    assert snap_compare(create_app(fake_services()), terminal_size=SIZE, run_before=_data)


def test_data_screen_error(snap_compare):
    async def bad(pilot):
        await _data(pilot, "no-such-file.csv")

    assert snap_compare(create_app(fake_services()), terminal_size=SIZE, run_before=bad)


def test_task_screen(snap_compare):
    assert snap_compare(create_app(fake_services()), terminal_size=SIZE, run_before=_task)


def test_hardware_screen(snap_compare):
    assert snap_compare(create_app(fake_services()), terminal_size=SIZE, run_before=_hardware)


def test_recommendation_screen(snap_compare):
    assert snap_compare(create_app(fake_services()), terminal_size=SIZE, run_before=_recommend)


def test_recommendation_screen_override_does_not_fit(snap_compare):
    async def too_big(pilot):
        await _recommend(pilot)
        pilot.app.screen.query_one("#batch_size", Input).value = "64"
        await pilot.pause(0.4)
        await until(pilot, lambda: pilot.app.screen.error is not None)
        await pilot.pause()

    assert snap_compare(create_app(fake_services()), terminal_size=SIZE, run_before=too_big)


def test_run_screen(snap_compare):
    fake = FakeRun(hold_at=(2, 0))

    async def running(pilot):
        await _recommend(pilot)
        await pilot.press("ctrl+n")
        await until(pilot, lambda: isinstance(pilot.app.screen, RunScreen) and fake.holding.is_set())
        await until(pilot, lambda: "trial 2" in pilot.app.screen.query_one("#progress").render().plain
                    and pilot.app.screen.query_one("#trials").row_count == 3)
        await pilot.pause(0.2)

    assert snap_compare(create_app(fake_services(run=fake)), terminal_size=SIZE, run_before=running)


def test_run_screen_cancel_confirmation(snap_compare):
    fake = FakeRun(hold_at=(2, 0))

    async def confirm(pilot):
        await _recommend(pilot)
        await pilot.press("ctrl+n")
        await until(pilot, lambda: isinstance(pilot.app.screen, RunScreen) and fake.holding.is_set())
        await until(pilot, lambda: "trial 2" in pilot.app.screen.query_one("#progress").render().plain
                    and pilot.app.screen.query_one("#trials").row_count == 3)
        await pilot.pause(0.2)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
        await pilot.pause()

    assert snap_compare(create_app(fake_services(run=fake)), terminal_size=SIZE, run_before=confirm)


def test_results_screen(snap_compare):
    async def results(pilot):
        await _recommend(pilot)
        await pilot.press("ctrl+n")
        await until(pilot, lambda: isinstance(pilot.app.screen, ResultsScreen))
        await pilot.pause()

    assert snap_compare(create_app(fake_services()), terminal_size=SIZE, run_before=results)


def test_help_screen(snap_compare):
    async def help_(pilot):
        await _recommend(pilot)
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen))
        await pilot.pause()

    assert snap_compare(create_app(fake_services()), terminal_size=SIZE, run_before=help_)
