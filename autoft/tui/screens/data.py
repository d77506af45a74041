"""Step 1: pick the data; the data layer loads and profiles it in a worker; errors show in place."""
from __future__ import annotations

import os
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, DirectoryTree, Input, Label, Static

from autoft.errors import AutoftError
from autoft.tui.screens.base import Step
from autoft.tui.services import to_dict
from autoft.tui.widgets import PathSuggester


def profile_view(profile) -> dict:
    """The parts of a DataProfile the screen shows, read from its documented `to_dict()`: rows
    per split, train class counts, token-length percentiles, notes and warnings."""
    d = to_dict(profile)
    counts = d.get("label_counts") or {}
    counts = counts.get("train", {}) if isinstance(counts.get("train"), dict) else counts
    tokens = dict(d.get("token_lengths") or d.get("length_percentiles_tokens") or {})
    if tokens and d.get("lengths_estimated"):
        tokens["source"] = "estimated: " + str(d.get("length_method") or "no tokenizer")
    return {"task": d.get("task"), "rows": d.get("rows") or {}, "counts": counts, "tokens": tokens,
            "warnings": list(d.get("warnings") or []), "notes": list(d.get("notes") or []),
            "language": d.get("language"), "imbalance": d.get("imbalance_ratio")}


class DataScreen(Step):
    STEP = "data"
    HELP = ("Type the path of your data (a CSV, TSV, JSON, JSONL or Parquet file, or a folder with "
            "train/validation/test files) and press Enter, or browse with Ctrl+O. The right arrow "
            "accepts a completion. The profile shows what the advisor will read.")
    BINDINGS = [Binding("ctrl+o", "browse", "Browse"), Binding("ctrl+l", "load", "Load")]

    def body(self) -> ComposeResult:
        yield Label("Data path (file or folder)", classes="field-label")
        with Horizontal(classes="row"):
            yield Input(self.answers.data, placeholder="e.g. ../shared/data/banking77 or train.csv",
                        suggester=PathSuggester(), id="path",
                        tooltip="CSV, TSV, JSON, JSONL, Parquet, a folder of splits, or a saved dataset")
            yield Button("Load", id="load", variant="primary")
            yield Button("Browse", id="browse")
        yield Static("", id="error", classes="error")
        yield Static("", id="summary")
        yield Static("", id="warnings", classes="warning")

    def on_mount(self) -> None:
        self.query_one("#path", Input).focus()
        if self.answers.profile is not None:
            self._show(self.answers.profile)
        elif self.answers.data:  # `autoft tui --data PATH`
            self.action_load()
        self.call_after_refresh(self.app.first_paint)

    def can_next(self) -> bool:
        return self.answers.profile is not None

    # -- picking a path --------------------------------------------------------------------------
    def action_browse(self) -> None:
        # Mounted on first use: the tree's loader worker lives as long as the tree.
        trees = self.query("#tree")
        if not trees:
            tree = DirectoryTree(os.getcwd(), id="tree")
            self.query_one("#body").mount(tree, after=self.query_one("#path").parent)
        else:
            tree = trees.first(DirectoryTree)
            tree.set_class(not tree.has_class("hidden"), "hidden")
        if not tree.has_class("hidden"):
            tree.focus()

    @on(DirectoryTree.FileSelected)
    @on(DirectoryTree.DirectorySelected)
    def _picked(self, event) -> None:
        self.query_one("#path", Input).value = str(event.path)
        if isinstance(event, DirectoryTree.FileSelected) or any(
                (Path(event.path) / f"train{ext}").exists() for ext in (".csv", ".jsonl", ".json", ".tsv", ".parquet")):
            self.query_one("#tree").add_class("hidden")
            self.action_load()

    @on(Input.Submitted, "#path")
    @on(Button.Pressed, "#load")
    def action_load(self) -> None:
        path = self.query_one("#path", Input).value.strip()
        if not path:
            self._error(AutoftError("no data path given", "type the path of a file or folder"))
            return
        if path != self.answers.data or self.answers.profile is None:
            self.answers.data = path
            self.answers.clear_from_data()
        self.query_one("#error", Static).update("")
        self.say(f"loading {path} ...")
        self._load(path)

    @on(Button.Pressed, "#browse")
    def _browse_pressed(self) -> None:
        self.action_browse()

    # -- loading (a worker thread: the screen never freezes) -------------------------------------
    @work(thread=True, exclusive=True, group="load")
    def _load(self, path: str) -> None:
        try:
            bundle = self.services.load_data(path)
            profile = self.services.build_profile(bundle)
        except AutoftError as err:
            self.app.call_from_thread(self._error, err)
            return
        except Exception as err:  # noqa: BLE001  (a bug in the core: say so, keep the app alive)
            self.app.call_from_thread(self._error, AutoftError(f"{type(err).__name__}: {err}",
                                                               "this is a bug in autoft; please report it"))
            return
        self.app.call_from_thread(self._loaded, path, profile)

    def _loaded(self, path: str, profile) -> None:
        if path != self.answers.data:
            return  # the user typed another path meanwhile
        a = self.answers
        a.profile = profile
        qf = profile.to_question_fields() if hasattr(profile, "to_question_fields") else {}
        a.inferred = {k: v for k, v in dict(qf).items() if v is not None}
        self._show(profile)
        self.say(f"loaded {path}: press Ctrl+N for the next step")
        self.refresh_bindings()

    def _error(self, err: AutoftError) -> None:
        # The same one line as the CLI prints (autoft/cli/__init__.py).
        self.query_one("#error", Static).update(f"autoft: error: {err}")
        self.query_one("#summary", Static).update("")
        self.query_one("#warnings", Static).update("")
        for table in self.query("#classes"):
            table.display = False
        self.answers.profile = None
        self.say("")
        self.refresh_bindings()

    def _show(self, profile) -> None:
        v = profile_view(profile)
        lines = []
        if v["task"]:
            lines.append(f"Task: [b]{v['task']}[/b]" + (f"    language: {v['language']}" if v["language"] else ""))
        if v["rows"]:
            lines.append("Rows: " + ", ".join(f"{k} {n:,}" if isinstance(n, int) else f"{k} {n}"
                                              for k, n in v["rows"].items()))
        t = v["tokens"]
        if isinstance(t, dict) and t:
            pct = [f"{k} {t[k]}" for k in ("p50", "p95", "p99", "max") if t.get(k) is not None]
            src = t.get("source") or t.get("method") or t.get("tokenizer")
            lines.append("Token length: " + ", ".join(pct) + " tokens" + (f" ({src})" if src else ""))
        lines += v["notes"]
        if v["imbalance"]:
            lines.append(f"Imbalance (largest/smallest class): {float(v['imbalance']):.1f}x")
        self.query_one("#summary", Static).update("\n".join(lines))
        tables = self.query("#classes")
        if tables:
            table = tables.first(DataTable)
        else:  # mounted on first use: the first paint stays light
            table = DataTable(id="classes", cursor_type="row", zebra_stripes=True)
            self.query_one("#body").mount(table, before=self.query_one("#warnings"))
        table.clear(columns=True)
        if v["counts"]:
            total = sum(c for c in v["counts"].values() if isinstance(c, int)) or 1
            table.add_columns("class", "train rows", "share")
            for label, c in sorted(v["counts"].items(), key=lambda kv: -(kv[1] or 0)):
                table.add_row(str(label), f"{c:,}" if isinstance(c, int) else "-",
                              f"{100 * c / total:.1f}%" if isinstance(c, int) else "-")
            table.display = True
        else:
            table.display = False
        self.query_one("#warnings", Static).update("\n".join(f"⚠ {w}" for w in v["warnings"]))
