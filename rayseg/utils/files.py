"""Small file helpers shared by the writers of a run's outputs."""
from __future__ import annotations

import os


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a reader (a sweep's driver polling
    its trials, a user's ``tail``) sees the old file or the whole new one, never a half-written one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
