"""What training does with a sample it cannot use: ``data.on_bad_sample`` (``error`` | ``skip``) and its cap.

A bad sample is one whose reading, decoding or checking raises a ``DataError``: an unreadable or truncated
image, a mask whose size differs from its image's, a label value outside the classes. With ``error`` (the
default, MMSegmentation's behaviour) the first one stops training with that error. With ``skip`` the decode
actors drop it and report it to one :class:`BadSampleLedger` per run, a small Ray actor the driver starts.
The ledger counts each bad file once for the whole run (every decode actor, the training and validation
streams, every epoch), prints one line naming it, and says when the run must stop instead:

- more than ``data.max_bad_samples`` distinct bad samples;
- more than half of a split bad: that is a wrong dataset (or config), not a few damaged files, and it bounds
  how many extra rows the training stream needs (:meth:`BadSamplePolicy.stream_rows`).

Only ``DataError`` counts as a bad sample: any other exception is a bug and still stops the run.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Dict, Optional, Set

from rayseg.errors import DataError

MODES = ("error", "skip")
DEFAULT_MODE = "error"
# A cap that lets a real dataset with a handful of damaged files train through, while a dataset that is
# wrong as a whole (a bad label_map, masks of another size) still stops early.
DEFAULT_MAX_BAD_SAMPLES = 100


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _describe(path: str, reason: str) -> str:
    """The reason, which names the file at fault (the image or the mask), and the sample's image if it does not."""
    return reason if path in reason else f"{reason} (the sample of image {path})"


class BadSampleLedger:
    """A Ray actor (one per training run, owned by the driver) that the decode actors report bad samples to.

    Keyed by the sample's image path, so a sample met again in a later epoch, by another actor or after a
    worker-group restart is neither counted nor printed again. ``report`` returns the message of the
    ``DataError`` the reporting actor must raise when the run has to stop, else None.
    """

    def __init__(self, max_bad: int):
        self.max_bad = max_bad
        self.reasons: Dict[str, str] = {}
        self.by_split: Dict[str, Set[str]] = {}

    def report(self, split: str, num_samples: int, path: str, reason: str) -> Optional[str]:
        """Record that ``path`` (a sample of ``split``, which has ``num_samples``) is bad because of ``reason``."""
        new = path not in self.reasons
        in_split = self.by_split.setdefault(split, set())
        new_in_split = path not in in_split
        in_split.add(path)
        if new:
            self.reasons[path] = reason
        if len(self.reasons) > self.max_bad:
            return (f"more than {_plural(self.max_bad, 'bad sample')} (data.max_bad_samples: {self.max_bad}, "
                    f"data.on_bad_sample: skip); the last one: {_describe(path, reason)}")
        if new_in_split and len(in_split) > num_samples // 2:
            return (f"{len(in_split)} of the {num_samples} samples of {split} are bad, more than half "
                    f"(data.on_bad_sample: skip stops then: the dataset or its config is wrong, not a few "
                    f"files); the last one: {_describe(path, reason)}")
        if new:
            # Printed by this one actor: Ray forwards its stdout to the driver's console (and `ray job logs`)
            # and never folds lines of one process together as it does repeated lines of several.
            sys.stdout.write(f"skipped bad sample {len(self.reasons)} of at most {self.max_bad} "
                             f"(data.max_bad_samples): {_describe(path, reason)}\n")
            sys.stdout.flush()
        return None

    def count(self) -> int:
        """Distinct bad samples met so far."""
        return len(self.reasons)

    def samples(self) -> Dict[str, str]:
        """``{image path: reason}`` of every bad sample met so far."""
        return dict(self.reasons)


class BadSamplePolicy:
    """``data.on_bad_sample`` and ``data.max_bad_samples`` for one run, with the run's ledger under ``skip``.

    It pickles (the ledger as its actor handle), so it travels with the training-stream factory, the decode
    actors' constructor arguments and the training loop's config.
    """

    def __init__(self, mode: str = DEFAULT_MODE, max_bad: int = DEFAULT_MAX_BAD_SAMPLES, ledger: Any = None):
        if mode not in MODES:
            raise ValueError(f"on_bad_sample must be one of {MODES}, got {mode!r}")
        if mode == "skip" and ledger is None:
            raise ValueError("on_bad_sample 'skip' needs a BadSampleLedger actor (BadSamplePolicy.start)")
        self.mode = mode
        self.max_bad = int(max_bad)
        self.ledger = ledger

    @classmethod
    def start(cls, mode: str = DEFAULT_MODE, max_bad: int = DEFAULT_MAX_BAD_SAMPLES) -> "BadSamplePolicy":
        """The policy for a run; under ``skip`` this starts the run's ledger actor (Ray must be connected).

        The caller owns the ledger: it lives as long as the returned policy is referenced in the caller's
        process, so the driver keeps it for the whole ``fit`` (worker-group restarts included).
        """
        if mode != "skip":
            return cls(mode, max_bad)
        import ray

        # No CPU: it only keeps a dict; asking for one could starve the training workers on a small cluster.
        ledger = ray.remote(num_cpus=0)(BadSampleLedger).remote(int(max_bad))
        return cls(mode, max_bad, ledger)

    @property
    def skip(self) -> bool:
        return self.mode == "skip"

    def record(self, split: str, num_samples: int, path: str, error: BaseException) -> None:
        """Record a dropped sample with the ledger; raise ``DataError`` when the run must stop instead."""
        import ray

        reason = str(error)
        verdict = ray.get(self.ledger.report.remote(split, int(num_samples), str(path), reason))
        if verdict is not None:
            raise DataError(verdict) from None

    def count(self) -> Optional[int]:
        """Distinct bad samples skipped so far in this run (None under ``error``: nothing is skipped)."""
        if not self.skip:
            return None
        import ray

        return int(ray.get(self.ledger.count.remote()))

    def stream_rows(self, rows: int, num_samples: int) -> int:
        """Rows a training stream needs so that ``rows`` of them are good whatever the ingest drops.

        Under ``skip`` at most ``b = min(max_bad_samples, num_samples // 2)`` distinct samples are dropped
        (one more stops the run), each at most once per epoch; a stream of T rows (starting anywhere in an
        epoch) touches at most ``ceil(T / n) + 1`` epochs, so it holds at least ``T - b·(ceil(T / n) + 1)``
        good rows. The smallest such T is found by iterating to the fixed point (b ≤ n/2 keeps it below
        2·(rows + n)). Rows training does not consume are at most read a little ahead, then abandoned with
        the stream, as the one spare batch per worker always was.
        """
        if not self.skip or num_samples <= 0:
            return rows
        bad = min(self.max_bad, num_samples // 2)
        total = rows
        while True:
            needed = rows + bad * (math.ceil(total / num_samples) + 1)
            if needed <= total:
                return total
            total = needed

    def __repr__(self) -> str:
        return f"BadSamplePolicy({self.mode!r}, max_bad={self.max_bad})"
