"""What the console shows while a run works: each start-up phase with its time (data, Ray, the
sites' roll call), then one line per round with the time left; on a terminal also a live line
(tqdm's) that names the round, its stage (training 4/10 sites, evaluating, ...) and the time left.
When the output is not a terminal (CI, a log file) only the plain lines are written.

The time left is the mean time of the rounds this process ran, the first one left out once there
are others (it also starts the actors), times the rounds still to go: what a sweep's grid ETA uses
too (fedcls.studies.sweep).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable

REFRESH_S = 0.5  # how often the live line redraws while a stage waits for sites


def duration(seconds: float) -> str:
    """A short human duration: 42s, 3m05s, 2h07m."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def remaining(round_seconds: list[float], rounds_left: int) -> float | None:
    """Seconds left for `rounds_left` rounds at the pace of `round_seconds` (the first round left
    out once there are others: it also starts actors and builds data); None before any round."""
    if not round_seconds:
        return None
    pace = round_seconds[1:] or round_seconds
    return sum(pace) / len(pace) * rounds_left


class Progress:
    """One run's console (module docstring). `echo` takes each plain line (None: silent);
    `live`: draw the live line (default: when stdout is a terminal); `label` prefixes it (a
    sweep's [k/N] run id); `after(seconds this run has left)` returns text appended to every round
    line and the live line (a sweep's time left for the whole grid)."""

    def __init__(self, rounds: int, echo: Callable[[str], None] | None = print, live: bool | None = None,
                 label: str = "", after: Callable[[float], str] | None = None):
        self.rounds, self.echo, self.label, self.after = rounds, echo, label, after
        self.live = (sys.stdout.isatty() if live is None else live) and echo is not None
        self.round_seconds: list[float] = []
        self.mark = time.perf_counter()  # the end of the last phase
        self._bar = None
        self._round, self._stage, self._total, self._stage_started, self._drawn = 0, "", None, 0.0, 0.0

    def phase(self, name: str, detail: str) -> None:
        """A start-up phase ended: one line with its name, what it did and the seconds it took."""
        now = time.perf_counter()
        self._write(f"  {name:<7} {detail} ({now - self.mark:.1f}s)")
        self.mark = now

    def stage(self, rnd: int, what: str, total: int | None = None) -> None:
        """Round `rnd` began `what` (training, evaluating, ...), waiting for `total` sites (round 0:
        before the first round, e.g. the roll call)."""
        self._round, self._stage, self._total = rnd, what, total
        self._stage_started = time.perf_counter()
        self._draw(0, force=True)

    def replies(self, done: int, total: int | None = None) -> None:
        """`done` of the stage's sites have answered (called as replies arrive)."""
        self._draw(done)

    def round_done(self, rnd: int, seconds: float, line: str) -> None:
        """Round `rnd` ended after `seconds`: its plain line, with the time left."""
        self.round_seconds.append(seconds)
        left = remaining(self.round_seconds, self.rounds - rnd)
        extra = [f"left ~{duration(left)}"] if left and rnd < self.rounds else []
        if self.after and (grid := self.after(left or 0.0)):
            extra.append(grid)
        self._write("  ".join([line, *extra]))
        if self._bar is not None:
            self._bar.update(rnd - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, line: str) -> None:
        if self.echo is None:
            return
        if self._bar is not None:
            self._bar.clear()
            self.echo(line)
            self._bar.refresh()
        else:
            self.echo(line)

    def _draw(self, done: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.live or (not force and now - self._drawn < REFRESH_S):
            return
        self._drawn = now
        sites = f" {done}/{self._total} sites" if self._total else ""
        left = remaining(self.round_seconds, self.rounds - self._round + 1)
        where = f"round {self._round}/{self.rounds}" if self._round else "starting"  # round 0: the roll call
        text = (f"{self.label}{where}: {self._stage}{sites} {now - self._stage_started:.0f}s"
                + (f", ~{duration(left)} left" if left else ""))
        if self.after and (grid := self.after(left or 0.0)):
            text += f"; {grid}"
        if self._bar is None:
            from tqdm import tqdm  # the live line: tqdm's, fitted to the terminal's width

            size = shutil.get_terminal_size((100, 24))  # a terminal of unknown (0x0) size: 100x24
            self._bar = tqdm(total=self.rounds, initial=max(self._round - 1, 0), file=sys.stdout, leave=False,
                             bar_format="{desc} |{bar:10}| {n_fmt}/{total_fmt} rounds", ncols=size.columns,
                             nrows=size.lines, desc=text)
        else:
            self._bar.set_description_str(text)
