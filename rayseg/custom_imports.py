"""``custom_imports``: the user's own modules, imported wherever rayseg builds parts from a config.

MMSeg's key, with MMSeg's meaning::

    custom_imports: {imports: [my_pkg.my_head, my_pkg.my_loss], allow_failed_imports: false}

Importing a module runs its ``@BACKBONES.register_module()``-style decorators, so the backbones, heads, losses,
transforms, datasets, optimizers and hooks it defines can be named by ``type`` in the config. Under Ray a config
is built in many processes, so the modules are imported:

- on the driver, when the run spec is resolved (``rayseg.spec.resolve.resolve_run``) or, for
  ``jobs/test.py``/``jobs/predict.py``, when evaluation or prediction starts: a module that cannot be imported
  is a ``ConfigError`` naming it (a warning with ``allow_failed_imports: true``), before Ray starts;
- in every Ray worker process of the job, by the job's ``worker_process_setup_hook``
  (``rayseg.utils.ray_session.quiet_ray_process``), from ``RAYSEG_CUSTOM_IMPORTS`` in the job's runtime env:
  objects pickled by reference (a user transform inside a dataset) then unpickle anywhere;
- explicitly at the start of every worker entry point (the training loop, the evaluation and prediction
  replicas, a sweep trial through ``resolve_run``), from the spec or the config the entry point receives: a
  Ray that was started before the driver knew the modules (``ray job submit``, an already connected driver)
  keeps its runtime env, so this is what guarantees the import.

A module must be importable on every node: installed in the environment, on ``PYTHONPATH``, or shipped with
``ray job submit --working-dir``. As in MMSeg, modules in the current directory are found too. The driver tells
the workers the folders it found the modules in (``CustomImportsSpec.paths``); a worker adds those that exist
on its node to ``sys.path``, which makes the single-machine case work without installing anything.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import traceback
import warnings
from typing import Any, Dict, List, Optional, Set, Union

from rayseg.errors import ConfigError
from rayseg.spec.sections import CustomImportsSpec

# The job's runtime env carries the modules to every worker process (read by ``import_from_environment``).
ENV_VAR = "RAYSEG_CUSTOM_IMPORTS"

_logger = logging.getLogger(__name__)
_imported: Set[str] = set()  # modules this process imported through here
_exported: Dict[str, Any] = {"modules": [], "paths": [], "allow_failed_imports": True}


def resolve_custom_imports(value: Any, where: str = "custom_imports") -> CustomImportsSpec:
    """The ``custom_imports`` mapping as a ``CustomImportsSpec`` (nothing imported yet); errors name the key."""
    if value is None:
        return CustomImportsSpec()
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping {{imports: [my_pkg.my_module], allow_failed_imports: "
                          f"false}}, got {value!r}")
    unknown = sorted(set(value) - {"imports", "allow_failed_imports"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; accepted: imports, allow_failed_imports")
    modules = value.get("imports") or []
    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, list) or not all(isinstance(m, str) and m.strip() for m in modules):
        raise ConfigError(f"{where}.imports: expected a module name or a list of them (my_pkg.my_head), got "
                          f"{value.get('imports')!r}")
    for name in modules:
        if name.startswith(".") or "/" in name or name.endswith(".py"):
            raise ConfigError(f"{where}.imports: {name!r} is not a module name; write it as Python imports it "
                              f"(my_pkg.my_head for my_pkg/my_head.py)")
    allow = value.get("allow_failed_imports", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"{where}.allow_failed_imports: expected true or false, got {allow!r}")
    return CustomImportsSpec(modules=tuple(dict.fromkeys(m.strip() for m in modules)), allow_failed_imports=allow)


def _module_root(name: str) -> Optional[str]:
    """The ``sys.path`` folder ``name`` was imported from (``/x`` for ``/x/my_pkg/my_head.py``)."""
    module = sys.modules.get(name)
    if module is None:
        return None
    path = getattr(module, "__file__", None)
    if path:
        path = os.path.dirname(os.path.abspath(path)) if os.path.basename(path).startswith("__init__.") else path
    else:  # a namespace package
        locations = list(getattr(module, "__path__", []) or [])
        if not locations:
            return None
        path = locations[0]
    root = os.path.abspath(path)
    for _ in name.split("."):
        root = os.path.dirname(root)
    return root


def _add_paths(paths: List[str]) -> None:
    for path in paths:
        if path and os.path.isdir(path) and path not in sys.path:
            sys.path.append(path)  # appended: the user's folders never shadow installed packages


def _failure(name: str, exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _import_one(name: str, allow_failed: bool, where: str) -> bool:
    """Import ``name``; True on success. A module that is not found is retried with the current directory on
    ``sys.path`` (MMSeg's tools run with it there)."""
    try:
        importlib.import_module(name)
        return True
    except ImportError as exc:
        cwd = os.getcwd()
        if isinstance(exc, ModuleNotFoundError) and cwd not in sys.path and os.path.isdir(cwd):
            sys.path.append(cwd)
            try:
                importlib.import_module(name)
                return True
            except ImportError as again:
                exc = again
        message = (f"{where}: cannot import {name!r}: {_failure(name, exc)}. The module must be importable in every "
                   f"Ray process: installed, on PYTHONPATH, in the current directory, or shipped with "
                   f"`ray job submit --working-dir`")
        if allow_failed:
            warnings.warn(message + " (allow_failed_imports: true, so it is skipped)", UserWarning, stacklevel=3)
            return False
        raise ConfigError(message) from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: importing {name!r}: {exc}") from None
    except Exception as exc:  # the user's module raised while it ran: say which module and where
        raise ConfigError(f"{where}: importing {name!r} failed: {_failure(name, exc)}") from exc


def import_custom_modules(what: Union[CustomImportsSpec, Dict[str, Any], None],
                          where: str = "custom_imports") -> CustomImportsSpec:
    """Import the modules of a ``CustomImportsSpec`` or of a config dict's ``custom_imports``; return the spec
    with ``paths`` (the folders they came from) filled in. Cheap when already done in this process.

    A module that cannot be imported raises ``ConfigError`` naming it, or warns when ``allow_failed_imports``.
    On the driver this also records the modules for the job's runtime env (``runtime_env_vars``), so Ray
    processes started afterwards import them at start-up.
    """
    if isinstance(what, dict):
        spec = resolve_custom_imports(what.get("custom_imports"), where)
    else:
        spec = what or CustomImportsSpec()
    if not spec.modules:
        return spec
    _add_paths(list(spec.paths))
    paths = list(spec.paths)
    for name in spec.modules:
        if name in _imported and name in sys.modules:
            ok = True
        else:
            ok = _import_one(name, spec.allow_failed_imports, where)
        if not ok:
            continue
        _imported.add(name)
        root = _module_root(name)
        if root and root not in paths and not any(part in root for part in ("site-packages", "dist-packages")):
            paths.append(root)
    for name in spec.modules:
        if name not in _exported["modules"]:
            _exported["modules"].append(name)
    for path in paths:
        if path not in _exported["paths"]:
            _exported["paths"].append(path)
    return CustomImportsSpec(modules=spec.modules, allow_failed_imports=spec.allow_failed_imports,
                             paths=tuple(paths))


def runtime_env_vars() -> Dict[str, str]:
    """``{RAYSEG_CUSTOM_IMPORTS: json}`` for the job's runtime env once this process imported custom modules,
    else ``{}``. Workers import them at start-up (``import_from_environment``)."""
    if not _exported["modules"]:
        return {}
    return {ENV_VAR: json.dumps({"modules": list(_exported["modules"]), "paths": list(_exported["paths"])})}


def import_from_environment() -> None:
    """In a Ray worker process at start-up: import the modules ``RAYSEG_CUSTOM_IMPORTS`` names.

    Never raises: a setup hook that fails kills the worker with an error about the hook, not the module. A
    module that cannot be imported here is logged; the entry point's own import then reports it properly.
    """
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return
    try:
        data = json.loads(raw)
        spec = CustomImportsSpec(modules=tuple(data.get("modules") or ()), allow_failed_imports=True,
                                 paths=tuple(data.get("paths") or ()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import_custom_modules(spec, where=ENV_VAR)
    except Exception as exc:  # see the docstring
        _logger.warning(f"{ENV_VAR}: {exc}")


def reset_for_tests() -> None:
    """Forget what this process imported and exported (tests that import throw-away packages)."""
    _imported.clear()
    _exported.update({"modules": [], "paths": [], "allow_failed_imports": True})
