"""The training console: a live progress bar (or plain lines) on the driver, fed by rank 0's progress events.

Rank 0 writes one short JSON line per event to its stdout (``[rayseg.progress] {...}``). Ray's log monitor
forwards worker stdout to the driver on every node, for a local run and for ``ray job submit`` alike, so the
events need no extra actor or shared file. On the driver, :class:`TrainingConsole` takes the event lines out
of Ray's forwarded output before Ray prints them and renders them: a tqdm bar when stdout is a terminal, a
plain ``Iter [N/M] …`` line every ``log_config.interval`` otherwise (CI, ``ray job logs``). What the Ray
processes write to stderr (Ray Train's and Ray Data's own logs, C++ core-worker messages, the tracebacks of a
failure that the driver reports as one ``error:`` line) and the raylet's notes go to
``WORK_DIR/ray_workers.log`` instead; the workers' other stdout (a user's ``print``) still reaches the console.

``RAYSEG_VERBOSE=1`` (``jobs/train.py --verbose``) shows everything Ray prints, with plain progress lines.
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import os
import shutil
import sys
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterator, Optional, TextIO, Tuple

VERBOSE_ENV = "RAYSEG_VERBOSE"
EVENT_PREFIX = "[rayseg.progress] "
WORKER_STDERR_LOG = "ray_workers.log"


def verbose_requested(flag: Optional[bool] = None) -> bool:
    """``flag`` when given, else whether ``RAYSEG_VERBOSE`` is set to something other than ``0``/empty."""
    if flag is not None:
        return flag
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_driver_logs() -> None:
    """Silence the driver-side lines that tell a user nothing they can act on.

    Ray's notice that a new local instance uses token authentication (the *disabled* warning, a real
    security concern, stays) and MLflow's note that it creates the tables of a new SQLite store. For entry
    scripts; a library caller keeps its own logging configuration.
    """
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropMessage) for f in auth.filters):
        auth.addFilter(_DropMessage("Token authentication is enabled for this Ray cluster"))
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


def encode_event(**fields: Any) -> str:
    """One progress event as the line rank 0 writes to stdout."""
    return EVENT_PREFIX + json.dumps(fields, separators=(",", ":"), default=float)  # numpy/torch scalars


def decode_event(line: str) -> Optional[Dict[str, Any]]:
    """The event in a forwarded stdout line, or None for any other line (or a garbled event)."""
    start = line.find(EVENT_PREFIX)  # Ray may prepend an ANSI colour code or a prefix
    if start < 0:
        return None
    try:
        event = json.loads(line[start + len(EVENT_PREFIX):])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def format_duration(seconds: Optional[float]) -> str:
    """``H:MM:SS``; ``-:--:--`` while unknown."""
    if seconds is None:
        return "-:--:--"
    seconds = int(max(0.0, seconds) + 0.5)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressEmitter:
    """Rank 0's side: iterations → progress events on stdout, at most one every ``min_interval_s``.

    The first iteration after the worker group starts carries the start-up (Ray Data's first batch, CUDA
    and allocator warm-up) and is left out of the timed iterations; so is everything between iterations
    (validation, checkpoints, reports), since only the step's own time is passed in. An event carries the
    timed iterations since the previous one (``k``) and their summed seconds (``dt``), so the driver's
    average is exact however many iterations an event covers.
    """

    def __init__(self, enabled: bool, min_interval_s: float = 0.5, write: Optional[Callable[[str], None]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.enabled = enabled
        self.min_interval_s = min_interval_s
        self._write = write or _stdout_line
        self._clock = clock
        self._started = False
        self._steps = 0
        self._seconds = 0.0
        self._last_emit: Optional[float] = None

    def iteration(self, done: int, seconds: float, force: bool = False, **fields: Any) -> None:
        """Account one finished iteration (``done`` counts from 1) that took ``seconds``; emit if due."""
        if not self.enabled:
            return
        if self._started:
            self._steps += 1
            self._seconds += seconds
        self._started = True
        now = self._clock()
        if force or self._last_emit is None or now - self._last_emit >= self.min_interval_s:
            self.event(e="it", i=done, k=self._steps, dt=round(self._seconds, 6), **fields)
            self._steps, self._seconds, self._last_emit = 0, 0.0, now

    def event(self, **fields: Any) -> None:
        """Emit one event now (validation results, a message, the end of training)."""
        if self.enabled:
            self._write(encode_event(**fields))


def _stdout_line(line: str) -> None:
    # sys.stdout.write, not print: Ray Train patches print in workers to tee it into its logger.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class ProgressState:
    """Where training stands, from the events: iteration, steady-state speed, eta, last loss and mIoU.

    Speed is the mean over the last ``window`` timed iterations (start-up and validation excluded, see
    :class:`ProgressEmitter`), so the first eta is not inflated by start-up and later ones follow the
    current speed.
    """

    def __init__(self, max_iters: int, start_iter: int = 0, global_batch: int = 1, window: int = 50,
                 max_workers: Optional[int] = None):
        self.max_iters = max_iters
        self.max_workers = max_workers  # elastic runs: the line shows ``workers: W/MAX``
        self.workers: Optional[int] = None
        self.iter = start_iter
        self.global_batch = global_batch
        self.window = window
        self.loss: Optional[float] = None
        self.miou: Optional[float] = None
        self.finished = False
        self._timed: Deque[Tuple[int, float]] = collections.deque()
        self._timed_steps = 0

    def record(self, event: Dict[str, Any]) -> None:
        kind = event.get("e", "it")
        if kind == "it":
            self.iter = int(event.get("i", self.iter))
            steps, seconds = int(event.get("k", 0)), float(event.get("dt", 0.0))
            if steps > 0:
                self._timed.append((steps, seconds))
                self._timed_steps += steps
                while len(self._timed) > 1 and self._timed_steps - self._timed[0][0] >= self.window:
                    self._timed_steps -= self._timed.popleft()[0]
            if event.get("loss") is not None:
                self.loss = float(event["loss"])
            if event.get("w") is not None:
                self.workers = int(event["w"])
        elif kind == "val":
            miou = event.get("mIoU")
            if miou is not None and miou == miou:  # NaN when no class was present
                self.miou = float(miou)
        elif kind == "end":
            self.finished = True

    @property
    def sec_per_iter(self) -> Optional[float]:
        """Mean seconds per timed iteration over the window; None before the first timed iteration."""
        if not self._timed_steps:
            return None
        return sum(s for _, s in self._timed) / self._timed_steps

    @property
    def img_per_sec(self) -> Optional[float]:
        spi = self.sec_per_iter
        return self.global_batch / spi if spi else None

    @property
    def eta_seconds(self) -> Optional[float]:
        spi = self.sec_per_iter
        return None if spi is None else spi * max(0, self.max_iters - self.iter)

    def summary(self) -> str:
        """``loss: …, 12.3 img/s, eta: 0:01:02, mIoU: 19.51`` (the parts known so far)."""
        parts = []
        if self.loss is not None:
            parts.append(f"loss: {self.loss:.4f}")
        ips = self.img_per_sec
        parts.append(f"{ips:.1f} img/s" if ips is not None else "-- img/s")
        parts.append(f"eta: {format_duration(self.eta_seconds)}")
        if self.miou is not None:
            parts.append(f"mIoU: {self.miou:.2f}")
        if self.max_workers is not None and self.workers is not None:
            parts.append(f"workers: {self.workers}/{self.max_workers}")
        return ", ".join(parts)

    def line(self) -> str:
        """The plain progress line: ``Iter [N/M]  loss: …, img/s, eta: …, mIoU: …``."""
        return f"Iter [{self.iter}/{self.max_iters}]  {self.summary()}"


class _Display:
    """Renders events: a tqdm bar on a terminal (``live``), else one plain line every ``log`` event."""

    def __init__(self, state: ProgressState, stream: TextIO, live: bool):
        self.state = state
        self.stream = stream
        self.bar = None
        if live:
            from tqdm.auto import tqdm

            # A terminal that reports no size (a pty under `script`, some IDE consoles) reads as 0×0, and
            # tqdm draws nothing for a bar outside a screen 0 rows high.
            fallback = shutil.get_terminal_size((100, 24))
            width = {"dynamic_ncols": True} if _terminal_columns(stream) > 0 else \
                {"ncols": fallback.columns, "nrows": fallback.lines}
            self.bar = tqdm(total=state.max_iters, initial=state.iter, file=stream, postfix="starting",
                            bar_format="Iter {n}/{total}{postfix} |{bar}| [{elapsed}]", **width)

    def handle(self, event: Dict[str, Any]) -> None:
        self.state.record(event)
        kind = event.get("e", "it")
        if kind == "msg":
            self.write(str(event.get("text", "")))
        elif kind == "val":
            self.write(str(event.get("line", "")))
            self._refresh()
        elif kind == "it":
            if self.bar is not None:
                self._refresh()
            elif event.get("log"):
                self.write(self.state.line())

    def _refresh(self) -> None:
        if self.bar is not None:
            self.bar.n = self.state.iter
            self.bar.set_postfix_str(self.state.summary(), refresh=False)
            self.bar.refresh()

    def write(self, line: str) -> None:
        """A permanent line (above the bar when there is one)."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    @contextlib.contextmanager
    def external(self) -> Iterator[None]:
        """Clear the bar while someone else writes to the console, then draw it again."""
        if self.bar is None:
            yield
            return
        with self.bar.external_write_mode(file=self.stream):
            yield

    def close(self) -> None:
        if self.bar is not None:
            self._refresh()
            self.bar.close()


