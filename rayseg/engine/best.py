"""``evaluation.save_best``: keep the checkpoint with the best validation score, as MMSeg's EvalHook does."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

from rayseg.engine.evaluate import SUMMARY_KEYS
from rayseg.errors import ConfigError

BEST_DIR_PREFIX = "best_"


def resolve_save_best(evaluation: Optional[Dict[str, Any]]) -> Optional[str]:
    """The summary metric ``save_best`` names (``auto`` → the first evaluated metric, as in MMSeg), or None."""
    evaluation = evaluation or {}
    key = evaluation.get("save_best")
    if not key:
        return None
    if key == "auto":
        metric = evaluation.get("metric", "mIoU")
        key = metric[0] if isinstance(metric, list) and metric else metric
    if key not in SUMMARY_KEYS:
        raise ConfigError(f"evaluation.save_best: {key!r} is not a metric rayseg computes; "
                          f"choose one of {', '.join(SUMMARY_KEYS)} or 'auto'")
    if not int(evaluation.get("interval") or 0):
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
