"""Progress that tells the truth: notes a trial prints, and bars that work on any output.

- ``notify(message)``: one line a user should see (a cut budget, a skipped stage, a
  learner that never left its initial policy), printed above any bar and kept in the
  trial's ``result.json`` under ``notes`` (``collect_notes``).
- ``bar(total, desc, enabled)``: an inner progress bar. On a terminal it is a ``tqdm`` bar
  whose rate is the average since it started (not a moving average, so the time left does
  not swing with validation pauses); when the output is not a terminal it draws nothing,
  and the run's ``WorkMeter`` prints plain lines instead. Either way it reports how far its
  loop has come to the meter of the trial it runs in.
- ``WorkMeter``: the outer progress of a plan, counted in work, not in trials: stage-1
  layer evaluations (``steps * batch_size * T`` for each of its two predictors) and each
  stage-2 learner's layer budget, a trial's share advancing as its inner loop does. The
  time left is estimated per kind of trial (stage 1, each learner) from the rate measured
  on finished work of that kind, so a slow kind that comes last does not make the
  estimate a guess.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

_notes: list[list[str]] = []
_meter: WorkMeter | None = None


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def notify(message: str) -> None:
    """Print ``[l2s] message`` on stderr (above any bar) and keep it with the running trial."""
    tqdm.write(f"[l2s] {message}", file=sys.stderr)
    if _notes:
        _notes[-1].append(message)


@contextmanager
def collect_notes() -> Iterator[list[str]]:
    """Collect what ``notify`` says inside the block (a trial's notes)."""
    _notes.append([])
    try:
        yield _notes[-1]
    finally:
        _notes.pop()


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _Quiet:
    """A bar that draws nothing (output is not a terminal, or bars are off)."""

    def __init__(self, total: float) -> None:
        self.total, self.n = total, 0.0
        self.postfix = ""

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def close(self) -> None:
        pass


class Bar:
    """An inner progress bar (see the module doc); the interface of ``tqdm`` that the
    training loops use: ``update``, ``set_postfix``, ``close``, ``n``, ``total``."""

    def __init__(self, total: float, desc: str, enabled: bool = True, **kwargs: Any) -> None:
        self.total = float(total)
        self.desc = desc
        if enabled and stderr_is_terminal():
            self._bar: Any = tqdm(
                total=total, desc=desc, leave=False, dynamic_ncols=True, smoothing=0, **kwargs
            )
        else:
            self._bar = _Quiet(total)
        self.meter = _meter if enabled else None
        self._report()

    @property
    def n(self) -> float:
        return float(self._bar.n)

    def _report(self, force: bool = False) -> None:
        """Tell the meter how far the loop is (it redraws at most a few times a second)."""
        if self.meter is not None and self.total > 0:
            self.meter.inner(self.desc, min(1.0, self.n / self.total), self.postfix)

    @property
    def postfix(self) -> str:
        value = getattr(self._bar, "postfix", "") or ""
        return str(value)

    def update(self, n: float = 1) -> None:
        self._bar.update(n)
        self._report()

    def set_postfix(self, **kwargs: Any) -> None:
        self._bar.set_postfix(**kwargs)
        self._report()

    def close(self) -> None:
        self._report()
        self._bar.close()


def bar(total: float, desc: str, enabled: bool = True, **kwargs: Any) -> Bar:
    """An inner progress bar over ``total`` (steps, or layer evaluations)."""
    return Bar(total, desc, enabled, **kwargs)


class WorkMeter:
    """The outer progress of a plan of trials, in layer evaluations (see the module doc).

    ``work`` maps each trial's key to ``(kind, units)``. ``start(key)`` and ``finish(key)``
    bracket a trial; the inner bars report its fraction done in between. On a terminal a
    ``tqdm`` bar shows it; otherwise a plain line is printed every ``every_s`` seconds and
    at each trial's end.
    """

    def __init__(
        self,
        work: dict[str, tuple[str, float]],
        enabled: bool = True,
        log: Callable[[str], None] | None = None,
        every_s: float = 30.0,
        terminal: bool | None = None,
    ) -> None:
        self.work = dict(work)
        self.total = float(sum(u for _, u in self.work.values())) or 1.0
        self.enabled = enabled
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.every_s = every_s
        self.terminal = stderr_is_terminal() if terminal is None else terminal
        self.done_units = 0.0
        self.current: str | None = None
        self.current_fraction = 0.0
        self.inner_desc = self.inner_postfix = ""
        self.started = time.perf_counter()
        self.trial_started = self.started
        self.last_line = self.started
        self.seconds: dict[str, float] = {}
        self.units: dict[str, float] = {}
        self.finished: set[str] = set()
        self._bar: Any = None
        self._refreshed = 0.0
        if enabled and self.terminal:
            self._bar = tqdm(
                total=round(self.total),
                desc="work",
                unit="layer",
                unit_scale=True,
                dynamic_ncols=True,
                smoothing=0,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} layer evals "
                "[{elapsed}, {postfix}]",
            )

    # --- what the runner and the inner bars call ---------------------------------------
    def start(self, key: str) -> None:
        self.current, self.current_fraction, self.inner_desc = key, 0.0, ""
        self.trial_started = time.perf_counter()
        self._show(force=not self.terminal)

    def inner(self, desc: str, fraction: float, postfix: str = "") -> None:
        if self.current is None:
            return
        self.current_fraction = max(self.current_fraction, fraction)
        self.inner_desc, self.inner_postfix = desc, postfix
        self._show()

    @property
    def inner_text(self) -> str:
        if not self.inner_desc:
            return ""
        text = f"{self.inner_desc} {100 * self.current_fraction:.0f}%"
        return text + (f", {self.inner_postfix}" if self.inner_postfix else "")

    def finish(self, key: str, reused: bool = False) -> None:
        kind, units = self.work.get(key, ("", 0.0))
        if key in self.finished:
            return
        self.finished.add(key)
        self.done_units += units
        if not reused and units > 0:
            elapsed = time.perf_counter() - self.trial_started
            self.seconds[kind] = self.seconds.get(kind, 0.0) + elapsed
            self.units[kind] = self.units.get(kind, 0.0) + units
        self.current, self.current_fraction, self.inner_desc = None, 0.0, ""
        self._show(force=not self.terminal, suffix=f"; finished {key}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    # --- figures --------------------------------------------------------------------------
    def done(self) -> float:
        """Layer evaluations' worth of work done, the running trial's share included."""
        current = self.work.get(self.current or "", ("", 0.0))[1] * self.current_fraction
        return self.done_units + current

    def seconds_left(self) -> float | None:
        """Time left from the rates measured per kind (``None`` before any rate exists)."""
        measured = {k: self.seconds[k] / self.units[k] for k in self.units if self.units[k]}
        elapsed = time.perf_counter() - self.started
        overall = elapsed / self.done() if self.done() > 0 else None
        left = 0.0
        for key, (kind, units) in self.work.items():
            if key in self.finished:
                continue
            share = units * (1 - self.current_fraction) if key == self.current else units
            rate = measured.get(kind, overall)
            if rate is None:
                return None
            left += share * rate
        return left

    def line(self) -> str:
        left = self.seconds_left()
        text = (
            f"[l2s] {100 * self.done() / self.total:.0f}% of the work "
            f"({self.done():,.0f} of {self.total:,.0f} layer evaluations); elapsed "
            f"{format_duration(time.perf_counter() - self.started)}"
        )
        text += "" if left is None else f", about {format_duration(left)} left"
        if self.current:
            text += f"; now {self.current}" + (f" ({self.inner_text})" if self.inner_text else "")
        return text

    def _show(self, force: bool = False, suffix: str = "") -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            now = time.monotonic()
            if not force and not suffix and now - self._refreshed < 0.5:
                return
            self._refreshed = now
            self._bar.n = round(self.done())
            left = self.seconds_left()
            post = f"{format_duration(left)} left" if left is not None else "time left: ?"
            if self.current:
                post += f"; {self.current}"
            self._bar.set_postfix_str(post, refresh=False)
            self._bar.refresh()
            return
        now = time.perf_counter()
        if force or now - self.last_line >= self.every_s:
            self.last_line = now
            self.log(self.line() + suffix)


@contextmanager
def metering(meter: WorkMeter | None, key: str) -> Iterator[None]:
    """Run a trial under ``meter`` (inner bars report to it), marking it started."""
    global _meter
    previous = _meter
    _meter = meter
    if meter is not None:
        meter.start(key)
    try:
        yield
    finally:
        _meter = previous


__all__ = ["Bar", "WorkMeter", "bar", "collect_notes", "metering", "notify"]