class TrainingConsole:
    """Context manager around ``trainer.fit()``: progress display and routing of Ray's forwarded output.

    ``events`` tells the workers whether to send progress events (True when Ray's log forwarding could be
    hooked); without it they print their MMSeg-style lines themselves. Not verbose, the Ray processes'
    stderr goes to ``log_file``; verbose, everything Ray prints reaches the console unchanged.
    """

    def __init__(self, max_iters: int, start_iter: int, global_batch: int, log_file: str,
                 verbose: Optional[bool] = None, stream: Optional[TextIO] = None, live: Optional[bool] = None,
                 max_workers: Optional[int] = None):
        self.verbose = verbose_requested(verbose)
        self.stream = stream or sys.stdout
        if live is None:
            live = not self.verbose and _isatty(self.stream)
        self.live = live
        self.log_file = log_file
        self.state = ProgressState(max_iters, start_iter, global_batch, max_workers=max_workers)
        self._display: Optional[_Display] = None
        self._dispatcher = _ray_stdstream_dispatcher()
        self._saved = None
        self._ended = threading.Event()
        self.events = self._dispatcher is not None

    def __enter__(self) -> "TrainingConsole":
        self._display = _Display(self.state, self.stream, self.live)
        if self._dispatcher is not None:
            with self._dispatcher._lock:
                self._saved = list(self._dispatcher.handlers)
                self._dispatcher.handlers = [(name, self._wrap(fn) if name == "ray_print_logs" else fn)
                                             for name, fn in self._saved]
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Ray's log monitor delivers the workers' last lines a moment after fit() returns.
        if exc_type is None and self.events:
            self._ended.wait(timeout=5)
        if self._dispatcher is not None and self._saved is not None:
            with self._dispatcher._lock:
                self._dispatcher.handlers = self._saved
        if self._display is not None:
            self._display.close()

    def handle_lines(self, data: Dict[str, Any], forward: Callable[[Dict[str, Any]], Any]) -> None:
        """Route one batch of forwarded lines: events to the display, stderr to the file, the rest on."""
        lines = data.get("lines") or []
        if data.get("is_err"):
            rest = list(lines)
        else:
            rest = []
            for line in lines:
                event = decode_event(line)
                if event is None:
                    rest.append(line)
                    continue
                if self._display is not None:
                    self._display.handle(event)
                if event.get("e") == "end":
                    self._ended.set()
        if not rest:
            return
        # The raylet's own lines (worker start-up pressure, memory notes) are tuning hints for Ray, not
        # for the person training; the autoscaler's (a request no node can fit) stay on the console.
        if (data.get("is_err") or data.get("pid") == "raylet") and not self.verbose:
            who = data.get("actor_name") or data.get("task_name")
            prefix = f"({who} pid={data.get('pid')})" if who else f"(pid={data.get('pid')})"
            with open(self.log_file, "a") as f:
                for line in rest:
                    f.write(f"{prefix} {line}\n")
            return
        display = self._display
        with display.external() if display is not None else contextlib.nullcontext():
            forward(dict(data, lines=rest))

    def _wrap(self, forward):
        def handler(data):
            self.handle_lines(data, forward)
        return handler


def _terminal_columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _ray_stdstream_dispatcher():
    """Ray's dispatcher of forwarded worker output (a private API), if it is there and this driver prints
    the workers' output (``log_to_driver``); else None, and the workers print their own progress lines."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        names = [name for name, _ in dispatcher.handlers]
        dispatcher._lock  # noqa: B018 - the swap below holds it
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    return dispatcher if "ray_print_logs" in names else None
