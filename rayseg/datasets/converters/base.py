"""The frame every dataset converter runs in: units of work as Ray tasks, resumable, failures listed.

A converter (one module per dataset, registered in ``CONVERTERS``) turns an official download (``src``) into
the layout its dataset class reads (``dst``). It only *plans*: ``units()`` lists independent pieces of work
(usually one per input file), each a module-level function plus its keyword arguments, and ``finish()``
writes what needs every unit done (split lists, a summary). ``run_conversion`` does the rest:

- runs the units as Ray tasks (``nproc`` at once) with a progress bar;
- is resumable: a unit whose outputs were all written before (recorded in ``dst/.rayseg_convert.jsonl``,
  and still present) is skipped, so a second run after a crash or Ctrl-C does only what is left;
- never stops halfway for a bad input: a unit that raises is listed (its inputs and the error) in the
  returned ``ConversionReport`` and the others carry on; ``finish()`` runs only when no unit failed.

Outputs are written with ``write_image``, ``write_text``, ``write_bytes`` or ``copy_file`` (to a temporary
name, then renamed), so a file that exists is complete. ``check_layout`` names what a source lacks.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from rayseg.errors import ConfigError, DataError
from rayseg.registry import Registry

CONVERTERS = Registry("dataset converter")
JOURNAL = ".rayseg_convert.jsonl"


@dataclass
class Unit:
    """One independent piece of a conversion.

    ``key`` names it uniquely within the conversion (usually the input's path relative to ``src``);
    ``fn(**kwargs)`` does the work and returns the paths it wrote; ``inputs`` are the source files it reads
    (named in the report when it fails).
    """

    key: str
    fn: Callable[..., Sequence[str]]
    kwargs: Dict[str, Any]
    inputs: Sequence[str] = ()


@dataclass
class Failure:
    key: str
    inputs: List[str]
    error: str

    def line(self) -> str:
        return f"{', '.join(self.inputs) or self.key}: {self.error}"


@dataclass
class ConversionReport:
    name: str
    src: str
    dst: str
    units: int = 0
    done: int = 0
    skipped: int = 0
    failures: List[Failure] = field(default_factory=list)
    outputs: int = 0
    seconds: float = 0.0
    finished: bool = False  # finish() ran (every unit succeeded)

    @property
    def ok(self) -> bool:
        return not self.failures and self.finished

    def summary(self) -> str:
        text = (f"{self.name}: {self.done} converted, {self.skipped} already done (skipped), "
                f"{len(self.failures)} failed, of {self.units} units; {self.outputs} files written to {self.dst} "
                f"in {self.seconds:.1f} s")
        if self.failures:
            shown = "\n".join(f"  {f.line()}" for f in self.failures[:50])
            more = f"\n  … and {len(self.failures) - 50} more" if len(self.failures) > 50 else ""
            text += (f"\ncould not convert {len(self.failures)} input(s); nothing else was lost, and running the "
                     f"same command again converts only what is left:\n{shown}{more}")
        return text


class Converter:
    """Base class: subclasses set ``name`` (via registration), implement ``units`` and maybe ``finish``.

    Constructor keywords are the converter's options (``jobs/convert_dataset.py`` passes ``--option K=V``);
    unknown ones are an error, as for every config part.
    """

    def __init__(self, src: str, dst: str):
        self.src = os.path.abspath(src)
        self.dst = os.path.abspath(dst)

    def check_source(self) -> None:
        """Raise DataError naming what is missing when ``src`` is not the official layout (override)."""
        if not os.path.isdir(self.src):
            raise DataError(f"source {self.src} does not exist or is not a directory")

    def units(self) -> List[Unit]:
        raise NotImplementedError

    def finish(self, written: List[str]) -> List[str]:
        """Runs on the driver after every unit succeeded; ``written`` lists every output (this run's and the
        earlier runs'). Returns the extra files it wrote (split lists, …)."""
        return []


def check_layout(name: str, root: str, required: Sequence[str], hint: str = "") -> None:
    """Raise DataError listing every path of ``required`` (relative to ``root``) that is missing, so a user
    sees at once how their download differs from the official layout ``name`` expects."""
    if not os.path.isdir(root):
        raise DataError(f"{name}: source {root} does not exist or is not a directory")
    missing = [rel for rel in required if not os.path.exists(os.path.join(root, rel))]
    if missing:
        raise DataError(f"{name}: {root} is not the official layout: missing {', '.join(missing)}"
                        + (f" ({hint})" if hint else ""))


# ----------------------------------------------------------------------------- helpers for units
def write_image(path: str, array: np.ndarray, params: Optional[Sequence[int]] = None) -> str:
    """Write ``array`` (H×W or H×W×3 BGR, uint8) with OpenCV, atomically; the format follows the suffix."""
    import cv2

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp-{os.getpid()}{ext}"
    if not cv2.imwrite(tmp, np.ascontiguousarray(array), list(params or [])):
        raise DataError(f"OpenCV could not write {path}")
    os.replace(tmp, path)
    return path


def write_text(path: str, lines: Sequence[str]) -> str:
    """Write one line per item, atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(f"{line}\n" for line in lines)
    os.replace(tmp, path)
    return path


def write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (a file taken unchanged from an archive)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def copy_file(src: str, dst: str, link: bool = False) -> str:
    """Copy ``src`` to ``dst`` atomically, or hard-link it when ``link`` (falling back to a copy where the two
    are on different file systems). For images a converter carries over unchanged."""
    import shutil

    if os.path.abspath(src) == os.path.abspath(dst):
        return dst
    if not os.path.isfile(src):
        raise DataError(f"cannot read {src}: no such file")
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    tmp = f"{dst}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    if link:
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or links not allowed: copy instead
            shutil.copyfile(src, tmp)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def read_image(path: str, flags: Optional[int] = None) -> np.ndarray:
    """Read an image with OpenCV (unchanged by default); falls back to Pillow for formats OpenCV lacks
    (GIF). Raises DataError naming the file."""
    import cv2

    flags = cv2.IMREAD_UNCHANGED if flags is None else flags
    img = cv2.imread(path, flags) if os.path.isfile(path) else None
    if img is None and os.path.isfile(path):
        try:
            from PIL import Image

            with Image.open(path) as im:
                img = np.asarray(im)
        except Exception:  # noqa: BLE001 - any Pillow failure means "unreadable", reported below
            img = None
    if img is None:
        raise DataError(f"cannot read image {path}")
    return img


# ----------------------------------------------------------------------------- the runner
def _run_unit(fn: Callable[..., Sequence[str]], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    try:
        return {"outputs": [str(p) for p in fn(**kwargs)], "error": None}
    except Exception as exc:  # noqa: BLE001 - one bad input is reported, the others go on
        return {"outputs": [], "error": f"{type(exc).__name__}: {exc}"}


def _read_journal(dst: str, name: Optional[str] = None) -> Dict[str, List[str]]:
    """The units of converter ``name`` recorded as done in ``dst``'s journal (key → outputs).

    Several converters may share one ``dst`` (MMSeg puts VOC-aug and Pascal Context both under
    ``VOCdevkit``), so entries carry the converter's name; an entry without one counts for every converter.
    """
    done: Dict[str, List[str]] = {}
    path = os.path.join(dst, JOURNAL)
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a crash: that unit runs again
                    continue
                if not isinstance(entry, dict) or "key" not in entry or "outputs" not in entry:
                    continue
                if name is None or entry.get("converter", name) == name:
                    done[entry["key"]] = entry["outputs"]
    return done


def converter_descriptions() -> Dict[str, str]:
    """Each registered converter's name → the first line of its docstring (``convert_dataset.py --list``)."""
    out = {}
    for name in sorted(CONVERTERS.keys()):
        doc = (CONVERTERS.get(name).__doc__ or "").strip()
        out[name] = doc.splitlines()[0].strip() if doc else ""
    return out


def build_converter(name: str, src: str, dst: str, **options: Any) -> Converter:
    """The registered converter ``name`` (see ``CONVERTERS.keys()``) with its options checked."""
    from rayseg.registry import check_kwargs

    if name not in CONVERTERS:
        raise ConfigError(f"unknown dataset {name!r} for conversion; known: {', '.join(sorted(CONVERTERS.keys()))}")
    cls = CONVERTERS.get(name)
    check_kwargs(cls, {"src": src, "dst": dst, **options}, f"convert_dataset {name}")
    return cls(src=src, dst=dst, **options)


def run_conversion(name: str, src: str, dst: str, nproc: Optional[int] = None, progress: bool = True,
                   address: Optional[str] = None, **options: Any) -> ConversionReport:
    """Convert ``src`` (an official download of dataset ``name``) into ``dst``; see the module docstring.

    ``nproc``: Ray tasks running at once (default: the cluster's CPUs). Connects like training
    (``address``/``RAY_ADDRESS``, else a local Ray). Raises ConfigError/DataError only for a wrong name,
    option or source layout; bad inputs are in the report.
    """
    import ray
    from tqdm import tqdm

    from rayseg.utils.ray_session import connect_ray

    start = time.monotonic()
    converter = build_converter(name, src, dst, **options)
    converter.check_source()
    units = converter.units()
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"converter {name} planned duplicate unit keys")
    os.makedirs(converter.dst, exist_ok=True)
    journal = _read_journal(converter.dst, name)
    report = ConversionReport(name=name, src=converter.src, dst=converter.dst, units=len(units))
    written: List[str] = []
    todo: List[Unit] = []
    for unit in units:
        outputs = journal.get(unit.key)
        if outputs is not None and all(os.path.isfile(p) for p in outputs):
            report.skipped += 1
            written.extend(outputs)
        else:
            todo.append(unit)
    if todo:
        connect_ray(address)
        limit = max(1, int(nproc or ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_retries=0)(_run_unit)
        pending: Dict[Any, Unit] = {}
        queue = list(todo)
        with open(os.path.join(converter.dst, JOURNAL), "a") as log, \
                tqdm(total=len(todo), desc=f"convert {name}", unit="file", disable=not progress) as bar:
            while queue or pending:
                while queue and len(pending) < limit:
                    unit = queue.pop(0)
                    pending[remote.remote(unit.fn, unit.kwargs)] = unit
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    unit = pending.pop(ref)
                    result = ray.get(ref)
                    if result["error"] is not None:
                        report.failures.append(Failure(unit.key, [str(p) for p in unit.inputs], result["error"]))
                    else:
                        report.done += 1
                        written.extend(result["outputs"])
                        log.write(json.dumps({"converter": name, "key": unit.key, "outputs": result["outputs"]}) + "\n")
                        log.flush()
                    bar.update(1)
    if not report.failures:
        written.extend(converter.finish(sorted(written)))
        report.finished = True
    report.outputs = len(written)
    report.seconds = time.monotonic() - start
    return report
