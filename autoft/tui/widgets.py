"""Small widgets of the TUI: the memory bar, a path suggester, and a labelled field."""
from __future__ import annotations

import os
from pathlib import Path

from rich.text import Text
from textual.suggester import Suggester
from textual.widget import Widget

# One colour per estimator term, in a stable order (others get the spare colours).
TERM_COLOURS = {
    "weights": "dodger_blue1", "gradients": "dark_orange", "optimizer": "orchid",
    "activations": "green3", "adapter": "yellow3", "lora": "yellow3", "logits": "cyan3",
    "buffers": "grey62", "overhead": "grey50", "cuda_context": "grey42",
}
SPARE = ("light_slate_blue", "salmon1", "khaki3", "aquamarine3", "plum2")


def term_colour(term: str, i: int) -> str:
    for key, colour in TERM_COLOURS.items():
        if key in term:
            return colour
    return SPARE[i % len(SPARE)]


class MemoryBar(Widget):
    """The estimated peak against the GPU's memory, one coloured segment per term, with a legend.

    `update_estimate(breakdown_gib, peak_gib, capacity_gib)`; the bar's full width is the larger of
    the peak and the capacity, and a `|` marks the capacity."""

    DEFAULT_CSS = "MemoryBar { height: auto; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.breakdown: dict[str, float] = {}
        self.peak = 0.0
        self.capacity = 0.0

    def update_estimate(self, breakdown_gib: dict[str, float], peak_gib: float, capacity_gib: float) -> None:
        self.breakdown = {k: float(v) for k, v in breakdown_gib.items() if v}
        self.peak, self.capacity = float(peak_gib), float(capacity_gib)
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        return 1 + max(1, len(self._legend_lines(width)))

    def _legend_lines(self, width: int) -> list[Text]:
        lines, line = [], Text()
        for i, (term, v) in enumerate(self.breakdown.items()):
            item = Text.assemble(("■ ", term_colour(term, i)), f"{term} {v:.2f} GiB  ")
            if line.cell_len + item.cell_len > width and line.cell_len:
                lines.append(line)
                line = Text()
            line.append_text(item)
        if line.cell_len:
            lines.append(line)
        return lines

    def render(self) -> Text:
        width = max(10, self.size.width - 2)
        if not self.breakdown:
            return Text("no estimate yet", style="dim")
        scale = max(self.peak, self.capacity, 1e-9)
        bar = Text()
        cap_at = int(round(self.capacity / scale * width)) if self.capacity else None
        cells: list[tuple[str, str]] = []
        for i, (term, v) in enumerate(self.breakdown.items()):
            n = int(round(v / scale * width))
            cells += [("█", term_colour(term, i))] * n
        cells = cells[:width] + [("░", "grey35")] * max(0, width - len(cells))
        for j, (ch, style) in enumerate(cells):
            if cap_at is not None and j == min(cap_at, width - 1) and cap_at < width:
                bar.append("|", style="bold red" if self.peak > self.capacity else "bold white")
            else:
                bar.append(ch, style=style)
        out = Text()
        out.append_text(bar)
        out.append("\n")
        out.append_text(Text("\n").join(self._legend_lines(width)))
        return out


class PathSuggester(Suggester):
    """Completes file-system paths as you type (accept with the right arrow)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        path = Path(os.path.expanduser(value))
        folder, stem = (path, "") if value.endswith(os.sep) else (path.parent, path.name)
        try:
            names = sorted(p.name + (os.sep if p.is_dir() else "") for p in folder.iterdir()
                           if p.name.startswith(stem) and not p.name.startswith("."))
        except OSError:
            return None
        if not names:
            return None
        return value + names[0][len(stem):]
