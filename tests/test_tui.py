"""The TUI, driven by Textual's Pilot: the questionnaire on real data, overrides, navigation,
cancel and resume, help, quitting, and one code path with `autoft run`.

Flows marked "real" use the real core (data layer, hardware table, advisor, pipeline); the others
use the deterministic fakes of tests/tui_fakes.py, which keep the core's contracts."""
from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual.widgets import Checkbox, DataTable, Input, Select, Static  # noqa: E402

from autoft.tui.app import create_app  # noqa: E402
from autoft.tui.screens.data import DataScreen  # noqa: E402
from autoft.tui.screens.dialogs import ConfirmScreen, HelpScreen  # noqa: E402
from autoft.tui.screens.hardware import HardwareScreen  # noqa: E402
from autoft.tui.screens.recommend import RecommendScreen  # noqa: E402
from autoft.tui.screens.results import ResultsScreen  # noqa: E402
from autoft.tui.screens.run import RunScreen, SearchView  # noqa: E402
from autoft.tui.screens.task import TaskScreen  # noqa: E402
from autoft.tui.services import Answers  # noqa: E402
from tui_fakes import FakeRun, fake_services, until  # noqa: E402

SIZE = (110, 36)
ROOT = Path(__file__).resolve().parents[1]


def _real_core_or_skip() -> None:
    try:
        from autoft.advisor.hardware import gpu_table, plan_hardware  # noqa: F401
        from autoft.advisor.recommend import advise  # noqa: F401
        from autoft.autotrain.data import build_profile, load_data  # noqa: F401
    except ImportError as err:
        pytest.skip(f"the core is not complete yet: {err}")


async def settled(pilot) -> None:
    """After typing into the Recommendation screen: the debounced advisor has answered."""
    await pilot.pause(0.4)
    await until(pilot, lambda: pilot.app.answers.recommendation is not None or pilot.app.screen.error is not None,
                what="the advisor")


