"""Step 6: test metrics, where everything was written, and the command that reproduces the run."""
from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, Static

from autoft.tui.screens.base import Step
from autoft.tui.services import to_dict

# Files a run writes (autoft/autotrain/pipeline.py) and what they are, in display order.
OUTPUTS = (("README.md", "model card"), ("report.md", "report"), ("metrics.json", "metrics"),
           ("autoft-run.json", "run settings and command"), ("recommendation.json", "recommendation"),
           ("trials.jsonl", "search trials"), ("adapter_config.json", "PEFT adapter"),
           ("model.safetensors", "model weights"))


def _files(out_dir: str) -> list[tuple[str, str]]:
    root = Path(out_dir)
    found = []
    for name, what in OUTPUTS:
        if (root / name).exists():  # the model is saved at the folder's root
            found.append((what, str(root if what in ("PEFT adapter", "model weights") else root / name)))
    return found


class ResultsScreen(Step):
    STEP = "results"
    HELP = ("The test metrics of the fine-tuned model next to the baseline, where the model, its "
            "card and the report were written, and the `autoft run` command (also saved in "
            "autoft-run.json) that reproduces the run without the TUI.")
    BINDINGS = [Binding("ctrl+n", "next", "Next", show=False)]

    def body(self) -> ComposeResult:
        yield Label("Test metrics", classes="section")
        yield DataTable(id="metrics", cursor_type="row", zebra_stripes=True)
        yield Label("Written to", classes="section")
        yield Static("", id="files")
        yield Label("Reproduce without the TUI", classes="section")
        yield Static("", id="command", classes="command")

    def can_next(self) -> bool:
        return False

    def on_mount(self) -> None:
        a = self.answers
        r = to_dict(a.result)
        out = str(r.get("output_dir") or a.output)
        table = self.query_one("#metrics", DataTable)
        table.add_columns("metric", "fine-tuned", "baseline")
        test, base = r.get("test") or {}, r.get("baseline") or {}
        for k, v in test.items():
            if isinstance(v, (int, float)):
                b = base.get(k)
                table.add_row(k, f"{v:.4f}", f"{b:.4f}" if isinstance(b, (int, float)) else "-")
        secs = [f"{k.replace('_seconds', '')} {r[k]:.0f} s" for k in ("search_seconds", "train_seconds", "seconds")
                if isinstance(r.get(k), (int, float))]
        lines = [f"output folder: [b]{out}[/b]"] + [f"{what}: {p}" for what, p in _files(out)]
        if secs:
            lines.append("time: " + ", ".join(secs))
        # The run's own command (the pipeline's build_command: every non-default option, the
        # seed) when it gave one; else the one the TUI ran.
        cmd = r.get("command") or a.command()
        self.query_one("#files", Static).update("\n".join(lines))
        self.query_one("#command", Static).update(f"$ {cmd}")
        self.say("Esc goes back, Ctrl+Q quits")
