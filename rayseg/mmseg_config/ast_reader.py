"""Read one MMSeg ``.py`` config by evaluating its syntax tree: the file is parsed, never imported or run.

What a config may contain (everything MMSeg's 0.x and 1.x config files use):

- assignments (``a = ...``, ``a = b = ...``, ``a, b = ...``, ``a += ...``) of literals, ``dict(...)``,
  ``list(...)``, ``tuple(...)`` (``**mapping`` included), list/tuple/dict displays, list comprehensions;
- names bound earlier in the file or inherited from the ``_base_`` files, and ``{{_base_.a.b}}`` references
  (replaced before parsing, as MMEngine does, by the value at that path in the merged bases);
- arithmetic ``+ - * / // % **`` and unary ``- + not`` on numbers, ``+``/``*`` on lists, tuples and strings,
  comparisons, ``and``/``or``, ``x if c else y``, subscripts and slices, f-strings;
- docstrings, ``pass``, and the harmless imports ``from mmseg... import X`` (also mmcv, mmengine, mmdet,
  mmpretrain, torch), which bind ``X`` to the text ``'X'``: the registry name a ``type=X`` means.

Anything else (``import os``, ``open(...)``, ``__import__``, attribute access such as ``os.system`` or
``x.update(...)``, lambdas, ``if``/``for``/``with``/``def`` statements) is a ``ConfigError`` naming the file,
the line and the construct. Results are plain values: dict, list, tuple, str, int, float, bool, None.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Set, Tuple

from rayseg.errors import ConfigError
from rayseg.mmseg_config.ast_eval import CONSTRUCTORS, PLACEHOLDER, Evaluator, construct_name

BASE_KEY = "_base_"
# MMEngine's own pattern for a reference into the base configs: {{ _base_.a.b }} (dots may index lists too).
BASE_REF = re.compile(r"\{\{\s*_base_\.([\w.]+)\s*\}\}")
HARMLESS_IMPORT_ROOTS = ("mmseg", "mmcv", "mmengine", "mmdet", "mmpretrain", "torch")


@dataclass
class FileResult:
    """One file read: its ``_base_`` list, its own top-level names (in order) and what it read."""

    path: str
    bases: List[str]
    values: Dict[str, Any]
    lines: Dict[str, int] = field(default_factory=dict)  # name → line of its last assignment
    referenced: Set[str] = field(default_factory=set)  # top-level names (own or inherited) read in this file


class _Reader(Evaluator):
    """Evaluates one parsed file's statements in order (expressions: ``Evaluator``)."""

    def __init__(self, path: str, refs: List[str], base: Dict[str, Any]):
        super().__init__(path, refs, base)
        self.lines: Dict[str, int] = {}

    # ------------------------------------------------------------------ statements
    def run(self, tree: ast.Module) -> None:
        """Evaluate every top-level statement in order."""
        for stmt in tree.body:
            self.statement(stmt)

    def statement(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.Assign):
            if self._is_base(stmt):
                return  # read beforehand by read_file
            value = self.eval(stmt.value)
            for target in stmt.targets:
                self.assign(target, value, stmt)
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None and isinstance(stmt.target, ast.Name):
            self.assign(stmt.target, self.eval(stmt.value), stmt)
        elif isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
            current = self.name(stmt.target)
            # A new value, never an in-place change: two names bound to one list stay independent.
            self.assign(stmt.target, self.binop(stmt, type(stmt.op), current, self.eval(stmt.value)), stmt)
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            return  # a docstring or bare string
        elif isinstance(stmt, ast.Pass):
            return
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            self.import_(stmt)
        elif isinstance(stmt, ast.With) and "read_base" in ast.dump(stmt.items[0].context_expr):
            raise self.fail(stmt, "MMEngine's pure-Python config style ('with read_base(): from ... import *', "
                                  "then .update() calls) is not read: it runs code. Use the same config in MMSeg's "
                                  "_base_ = [...] layout (MMSeg's configs/ folder has each one)")
        else:
            raise self.refuse(stmt)

    @staticmethod
    def _is_base(stmt: ast.stmt) -> bool:
        return (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and stmt.targets[0].id == BASE_KEY)

    def assign(self, target: ast.expr, value: Any, stmt: ast.stmt) -> None:
        if isinstance(target, ast.Name):
            name = target.id
            if name.startswith("__") or name in CONSTRUCTORS or name == BASE_KEY:
                raise self.fail(stmt, f"cannot assign to {name!r} in a config")
            self.env[name] = value
            self.lines[name] = stmt.lineno
        elif isinstance(target, (ast.Tuple, ast.List)) and all(isinstance(t, ast.Name) for t in target.elts):
            if not isinstance(value, (list, tuple)) or len(value) != len(target.elts):
                raise self.fail(stmt, f"cannot unpack {value!r} into {len(target.elts)} names")
            for t, v in zip(target.elts, value):
                self.assign(t, v, stmt)
        else:
            raise self.refuse(target, "assigning to " + construct_name(target) if not isinstance(
                target, ast.Subscript) else "item assignment")

    def import_(self, stmt: ast.stmt) -> None:
        """``from mmseg.x import Y`` binds ``Y`` to ``'Y'``; other imports are refused."""
        if isinstance(stmt, ast.ImportFrom):
            module = stmt.module or ""
            if stmt.level == 0 and module.split(".")[0] in HARMLESS_IMPORT_ROOTS:
                for alias in stmt.names:
                    if alias.name == "*":
                        raise self.fail(stmt, f"'from {module} import *' is not allowed in a config: name what "
                                              "you import")
                    self.env[alias.asname or alias.name] = alias.name
                    self.lines[alias.asname or alias.name] = stmt.lineno
                return
            raise self.fail(stmt, f"import of {'.' * stmt.level + module!r} is not allowed in a config (only "
                                  f"'from {'/'.join(HARMLESS_IMPORT_ROOTS)}... import Name'; bases go in _base_)")
        names = [a.name for a in stmt.names]  # type: ignore[attr-defined]
        if all(n.split(".")[0] in HARMLESS_IMPORT_ROOTS for n in names):
            return  # nothing usable is bound: attribute access is refused anyway
        raise self.fail(stmt, f"import of {', '.join(repr(n) for n in names)} is not allowed in a config")


