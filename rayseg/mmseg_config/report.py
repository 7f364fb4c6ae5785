"""What a translation of an MMSeg ``.py`` config could not carry over, key path by key path.

Three kinds of entries, each a key path (``param_scheduler.1``, ``default_hooks.visualization``) with a reason:

- ``untranslatable``: the key asks for something rayseg does not do; ``load_config`` refuses the config,
  ``jobs/convert_config.py`` refuses it too (or, with ``--partial``, lists them in the YAML's header);
- ``ignored``: a key with no meaning under rayseg (``env_cfg.mp_cfg``, ``visualizer``, ...), dropped with its
  reason; ``load_config`` names them in one logged line;
- ``notes``: a mapping worth knowing (an approximation, a value moved to another key).

Helper variables (``crop_size``, ``norm_cfg``, ...) are listed apart: they live on in the sections that use them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from rayseg.errors import ConfigError

LOG = logging.getLogger("rayseg.mmseg_config")
_LOGGED: Set[Tuple[str, str]] = set()  # (file, line) pairs already logged in this process


@dataclass
class Entry:
    """One key path and why it is reported; ``where`` is ``file:line`` when the reader knows it."""

    path: str
    reason: str
    where: Optional[str] = None

    def line(self) -> str:
        """``path (file:line): reason`` in one line."""
        at = f" ({self.where})" if self.where else ""
        return f"{self.path}{at}: {self.reason}"


@dataclass
class Report:
    """Everything a translation reports, in the order it was found."""

    source: str = ""
    version: str = "0.x"
    untranslatable: List[Entry] = field(default_factory=list)
    ignored: List[Entry] = field(default_factory=list)
    notes: List[Entry] = field(default_factory=list)
    helpers: List[str] = field(default_factory=list)

    def refuse(self, path: str, reason: str, where: Optional[str] = None) -> None:
        """Record a key that cannot be translated."""
        self.untranslatable.append(Entry(path, reason, where))

    def ignore(self, path: str, reason: str, where: Optional[str] = None) -> None:
        """Record a key dropped because it has no meaning under rayseg."""
        self.ignored.append(Entry(path, reason, where))

    def note(self, path: str, text: str, where: Optional[str] = None) -> None:
        """Record a mapping worth knowing (kept, but not one to one)."""
        self.notes.append(Entry(path, text, where))

    def error_message(self) -> str:
        """The one-line ``ConfigError`` text for the untranslatable keys."""
        n = len(self.untranslatable)
        listed = "; ".join(e.line() for e in self.untranslatable)
        return (f"{self.source}: {n} MMSeg key{'s' if n != 1 else ''} cannot be translated to rayseg: {listed} "
                f"(jobs/convert_config.py --partial writes the rest as YAML)")

    def raise_if_untranslatable(self) -> None:
        """Raise ``ConfigError`` listing every untranslatable key, if there is one."""
        if self.untranslatable:
            raise ConfigError(self.error_message())

    def log_ignored(self) -> None:
        """Log the ignored keys in one line (once per file and content in this process)."""
        if not self.ignored:
            return
        groups: Dict[str, List[str]] = {}
        for e in self.ignored:  # one name per top-level key: default_hooks.{timer, sampler_seed}
            head, _, rest = e.path.partition(".")
            groups.setdefault(head, []).extend([rest] if rest else [])
        paths = ", ".join(f"{h}.{{{', '.join(r)}}}" if len(r) > 1 else (f"{h}.{r[0]}" if r else h)
                          for h, r in groups.items())
        line = (f"note: {self.source}: {len(self.ignored)} MMSeg key(s) have no meaning under rayseg and are "
                f"ignored: {paths} (jobs/convert_config.py shows why)")
        if (self.source, line) not in _LOGGED:
            _LOGGED.add((self.source, line))
            LOG.warning(line)

    def comment_lines(self) -> List[str]:
        """The report as YAML comment lines (for the header of a converted config)."""
        out = [f"# Converted from {self.source} (MMSeg {self.version} .py config) by jobs/convert_config.py."]
        sections = (("cannot be translated (left out)", self.untranslatable),
                    ("ignored (no meaning under rayseg)", self.ignored), ("notes", self.notes))
        for title, entries in sections:
            if entries:
                out.append(f"# {title}:")
                out.extend(f"#   - {e.line()}" for e in entries)
        if self.helpers:
            out.append("# helper variables (used by the sections below, not keys themselves): "
                       + ", ".join(self.helpers))
        return out

    def text(self) -> str:
        """The report for a terminal: one entry per line, under its heading."""
        return "\n".join(line[2:] if line.startswith("# ") else line[1:] for line in self.comment_lines()) + "\n"
