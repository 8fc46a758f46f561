"""Plain-text tables for the terminal views of ``artiq_client show``."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, a dashed rule under the header; a cell with
    several lines (a pretty-printed dict) continues on the following lines."""
    split = [[cell.split("\n") for cell in row] for row in (header, *rows)]
    widths = [max(len(line) for row in split for line in row[i]) for i in range(len(header))]
    lines = []
    for index, row in enumerate(split):
        for part in range(max(len(cell) for cell in row)):
            cells = [cell[part] if part < len(cell) else "" for cell in row]
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)
