"""The expression half of the ``.py`` config reader: the value of one expression of a parsed config, or a
``ConfigError`` naming the file, the line and the construct (see ``rayseg.mmseg_config.ast_reader``).

Values are plain: dict, list, tuple, str, int, float, bool, None. Names resolve to the file's own earlier
assignments, then to the merged ``_base_`` configs; ``{{_base_.a.b}}`` references arrive as placeholder names
(``__rayseg_base_ref_<i>__``) and resolve to the value at that path of the merged bases. Only ``dict()``,
``list()`` and ``tuple()`` may be called; attribute access is refused; results of ``*`` and comprehensions are
capped at ``MAX_ITEMS`` items so a typo cannot exhaust memory.
"""
from __future__ import annotations

import ast
import operator
import re
from typing import Any, Callable, Dict, List, Optional, Set

from rayseg.errors import ConfigError

PLACEHOLDER = "__rayseg_base_ref_{}__"
PLACEHOLDER_RE = re.compile(r"__rayseg_base_ref_(\d+)__")
CONSTRUCTORS = ("dict", "list", "tuple")
# Pure builtins MMSeg's configs call on literal values (fcn_hr18: ``channels=sum([18, 36, 72, 144])``).
PURE_FUNCTIONS = {"sum": sum, "min": min, "max": max, "len": len, "abs": abs, "int": int, "float": float,
                  "round": round}

MAX_ITEMS = 1_000_000  # a sequence built by * or a comprehension; bigger is a mistake, not a config
MAX_EXPONENT = 1000

_BINOPS: Dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: Dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE: Dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_, ast.IsNot: operator.is_not,
}
# How a refused construct is named in the error (the node's class name otherwise).
_CONSTRUCT_NAMES = {
    "Attribute": "attribute access", "Lambda": "a lambda", "Import": "an import", "ImportFrom": "an import",
    "FunctionDef": "a function definition", "AsyncFunctionDef": "a function definition",
    "ClassDef": "a class definition", "If": "an if statement", "For": "a for loop", "While": "a while loop",
    "With": "a with statement", "Try": "a try statement", "Delete": "a del statement", "Global": "global",
    "NamedExpr": "an assignment expression (:=)", "Await": "await", "Yield": "yield", "YieldFrom": "yield",
    "GeneratorExp": "a generator expression", "SetComp": "a set comprehension", "Set": "a set",
    "DictComp": "a dict comprehension", "Starred": "star unpacking", "Raise": "raise", "Assert": "assert",
    "Return": "return", "Match": "a match statement",
}


def construct_name(node: ast.AST) -> str:
    """How a refused construct is named in an error."""
    return _CONSTRUCT_NAMES.get(type(node).__name__, type(node).__name__)


def _lookup_path(base: Dict[str, Any], dotted: str) -> Any:
    """The value at ``a.b.0`` in the merged bases (KeyError/IndexError/TypeError when absent)."""
    value: Any = base
    for part in dotted.split("."):
        if isinstance(value, dict):
            value = value[int(part)] if part not in value and part.isdigit() and int(part) in value else value[part]
        elif isinstance(value, (list, tuple)):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value


