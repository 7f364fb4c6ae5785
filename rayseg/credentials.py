"""Credentials stay out of configs: they come from the environment (or instance profiles), never from a value
that would be logged as an MLflow param, printed by ``print_config`` or saved in a checkpoint's meta.

The one place a config could carry one is a URI with a password (``http://user:secret@host``,
``postgresql://user:secret@db``, ``s3://KEY:SECRET@bucket``); ``refuse_credentials`` names the key instead.
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Tuple

from rayseg.errors import ConfigError

# scheme://user:password@host: a password-bearing userinfo part (a bare user@host is an account name, allowed).
_URI_WITH_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.\-]*)://[^/\s:@]*:[^/\s@]+@", re.IGNORECASE)

# Where each kind of credential goes instead.
_WHERE = {
    "http": "for an MLflow server MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN); "
            "for weights a local file or a cache folder (docs/models.md)",
    "https": "for an MLflow server MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN); "
             "for weights a local file or a cache folder (docs/models.md)",
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an instance profile",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS or the node's service account",
    "postgresql": "~/.pgpass or PGPASSWORD",
}


def _strings(value: Any, path: str) -> Iterator[Tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}.{i}")
    elif isinstance(value, str):
        yield path, value


def refuse_credentials(cfg: Any, source: str) -> None:
    """Raise ConfigError naming the first key whose value is a URI with a password (the value is not shown)."""
    for path, text in _strings(cfg, ""):
        found = _URI_WITH_PASSWORD.search(text)
        if found:
            scheme = found.group(1).lower().split("+")[0]
            where = _WHERE.get(scheme, "the environment of the processes that need it")
            raise ConfigError(f"{source}: {path} holds a {scheme}:// URI with a password; configs are logged to "
                              f"MLflow and printed, so credentials come from the environment: {where}")
