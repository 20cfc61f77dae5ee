"""Progress bars for every loop that can take minutes, readable in a terminal and in a rule's log.

In a terminal tqdm redraws one line. Snakemake sends a job's stderr to its log file, where those
redraws would pile up as carriage returns on one line: there each update is its own line, at most
every 30 s, so rate and ETA stay readable (`tail -f results/logs/...`) without flooding the file.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class _Lines:
    """A file for tqdm that turns each redraw into one line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip("\n")
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(
    iterable=None, desc: str | None = None, total: int | None = None, unit: str = "it", disable: bool = False, **kwargs
) -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        disable=disable,
        dynamic_ncols=interactive,
        mininterval=0.5 if interactive else 30.0,
        file=sys.stderr if interactive else _Lines(sys.stderr),
        ascii=None if interactive else True,
        **kwargs,
    )