class Evaluator:
    """Evaluates expressions of one parsed file; every refusal names ``path:line``."""

    def __init__(self, path: str, refs: List[str], base: Dict[str, Any]):
        self.path = path
        self.refs = refs  # placeholder index → dotted path of a {{_base_.x}} reference
        self.base = base
        self.env: Dict[str, Any] = {}
        self.referenced: Set[str] = set()

    # ------------------------------------------------------------------ errors
    def _text(self, node: ast.AST) -> str:
        try:
            text = ast.unparse(node)
        except Exception:  # pragma: no cover - unparse handles every parsed node
            text = type(node).__name__
        text = PLACEHOLDER_RE.sub(lambda m: "{{_base_.%s}}" % self.refs[int(m.group(1))], text)
        first = text.splitlines()[0] if text else text
        if first != text:
            first += " ..."
        return first if len(first) <= 80 else first[:77] + "..."

    def fail(self, node: ast.AST, message: str) -> ConfigError:
        """A ConfigError naming this file, the node's line and ``message``."""
        return ConfigError(f"{self.path}:{getattr(node, 'lineno', '?')}: {message}")

    def refuse(self, node: ast.AST, what: Optional[str] = None, hint: str = "") -> ConfigError:
        """The error for a construct a config may not contain."""
        what = what or construct_name(node)
        return self.fail(node, f"{what} is not allowed in a config ({self._text(node)!r}){hint}: a config is read, "
                               "not run; use literals, dict()/list()/tuple(), arithmetic and names")

    def name(self, node: ast.Name, scope: Optional[Dict[str, Any]] = None) -> Any:
        ident = node.id
        if scope is not None and ident in scope:
            return scope[ident]
        m = PLACEHOLDER_RE.fullmatch(ident)
        if m:
            dotted = self.refs[int(m.group(1))]
            self.referenced.add(dotted.split(".")[0])
            try:
                return _lookup_path(self.base, dotted)
            except (KeyError, IndexError, TypeError, ValueError):
                known = ", ".join(sorted(map(str, self.base))) or "none"
                raise self.fail(node, f"{{{{_base_.{dotted}}}}}: the _base_ configs have no such key "
                                      f"(their top-level keys: {known})") from None
        if ident.startswith("__"):
            raise self.fail(node, f"name {ident!r} is not allowed in a config")
        if ident in self.env:
            self.referenced.add(ident)
            return self.env[ident]
        if ident in self.base:  # a name inherited from _base_ (MMEngine's old style needs {{_base_.x}})
            self.referenced.add(ident)
            return self.base[ident]
        if ident in CONSTRUCTORS:
            raise self.fail(node, f"{ident} is only allowed as a call, {ident}(...)")
        raise self.fail(node, f"name {ident!r} is not defined (not assigned earlier in this file nor in its _base_ "
                              "files)")

    def eval(self, node: ast.expr, scope: Optional[Dict[str, Any]] = None) -> Any:
        """The value of one expression (``scope``: a comprehension's own names)."""
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str) and PLACEHOLDER_RE.search(value):
                # {{_base_.x}} inside a string literal: MMEngine substitutes its text there.
                return PLACEHOLDER_RE.sub(lambda m: str(self.name(ast.Name(id=m.group(0), lineno=node.lineno))),
                                           value)
            if value is Ellipsis or isinstance(value, (bytes, complex)):
                raise self.refuse(node, f"the constant {value!r}")
            return value
        if isinstance(node, ast.Name):
            return self.name(node, scope)
        if isinstance(node, ast.List):
            return [self.eval(e, scope) for e in self._no_star(node.elts)]
        if isinstance(node, ast.Tuple):
            return tuple(self.eval(e, scope) for e in self._no_star(node.elts))
        if isinstance(node, ast.Dict):
            out: Dict[Any, Any] = {}
            for k, v in zip(node.keys, node.values):
                if k is None:  # {**mapping}
                    out.update(self._mapping(v, scope))
                else:
                    out[self._key(k, scope)] = self.eval(v, scope)
            return out
        if isinstance(node, ast.Call):
            return self.call(node, scope)
        if isinstance(node, ast.BinOp):
            return self.binop(node, type(node.op), self.eval(node.left, scope), self.eval(node.right, scope))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return self._apply(node, _UNARY[type(node.op)], self.eval(node.operand, scope))
        if isinstance(node, ast.BoolOp):
            value = self.eval(node.values[0], scope)
            for nxt in node.values[1:]:
                if (isinstance(node.op, ast.And) and not value) or (isinstance(node.op, ast.Or) and value):
                    break
                value = self.eval(nxt, scope)
            return value
        if isinstance(node, ast.Compare):
            left = self.eval(node.left, scope)
            for op, comp in zip(node.ops, node.comparators):
                right = self.eval(comp, scope)
                if not self._apply(node, _COMPARE[type(op)], left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.eval(node.body if self.eval(node.test, scope) else node.orelse, scope)
        if isinstance(node, ast.Subscript):
            return self._apply(node, operator.getitem, self.eval(node.value, scope), self._index(node.slice, scope))
        if isinstance(node, ast.JoinedStr):
            return "".join(self._fstring_part(v, scope) for v in node.values)
        if isinstance(node, ast.ListComp):
            return self.listcomp(node, scope)
        raise self.refuse(node)

    def _no_star(self, elts: List[ast.expr]) -> List[ast.expr]:
        for e in elts:
            if isinstance(e, ast.Starred):
                raise self.refuse(e)
        return elts

    def _key(self, node: ast.expr, scope: Optional[Dict[str, Any]]) -> Any:
        key = self.eval(node, scope)
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise self.fail(node, f"a dict key must be a string or an int, got {key!r}")
        return key

    def _mapping(self, node: ast.expr, scope: Optional[Dict[str, Any]]) -> Dict[Any, Any]:
        value = self.eval(node, scope)
        if not isinstance(value, dict):
            raise self.fail(node, f"** needs a dict, got {type(value).__name__} ({self._text(node)!r})")
        return value

    def _index(self, node: ast.expr, scope: Optional[Dict[str, Any]]) -> Any:
        if isinstance(node, ast.Slice):
            parts = [None if p is None else self.eval(p, scope) for p in (node.lower, node.upper, node.step)]
            return slice(*parts)
        return self.eval(node, scope)

    def _fstring_part(self, node: ast.expr, scope: Optional[Dict[str, Any]]) -> str:
        if isinstance(node, ast.Constant):
            return str(node.value)
        assert isinstance(node, ast.FormattedValue)
        value = self.eval(node.value, scope)
        value = {115: str, 114: repr, 97: ascii}.get(node.conversion, lambda v: v)(value)
        spec = "" if node.format_spec is None else self.eval(node.format_spec, scope)
        return self._apply(node, format, value, spec)

    def _apply(self, node: ast.AST, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError, KeyError, IndexError) as exc:
            raise self.fail(node, f"cannot evaluate {self._text(node)!r}: {type(exc).__name__}: {exc}") from None

    def binop(self, node: ast.AST, op: type, left: Any, right: Any) -> Any:
        if op not in _BINOPS:
            raise self.refuse(node, "the operator " + op.__name__)
        if op is ast.Mult and (isinstance(left, (str, list, tuple)) or isinstance(right, (str, list, tuple))):
            seq, n = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
            if isinstance(n, int) and len(seq) * max(n, 0) > MAX_ITEMS:
                raise self.fail(node, f"{self._text(node)!r} would make more than {MAX_ITEMS} items")
        if op is ast.Pow and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise self.fail(node, f"{self._text(node)!r}: exponent larger than {MAX_EXPONENT}")
        return self._apply(node, _BINOPS[op], left, right)

    def call(self, node: ast.Call, scope: Optional[Dict[str, Any]]) -> Any:
        func = node.func
        only = f" (only dict(), list(), tuple() and {', '.join(f'{n}()' for n in PURE_FUNCTIONS)} may be called)"
        if isinstance(func, ast.Attribute):
            raise self.refuse(node, f"calling {self._text(func)}() (attribute access)", only)
        if (isinstance(func, ast.Name) and func.id in PURE_FUNCTIONS and not self._bound(func.id, scope)):
            if node.keywords:
                raise self.fail(node, f"{func.id}() takes no keyword arguments in a config")
            return self._apply(node, PURE_FUNCTIONS[func.id], *[self.eval(a, scope) for a in self._no_star(node.args)])
        if not isinstance(func, ast.Name) or func.id not in CONSTRUCTORS:
            shown = f"{func.id}()" if isinstance(func, ast.Name) else construct_name(func)
            raise self.refuse(node, f"calling {shown}", only)
        if func.id in self.env or (scope and func.id in scope):
            raise self.fail(node, f"{func.id!r} is rebound in this config; it cannot be called")
        args = [self.eval(a, scope) for a in self._no_star(node.args)]
        if func.id == "dict":
            if len(args) > 1:
                raise self.fail(node, f"dict() takes at most one positional argument, got {len(args)}")
            out = self._apply(node, dict, *args)
            for kw in node.keywords:
                if kw.arg is None:
                    out.update(self._mapping(kw.value, scope))
                else:
                    out[kw.arg] = self.eval(kw.value, scope)
            return out
        if node.keywords or len(args) > 1:
            raise self.fail(node, f"{func.id}() takes one positional argument")
        return self._apply(node, list if func.id == "list" else tuple, *args)

    def _bound(self, ident: str, scope: Optional[Dict[str, Any]]) -> bool:
        """Whether the config gave ``ident`` a value of its own (then it is that value, not the builtin)."""
        return ident in self.env or ident in self.base or bool(scope and ident in scope)

    def listcomp(self, node: ast.ListComp, scope: Optional[Dict[str, Any]]) -> List[Any]:
        out: List[Any] = []

        def loop(i: int, local: Dict[str, Any]) -> None:
            if i == len(node.generators):
                out.append(self.eval(node.elt, local))
                if len(out) > MAX_ITEMS:
                    raise self.fail(node, f"the comprehension makes more than {MAX_ITEMS} items")
                return
            gen = node.generators[i]
            if gen.is_async:
                raise self.refuse(node, "an async comprehension")
            iterable = self.eval(gen.iter, local)
            if not isinstance(iterable, (list, tuple, str, dict)):
                raise self.fail(gen.iter, f"cannot iterate over {type(iterable).__name__}")
            for item in iterable:
                inner = dict(local)
                self._bind(gen.target, item, inner, node)
                if all(self.eval(cond, inner) for cond in gen.ifs):
                    loop(i + 1, inner)

        loop(0, dict(scope or {}))
        return out

    def _bind(self, target: ast.expr, value: Any, local: Dict[str, Any], node: ast.AST) -> None:
        if isinstance(target, ast.Name):
            if target.id.startswith("__"):
                raise self.fail(node, f"name {target.id!r} is not allowed in a config")
            local[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            if not isinstance(value, (list, tuple)) or len(value) != len(target.elts):
                raise self.fail(node, f"cannot unpack {value!r} into {len(target.elts)} names")
            for t, v in zip(target.elts, value):
                self._bind(t, v, local, node)
        else:
            raise self.refuse(target)