def text(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def results_shown(app) -> bool:
    """The Results screen is up and filled (its on_mount ran)."""
    return (isinstance(app.screen, ResultsScreen) and bool(app.screen.query("#command"))
            and text(app, "#command").startswith("$ "))


async def load(pilot, path: str) -> None:
    app = pilot.app
    app.screen.query_one("#path", Input).value = path
    await pilot.press("enter")
    await until(pilot, lambda: app.answers.profile is not None or text(app, "#error"), what="the data")


async def to_recommendation(pilot, path: str, gpu: str | None = None) -> None:
    """Answer steps 1-3 (data, task as inferred, hardware) and wait for the advisor."""
    app = pilot.app
    await load(pilot, path)
    assert app.answers.profile is not None, text(app, "#error")
    await pilot.press("ctrl+n")
    await until(pilot, lambda: isinstance(app.screen, TaskScreen))
    await pilot.press("ctrl+n")
    await until(pilot, lambda: isinstance(app.screen, HardwareScreen) and app.answers.hardware is not None,
                what="hardware plan")
    if gpu:
        table = app.screen.query_one("#gpu-table", DataTable)
        await until(pilot, lambda: table.row_count > 2, what="the GPU table")
        keys = [r.value for r in table.rows]
        table.move_cursor(row=keys.index(gpu))
        table.focus()
        await pilot.press("enter")
        await until(pilot, lambda: app.answers.hardware is not None and app.answers.hardware.gpus
                    and app.answers.get("gpu") == gpu, what="the chosen GPU")
    await pilot.press("ctrl+n")
    await until(pilot, lambda: isinstance(app.screen, RecommendScreen) and (
        app.answers.recommendation is not None or app.screen.error is not None), what="the advisor")


# -- the core stays free of textual ----------------------------------------------------------------

def test_core_never_imports_textual():
    mods = ["autoft.advisor." + p.stem for p in (ROOT / "advisor").glob("*.py") if p.stem != "__init__"]
    mods += ["autoft.autotrain.data", "autoft.tui.services"]
    code = "\n".join(f"import {m}" for m in mods) + (
        "\nimport sys, json\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'textual')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_cli_tui_module_imports_textual_only_inside_run():
    code = ("from autoft.cli import _load\nm = _load('tui')\nimport argparse\np = argparse.ArgumentParser()\n"
            "m.add_arguments(p)\nimport sys\nprint(any(k.split('.')[0] == 'textual' for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_tui_without_a_terminal_is_a_one_line_error():
    out = subprocess.run([sys.executable, "-m", "autoft", "tui"], capture_output=True, text=True, cwd=ROOT,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "autoft: error: autoft tui needs an interactive terminal; run it in a terminal, or use "
        "`autoft advise` / `autoft run` in scripts."]


# -- real core: the questionnaire on real shared data -------------------------------------------

def test_questionnaire_on_real_german_data_reaches_a_german_model(shared_data):
    _real_core_or_skip()
    data = shared_data / "tweet_sentiment_de"
    if not data.is_dir():
        pytest.skip("tweet_sentiment_de not in the shared data")

    async def flow():
        app = create_app()
        async with app.run_test(size=SIZE) as pilot:
            await load(pilot, str(data))
            summary = text(app, "#summary")
            assert "train 1,839" in summary and "validation 324" in summary and "test 870" in summary
            assert "p95" in summary and "tokens" in summary
            classes = app.screen.query_one("#classes", DataTable)
            assert classes.row_count == 3  # negative, neutral, positive
            await pilot.press("ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, TaskScreen))
            # pre-filled from the profile, data size shown
            assert app.screen.query_one("#language", Input).value == "de"
            assert app.screen.query_one("#task", Select).value == "classification"
            assert "1,839 training examples" in text(app, "#size")
            await pilot.press("ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, HardwareScreen) and app.answers.hardware is not None)
            await pilot.press("ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, RecommendScreen) and app.answers.recommendation is not None,
                        what="the recommendation")
            rec = app.answers.recommendation.to_dict()
            assert "de" in rec["model"]["languages"]  # German data gets a model that knows German
            assert rec["model"]["id"] in text(app, "#headline")
            reasons = text(app, "#reasons")
            for r in rec["reasons"]:
                assert r["rule"] in reasons  # every reason shown with its rule id
            assert text(app, "#fit").startswith("✓ fits")
            bar = app.screen.query_one("#membar")
            assert bar.peak == pytest.approx(rec["estimate"]["peak_gib"], rel=1e-6)
            assert set(bar.breakdown) <= set(rec["estimate"]["breakdown_gib"])

    asyncio.run(flow())


def test_invalid_data_shows_the_same_line_as_the_cli(tmp_path):
    _real_core_or_skip()
    bad = tmp_path / "train.csv"
    bad.write_text("sentence,score\nhello,1\n", encoding="utf-8")
    cli = subprocess.run([sys.executable, "-m", "autoft", "advise", "--data", str(bad)], capture_output=True,
                         text=True, cwd=ROOT)
    assert cli.returncode == 2
    cli_line = cli.stderr.strip().splitlines()[-1]
    assert cli_line.startswith("autoft: error: ")

    async def flow():
        app = create_app()
        async with app.run_test(size=SIZE) as pilot:
            await load(pilot, str(bad))
            assert text(app, "#error") == cli_line  # the same one line, in place
            assert app.answers.profile is None
            assert not app.screen.can_next()
            await pilot.press("ctrl+n")  # Next does nothing on bad data
            assert isinstance(app.screen, DataScreen)

    asyncio.run(flow())


def test_batch_size_that_does_not_fit_is_flagged_with_the_nearest_that_does(shared_data):
    _real_core_or_skip()
    data = shared_data / "banking77"
    if not data.is_dir():
        pytest.skip("banking77 not in the shared data")

    async def flow():
        app = create_app()
        async with app.run_test(size=SIZE) as pilot:
            await to_recommendation(pilot, str(data), gpu="T4")
            assert app.screen.error is None and text(app, "#fit").startswith("✓ fits")
            batch = app.screen.query_one("#batch_size", Input)
            batch.value = "4096"
            await until(pilot, lambda: app.screen.error is not None, what="the override to be refused")
            fit = text(app, "#fit")
            assert fit.startswith("✗ autoft: error: ") and "nearest setting that fits" in fit
            assert "--batch-size" in fit  # the nearest setting, as a flag
            assert app.screen.query_one("#fit").has_class("bad")
            bar = app.screen.query_one("#membar")
            assert bar.peak > bar.capacity  # the bar shows the forced estimate, past the GPU
            assert not app.screen.can_next()
            # Force accepts it, as --force does
            app.screen.query_one("#force", Checkbox).value = True
            await until(pilot, lambda: app.answers.recommendation is not None, what="the forced plan")
            assert app.screen.error is None and app.screen.can_next()
            assert text(app, "#fit").startswith("✗ does not fit")
            # back to a size that fits: the estimate follows the typing
            app.screen.query_one("#force", Checkbox).value = False
            batch.value = "2"
            await until(pilot, lambda: app.answers.recommendation is not None
                        and app.answers.recommendation.to_dict()["batch_size"] == 2, what="batch 2")
            assert text(app, "#fit").startswith("✓ fits")

    asyncio.run(flow())


def test_tui_and_autoft_run_make_the_same_plan(shared_data, tmp_path, monkeypatch):
    """One code path: the argv the TUI runs goes through `autoft run`'s parser and the pipeline's
    own question building; the Question and the recommendation come out equal."""
    _real_core_or_skip()
    pipeline = pytest.importorskip("autoft.autotrain.pipeline")
    from autoft.cli.run import run_from_argv
    data = shared_data / "tweet_sentiment_de"
    if not data.is_dir():
        pytest.skip("tweet_sentiment_de not in the shared data")

    async def flow():
        app = create_app()
        async with app.run_test(size=SIZE) as pilot:
            await to_recommendation(pilot, str(data), gpu="T4")
            for name, value in (("technique", "lora"), ("batch_size", "8"), ("lora_rank", "8")):
                w = app.screen.query_one(f"#{name}")
                w.value = value
            app.screen.query_one("#output", Input).value = str(tmp_path / "out")
            await until(pilot, lambda: app.answers.recommendation is not None
                        and app.answers.recommendation.to_dict()["technique"] == "lora", what="the override")
            return app.answers.question(), app.answers.recommendation.to_dict(), app.answers.run_argv(), \
                app.answers.command()

    question, rec, argv, command = asyncio.run(flow())
    assert command == "autoft run " + shlex.join(argv)
    assert "--technique lora" in command and "--batch-size 8" in command and "--gpu T4" in command

    seen = {}
    real_advise = pipeline._advise

    class Stop(Exception):
        pass

    def spy(q):
        seen["question"] = q
        seen["rec"] = real_advise(q)
        raise Stop

    monkeypatch.setattr(pipeline, "_advise", spy)
    with pytest.raises(Stop):
        run_from_argv(shlex.split(command)[2:])
    from autoft.advisor.question import Question

    assert Question(**seen["question"]) == question
    assert seen["rec"] == rec


@pytest.mark.slow
def test_real_tiny_run_cancel_then_resume(shared_data, minilm_path, tmp_path, monkeypatch):
    """The real pipeline through the TUI: MiniLM on a small slice of real German tweets; cancel
    during the search, resume, reach the results; no finished trial is trained twice."""
    _real_core_or_skip()
    pytest.importorskip("autoft.autotrain.pipeline")
    import csv

    import torch

    torch.set_num_threads(2)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = shared_data / "tweet_sentiment_de"
    if not src.is_dir():
        pytest.skip("tweet_sentiment_de not in the shared data")
    data = tmp_path / "tweets"
    data.mkdir()
    for split, n in (("train", 90), ("validation", 30), ("test", 30)):
        with open(src / f"{split}.csv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))[:n]
        with open(data / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(rows)
    out = tmp_path / "out"

    async def flow():
        app = create_app()
        async with app.run_test(size=SIZE) as pilot:
            await to_recommendation(pilot, str(data))
            for name, value in (("model", minilm_path), ("seq_len", "32"), ("batch_size", "8"),
                                ("search_trials", "3"), ("max_steps", "6"), ("output", str(out))):
                app.screen.query_one(f"#{name}", Input).value = value
            await settled(pilot)
            assert app.screen.error is None, app.screen.error
            await pilot.press("ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, RunScreen))
            run = app.screen
            await until(pilot, lambda: run.view.step_line or run.state != "running", timeout=300,
                        what="the first training step")
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: run.state in ("cancelled", "done", "failed"), timeout=300)
            assert run.state == "cancelled", text(app, "#status")
            assert (out / "autoft-run.json").is_file()  # resumable
            await pilot.press("r")
            await until(pilot, lambda: results_shown(app) or run.state == "failed", timeout=600,
                        what="the resumed run")
            assert isinstance(app.screen, ResultsScreen), text(app, "#status")
            metrics = app.screen.query_one("#metrics", DataTable)
            names = [metrics.get_row_at(i)[0] for i in range(metrics.row_count)]
            assert "accuracy" in names and "macro_f1" in names
            assert f"model card: {out}/README.md" in text(app, "#files")
            assert text(app, "#command").startswith("$ autoft run --data ")

    asyncio.run(flow())
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines() if line.strip()]
    keys = [(r["trial"], r["rung"]) for r in records]
    assert len(keys) == len(set(keys)) and keys  # no finished trial trained twice


# -- fakes: navigation, run, cancel, resume, help, quit ------------------------------------------

def test_back_and_forth_keeps_every_answer(tmp_path):
    async def flow():
        app = create_app(fake_services())
        async with app.run_test(size=SIZE) as pilot:
            await load(pilot, str(tmp_path))
            await pilot.press("ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, TaskScreen))
            app.screen.query_one("#domain", Input).value = "legal"
            app.screen.query_one("#language", Input).value = "fr"
            await pilot.press("ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, HardwareScreen))
            table = app.screen.query_one("#gpu-table", DataTable)
            await until(pilot, lambda: table.row_count == 4)
            await pilot.click("#gpu-table", offset=(3, 3))  # the mouse works: the T4 row
            await until(pilot, lambda: app.answers.get("gpu") == "T4" and app.answers.hardware is not None)
            await pilot.press("ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, RecommendScreen) and app.answers.recommendation)
            app.screen.query_one("#batch_size", Input).value = "4"
            await until(pilot, lambda: app.answers.recommendation is not None
                        and app.answers.recommendation["batch_size"] == 4)
            for _ in range(3):  # back to the data screen
                await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, DataScreen))
            assert app.screen.query_one("#path", Input).value == str(tmp_path)
            assert "Rows: train 1,200" in text(app, "#summary")
            await pilot.press("ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, TaskScreen))
            assert app.screen.query_one("#domain", Input).value == "legal"
            assert app.screen.query_one("#language", Input).value == "fr"
            await pilot.press("ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, HardwareScreen) and app.answers.hardware is not None)
            table = app.screen.query_one("#gpu-table", DataTable)
            await until(pilot, lambda: table.row_count == 4)
            assert table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value == "T4"
            assert app.answers.hardware.gpus[0].name == "T4"
            await pilot.press("ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, RecommendScreen) and app.answers.recommendation)
            assert app.screen.query_one("#batch_size", Input).value == "4"
            q = app.answers.question()
            assert (q.domain, q.language, q.gpu, q.batch_size) == ("legal", "fr", "T4", 4)

    asyncio.run(flow())


def test_override_that_does_not_fit_is_flagged_with_fakes(tmp_path):
    async def flow():
        app = create_app(fake_services())
        async with app.run_test(size=SIZE) as pilot:
            await to_recommendation(pilot, str(tmp_path))
            app.screen.query_one("#batch_size", Input).value = "64"
            await until(pilot, lambda: app.screen.error is not None)
            assert text(app, "#fit") == ("✗ autoft: error: batch size 64 will not fit: predicted peak 18.00 GiB "
                                        "of 8.0 GiB; use --batch-size 16 (the nearest that fits) or --force.")
            await pilot.press("ctrl+n")  # refused: stays here
            assert isinstance(app.screen, RecommendScreen)
            await pilot.press("ctrl+r")  # reset the overrides: the advisor's plan again
            await until(pilot, lambda: app.answers.recommendation is not None)
            assert app.screen.query_one("#batch_size", Input).value == ""
            assert app.answers.recommendation["batch_size"] == 16

    asyncio.run(flow())


def test_search_backend_fields_write_the_ray_flags(tmp_path):
    """Search on, Trials at once and Ray address become `--search-backend ray --trials-in-parallel N
    --ray-address ADDR`; Ray fields with the local backend get autoft run's own one-line error."""
    async def flow():
        app = create_app(fake_services())
        async with app.run_test(size=SIZE) as pilot:
            await to_recommendation(pilot, str(tmp_path))
            app.screen.query_one("#trials_in_parallel", Input).value = "2"
            await until(pilot, lambda: app.screen.error is not None)
            assert "--trials-in-parallel need(s) a search backend that runs trials in parallel" in text(app, "#fit")
            app.screen.query_one("#search_backend", Select).value = "ray"
            app.screen.query_one("#ray_address", Input).value = "10.0.0.5:6379"
            await until(pilot, lambda: app.answers.recommendation is not None and app.screen.error is None)
            argv = app.answers.run_argv()
            assert argv[argv.index("--search-backend"):][:6] == ["--search-backend", "ray", "--ray-address",
                                                                 "10.0.0.5:6379", "--trials-in-parallel", "2"]

    asyncio.run(flow())


def test_search_view_shows_the_ray_heartbeat():
    v = SearchView()
    v.feed({"kind": "heartbeat", "phase": "search", "running": [1, 3], "done_steps": 12})
    assert v.step_line == "search on Ray: trials 1, 3 running, 12 steps done"


def test_start_cancel_resume_then_results(tmp_path):
    fake = FakeRun(hold_at=(1, 0))
    out = tmp_path / "out"

    async def flow():
        app = create_app(fake_services(run=fake))
        async with app.run_test(size=SIZE) as pilot:
            await to_recommendation(pilot, str(tmp_path))
            app.screen.query_one("#output", Input).value = str(out)
            app.screen.query_one("#search_trials", Input).value = "3"
            await settled(pilot)
            await pilot.press("ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, RunScreen))
            run = app.screen
            await until(pilot, lambda: fake.holding.is_set(), what="the run to reach trial 1")
            await until(pilot, lambda: "trial 1" in text(app, "#progress"))
            assert "step 6/10" in text(app, "#progress") and "ETA 0m28s" in text(app, "#progress")
            assert app.screen.query_one("#loss").data == [0.5, 1 / 3]  # the current trial only
            table = app.screen.query_one("#trials", DataTable)
            assert table.row_count == 2  # trial 0 finished, trial 1 running
            # cancel asks first; "n" keeps running
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("n")
            await until(pilot, lambda: app.screen is run)
            assert run.state == "running" and not run.cancel_event.is_set()
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: run.state == "cancelled", what="the cancel")
            assert not app.run_active
            assert fake.trained == [(0, 0)]  # trial 0 was persisted before the cancel
            assert "--resume" in text(app, "#status") and str(out) in text(app, "#status")
            # resume: only the folder; finished trials are not trained again
            await pilot.press("r")
            await until(pilot, lambda: results_shown(app), what="the results")
            assert fake.calls[0][:2] == ["--data", str(tmp_path)] and "--search-trials" in fake.calls[0]
            assert fake.calls[1] == ["--resume", str(out)]
            assert fake.trained == [(0, 0), (1, 0), (2, 0), (1, 1)]
            assert "▲" in str(run.query_one("#trials", DataTable).get_row_at(1)[2])  # trial 1 promoted
            metrics = app.screen.query_one("#metrics", DataTable)
            assert [metrics.get_row_at(i)[:2] for i in range(metrics.row_count)] == [
                ["accuracy", "0.8123"], ["macro_f1", "0.7011"]]
            files = text(app, "#files")
            assert f"model card: {out}/README.md" in files and f"search trials: {out}/trials.jsonl" in files
            assert text(app, "#command") == "$ " + app.answers.command()

    asyncio.run(flow())


def test_quitting_during_a_run_asks_first(tmp_path):
    fake = FakeRun(hold_at=(0, 0))

    async def flow():
        app = create_app(fake_services(run=fake))
        async with app.run_test(size=SIZE) as pilot:
            await to_recommendation(pilot, str(tmp_path))
            app.screen.query_one("#output", Input).value = str(tmp_path / "out")
            await settled(pilot)
            await pilot.press("ctrl+n")
            await until(pilot, lambda: fake.holding.is_set())
            run = app.screen
            await pilot.press("ctrl+q")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("escape")  # no
            await until(pilot, lambda: app.screen is run)
            assert app.is_running and run.state == "running"
            await pilot.press("ctrl+q")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: not app.is_running, what="the app to exit")
            assert run.cancel_event.is_set()  # the run was stopped, resumable

    asyncio.run(flow())


def test_quitting_without_a_run_does_not_ask():
    async def flow():
        app = create_app(fake_services())
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+q")
            await until(pilot, lambda: not app.is_running)

    asyncio.run(flow())


def test_help_lists_the_screens_keys(tmp_path):
    async def flow():
        app = create_app(fake_services())
        async with app.run_test(size=SIZE) as pilot:
            await load(pilot, str(tmp_path))
            await pilot.press("f1")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen))
            md = app.screen.query_one("Markdown")
            source = md.source
            assert "This screen: data" in source
            for key, action in (("^o", "Browse"), ("^n", "Next"), ("f1", "Help"), ("^q", "Quit")):
                assert f"| {key} | {action}" in source
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, DataScreen))
            # "?" opens it too where no text field has the focus
            app.screen.query_one("#classes").focus()
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen))
            await pilot.click("#close")  # the mouse closes it
            await until(pilot, lambda: isinstance(app.screen, DataScreen))

    asyncio.run(flow())


def test_every_action_has_a_key_in_the_footer():
    """Keyboard first: every binding the steps and dialogs define has a key and a description
    (the footer shows it) and an action method that exists."""
    from autoft.tui import screens

    classes = [type(screens.make(name)) for name in screens.STEPS] + [HelpScreen, ConfirmScreen, type(create_app())]
    for cls in classes:
        for klass in cls.__mro__:
            if not klass.__module__.startswith("autoft"):
                continue
            for b in klass.__dict__.get("BINDINGS", []):
                assert b.key and b.description, (cls.__name__, b)
                action = b.action.split(".")[-1].split("(")[0]
                assert hasattr(cls, f"action_{action}"), (cls.__name__, b.action)


def test_slow_work_runs_in_workers_and_the_screen_stays_responsive(tmp_path):
    """A data load that takes 1.5 s does not block the event loop: keys are handled meanwhile."""
    started = []

    def slow_load(path):
        started.append(time.monotonic())
        time.sleep(1.5)
        return {"path": path}

    async def flow():
        services = fake_services()
        services.load_data = slow_load
        app = create_app(services)
        async with app.run_test(size=SIZE) as pilot:
            app.screen.query_one("#path", Input).value = str(tmp_path)
            await pilot.press("enter")
            await until(pilot, lambda: started)
            await pilot.press("f1")  # handled while the worker sleeps
            await until(pilot, lambda: isinstance(app.screen, HelpScreen), timeout=1.0)
            assert app.answers.profile is None  # still loading
            await pilot.press("escape")
            await until(pilot, lambda: app.answers.profile is not None)

    asyncio.run(flow())


def test_start_with_data_and_type_a_memory_size(tmp_path):
    """`autoft tui --data PATH` loads at once; a typed memory size plans a GPU of that size."""
    async def flow():
        app = create_app(fake_services(), Answers(data=str(tmp_path)))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.answers.profile is not None, what="the data")
            await pilot.press("ctrl+n", "ctrl+n")
            await until(pilot, lambda: isinstance(app.screen, HardwareScreen) and app.answers.hardware is not None)
            assert text(app, "#plan").startswith("CPU, 2 cores, 8.0 GiB RAM")
            app.screen.query_one("#gpu_memory", Input).value = "24GiB"
            await until(pilot, lambda: app.answers.hardware is not None and app.answers.hardware.kind == "gpu")
            assert text(app, "#plan").startswith("1 x GPU, 24.0 GiB")
            app.screen.query_one("#gpu_memory", Input).value = "lots"
            await until(pilot, lambda: "cannot read the memory size" in text(app, "#status"))
            assert app.answers.hardware is None and not app.screen.can_next()

    asyncio.run(flow())


def test_browse_picks_a_file_and_loads_it(tmp_path, monkeypatch):
    from textual.widgets import DirectoryTree

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.csv").write_text("text,label\nhi,a\n", encoding="utf-8")

    async def flow():
        app = create_app(fake_services())
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.screen.query("#path"))
            await pilot.press("ctrl+o")
            await until(pilot, lambda: app.screen.query("#tree"))
            tree = app.screen.query_one("#tree", DirectoryTree)
            assert Path(tree.path) == tmp_path
            await until(pilot, lambda: tree.has_focus)
            tree.post_message(DirectoryTree.FileSelected(tree.root, tmp_path / "train.csv"))
            await until(pilot, lambda: app.answers.profile is not None, what="the picked file to load")
            assert app.screen.query_one("#path", Input).value == str(tmp_path / "train.csv")
            assert app.answers.data == str(tmp_path / "train.csv")
            assert tree.has_class("hidden")  # the picker closes once a file is chosen

    asyncio.run(flow())


# -- pure parts ------------------------------------------------------------------------------

def test_language_answer_is_written_even_at_its_default():
    a = Answers(data="d", output="o")
    a.inferred = {"language": "de"}
    a.set("language", "en")  # the user says: English, although the profile guessed German
    assert a.run_argv() == ["--data", "d", "--language", "en", "--output", "o"]
    assert a.question().language == "en"


def test_answers_command_round_trips_through_the_cli_flags():
    a = Answers(data="my data/train.csv", output="out dir")
    a.inferred = {"task": "classification", "language": "de", "num_labels": 3, "data_size": 100}
    a.set("language", "de")
    a.set("gpu", "T4")
    a.set("gradient_checkpointing", False)
    a.set("force", True)
    a.set("batch_size", 8)
    a.run_options["search_trials"] = 3
    argv = a.run_argv()
    assert argv == ["--data", "my data/train.csv", "--language", "de", "--gpu", "T4", "--batch-size", "8",
                    "--no-gradient-checkpointing", "--force", "--search-trials", "3", "--output", "out dir"]
    q = a.question()
    assert (q.language, q.gpu, q.batch_size, q.gradient_checkpointing, q.force) == ("de", "T4", 8, False, True)
    assert (q.task, q.num_labels, q.data_size) == ("classification", 3, 100)  # filled from the profile
    assert shlex.split(a.command())[2:] == argv
    assert a.run_argv(resume=True) == ["--resume", "out dir"]


def test_search_view_marks_survivors_and_failures():
    v = SearchView()
    for ev in ({"kind": "rung_start", "rung": 0, "budget_steps": 10},
               {"kind": "trial_end", "trial": 0, "rung": 0, "metric": 0.5, "status": "ok"},
               {"kind": "trial_end", "trial": 1, "rung": 0, "metric": 0.7, "status": "ok"},
               {"kind": "trial_end", "trial": 2, "rung": 0, "metric": None, "status": "failed-nan"},
               {"kind": "rung_end", "rung": 0, "promoted": [1]}):
        v.feed(ev)
    rows = v.rows()
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert rows[1][2].plain == "▲ 0.7000" and "green" in str(rows[1][2].style)
    assert rows[0][2].plain == "0.5000" and "dim" in str(rows[0][2].style)
    assert rows[2][2].plain == "- failed-nan" and "red" in str(rows[2][2].style)


def test_the_app_module_loads_no_heavy_library():
    """The first screen paints fast because the core is imported only when first used."""
    code = ("import autoft.tui.app, sys\nfrom autoft.tui.app import create_app\ncreate_app()\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'datasets', 'pandas', 'pyarrow', 'peft')} | "
            "{m for m in sys.modules if m in ('autoft.autotrain.data', 'autoft.advisor.recommend')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_recommendation_speed_line_says_predicted_or_measured():
    from autoft.tui.screens.recommend import speed_text

    sp = {"examples_per_s": 21.3, "step_s": 2.5, "epoch_s": 180.0, "tokens_assumed": "the data's mean length, 42 tokens",
          "assumption": "40% of the A100's 312 TFLOP/s", "method": "model"}
    text, why = speed_text(sp, 1200)
    assert text == "⏱ predicted 21.3 examples/s, 3.0 min/epoch"
    assert "1,200 examples" in why and "42 tokens" in why and "312 TFLOP/s" in why
    assert speed_text({**sp, "method": "probe", "epoch_s": None})[0] == "⏱ measured 21.3 examples/s"
    assert speed_text(None)[0].startswith("speed not predicted")
