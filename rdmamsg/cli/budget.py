"""How long a bench test runs (a count or a duration), and the progress bar."""
from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar on stderr, drawn at most 10 times a second;
    silent unless ``enabled`` (by default: stderr is a terminal)."""

    def __init__(self, steps: int, enabled: bool | None = None, out=None) -> None:
        self.out = out or sys.stderr
        self.enabled = self.out.isatty() if enabled is None else enabled
        self.steps = steps
        self.step = 0
        self.label = ""
        self._drawn = 0.0

    def next(self, label: str) -> None:
        self.step += 1
        self.label = label
        self.show(0.0, force=True)

    def show(self, fraction: float, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        done = (self.step - 1 + min(fraction, 1.0)) / max(self.steps, 1)
        bar = "#" * int(done * 30)
        print(f"\r[{bar:<30}] {self.step}/{self.steps} {self.label:<28} {fraction:4.0%}",
              end="", file=self.out, flush=True)

    def finish(self) -> None:
        if self.enabled:
            print("\r" + " " * 78 + "\r", end="", file=self.out, flush=True)


class Budget:
    """Run for ``iters`` units of work, or else for ``duration`` seconds."""

    def __init__(self, iters: int | None, duration: float | None,
                 progress: Progress | None = None) -> None:
        if (iters is None) == (duration is None):
            raise ValueError("give exactly one of iters and duration")
        self.iters, self.duration, self.progress = iters, duration, progress
        self.t0 = time.perf_counter()

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def more(self, done: int) -> bool:
        """Whether to go on after ``done`` units."""
        if self.iters is not None:
            if self.progress is not None and done & 255 == 0:
                self.progress.show(done / self.iters)
            return done < self.iters
        spent = time.perf_counter() - self.t0
        if self.progress is not None:
            self.progress.show(spent / self.duration)
        return spent < self.duration