def _substitute_refs(text: str) -> Tuple[str, List[str]]:
    """Replace each ``{{_base_.x}}`` by a placeholder name; return the text and the dotted paths in order."""
    refs: List[str] = []

    def repl(m: re.Match) -> str:
        refs.append(m.group(1).strip("."))
        return PLACEHOLDER.format(len(refs) - 1)

    return BASE_REF.sub(repl, text), refs


def _read_bases(reader: _Reader, tree: ast.Module) -> List[str]:
    """The file's ``_base_`` (a path or a list of paths), evaluated with no names bound."""
    stmts = [s for s in tree.body if _Reader._is_base(s)]
    others = [s for s in tree.body if isinstance(s, (ast.Assign, ast.AugAssign, ast.AnnAssign))
              and not _Reader._is_base(s)
              and any(isinstance(t, ast.Name) and t.id == BASE_KEY
                      for t in (s.targets if isinstance(s, ast.Assign) else [s.target]))]
    if others:
        raise reader.fail(others[0], "_base_ must be assigned once, as `_base_ = 'path'` or `_base_ = [...]`")
    if not stmts:
        return []
    if len(stmts) > 1:
        raise reader.fail(stmts[1], "_base_ is assigned twice")
    value = reader.eval(stmts[0].value)
    bases = [value] if isinstance(value, str) else value
    if not isinstance(bases, (list, tuple)) or not all(isinstance(b, str) for b in bases):
        raise reader.fail(stmts[0], f"_base_ must be a path or a list of paths, got {value!r}")
    return list(bases)


def read_file(path: str, load_bases: Callable[[List[str]], Dict[str, Any]]) -> FileResult:
    """Read ``path``: its ``_base_`` list first, then ``load_bases(bases)`` (the merged base configs, whose
    names the file may read), then every statement in order. Raises ConfigError naming file and line."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    text, refs = _substitute_refs(raw)
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: Python syntax error: {exc.msg}") from exc
    reader = _Reader(path, refs, {})
    bases = _read_bases(reader, tree)
    if refs and not bases:
        raise ConfigError(f"{path}: {{{{_base_.{refs[0]}}}}} is used but the file has no _base_")
    reader.base = load_bases(bases) if bases else {}
    reader.referenced.clear()
    reader.run(tree)
    return FileResult(path=path, bases=bases, values=reader.env, lines=reader.lines, referenced=reader.referenced)
