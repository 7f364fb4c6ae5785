"""``evaluation.save_best``: keep the checkpoint with the best validation score, as MMSeg's EvalHook does."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

from rayseg.errors import ConfigError
from rayseg.evaluation.metrics import SUMMARY_KEYS

BEST_DIR_PREFIX = "best_"


def resolve_save_best(save_best: Optional[str], metrics: Sequence[str] = ("mIoU",), interval: int = 0) -> Optional[str]:
    """The summary metric ``evaluation.save_best`` names (``auto`` → the first of ``evaluation.metric``, as in
    MMSeg), or None when it is not set. ``interval`` is ``evaluation.interval``: the best is judged at validations.
    """
    if not save_best:
        return None
    key = metrics[0] if save_best == "auto" and metrics else save_best
    if key not in SUMMARY_KEYS:
        raise ConfigError(f"evaluation.save_best: {key!r} is not a metric rayseg computes; "
                          f"choose one of {', '.join(SUMMARY_KEYS)} or 'auto'")
    if not interval:
        raise ConfigError("evaluation.save_best needs evaluation.interval > 0 (the best is judged at validations)")
    return key


class BestScore:
    """Tracks the best value of one summary metric (all of rayseg's metrics are higher-is-better)."""

    def __init__(self, key: str):
        self.key = key
        self.score = -math.inf
        self.iteration = 0

    def update(self, results: Dict[str, Any], iteration: int) -> bool:
        """Record ``results[key]`` at ``iteration``; True if it beats every earlier validation."""
        value = results.get(self.key)
        if value is None or (isinstance(value, float) and math.isnan(value)) or value <= self.score:
            return False
        self.score, self.iteration = float(value), int(iteration)
        return True

    def state_dict(self) -> Dict[str, Any]:
        return {"key": self.key, "score": self.score, "iter": self.iteration}

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        # A resumed run keeps judging against the best it had already seen, for the same metric only.
        if state and state.get("key") == self.key:
            self.score, self.iteration = float(state["score"]), int(state["iter"])
