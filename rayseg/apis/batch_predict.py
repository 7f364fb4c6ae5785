"""Batch inference at scale: image files, folders or globs (local or object storage) → label PNGs, on Ray.

The driver expands the inputs into a listing of (URI, output name) rows; Ray Data streams the rows to an
actor pool of model replicas (``map_batches``), each of which reads, decodes, predicts and writes its
images' outputs. An input that cannot be read or decoded becomes a (path, reason) failure instead of
stopping the job, so every readable image still gets its output.
"""
from __future__ import annotations

import fnmatch
import glob
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from tqdm import tqdm

from rayseg.apis.actor_pool import map_rows
from rayseg.custom_imports import import_custom_modules
from rayseg.inference import Predictor, TestPipeline, inference_device, load_inference_model, weights_source

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_MAX_BLOCK_ROWS = 64


@dataclass
class PredictSummary:
    """What a batch prediction did: inputs found, outputs written, and each failure as (path, reason)."""

    num_inputs: int = 0
    num_written: int = 0
    failures: List[Tuple[str, str]] = field(default_factory=list)

    def format(self) -> str:
        """A human-readable summary, one line per failed input."""
        lines = [f"{self.num_written} of {self.num_inputs} image(s) written, {len(self.failures)} failed"]
        lines += [f"  FAILED {path}: {reason}" for path, reason in self.failures]
        return "\n".join(lines)


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _magic_free_base(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard (output names are relative to it)."""
    parts = pattern.split("/")
    base = []
    for part in parts[:-1]:
        if _has_magic(part):
            break
        base.append(part)
    return "/".join(base) or ("/" if pattern.startswith("/") else ".")


def _stem(rel: str) -> str:
    return os.path.splitext(rel.replace(os.sep, "/"))[0]


def _expand_local(spec: str) -> Tuple[List[Tuple[str, str]], Optional[str]]:
    if _has_magic(spec):
        base = _magic_free_base(spec)
        # Matches are taken as given (the user asked for them); a non-image among them is reported.
        found = [m for m in sorted(glob.glob(spec, recursive=True)) if os.path.isfile(m)]
        return [(os.path.abspath(m), _stem(os.path.relpath(m, base))) for m in found], \
            None if found else "no file matches this pattern"
    if os.path.isdir(spec):
        found = []
        for folder, dirs, files in os.walk(spec):
            dirs.sort()
            for name in sorted(files):
                if name.lower().endswith(IMAGE_EXTENSIONS):  # folders may hold other files too
                    path = os.path.join(folder, name)
                    found.append((os.path.abspath(path), _stem(os.path.relpath(path, spec))))
        return found, None if found else "the folder holds no image files"
    if os.path.isfile(spec):
        return [(os.path.abspath(spec), _stem(os.path.basename(spec)))], None
    return [], "no such file or folder"


def _expand_uri(spec: str) -> Tuple[List[Tuple[str, str]], Optional[str]]:
    import pyarrow.fs as pafs

    scheme = spec[: spec.index("://") + 3]
    try:
        fs, path = pafs.FileSystem.from_uri(spec)
        magic = _has_magic(path)
        base = _magic_free_base(path) if magic else path
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            return [], "no such file or folder"
        if info.type == pafs.FileType.File and not magic:
            return [(spec, _stem(os.path.basename(path)))], None
        entries = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except (OSError, ValueError) as exc:
        return [], f"cannot list: {exc}"
    found = []
    for entry in sorted(entries, key=lambda e: e.path):
        if entry.type != pafs.FileType.File:
            continue
        keep = fnmatch.fnmatch(entry.path, path) if magic else entry.path.lower().endswith(IMAGE_EXTENSIONS)
        if keep:
            found.append((scheme + entry.path, _stem(os.path.relpath(entry.path, base))))
    return found, None if found else ("no file matches this pattern" if magic else "the folder holds no image files")


def expand_inputs(inputs: Iterable[str]) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """``(items, failures)``: items are (path or URI, output name without extension), failures are
    (input, reason) for inputs that match nothing. Folders are searched recursively for image files;
    names are relative to the folder (or to a glob's wildcard-free folder); a repeated image is listed
    once and clashing names get a ``_2``, ``_3`` … suffix."""
    items: List[Tuple[str, str]] = []
    failures: List[Tuple[str, str]] = []
    seen, names = set(), set()
    for spec in inputs:
        found, problem = _expand_uri(spec) if "://" in spec else _expand_local(spec)
        if problem:
            failures.append((spec, problem))
        for path, name in found:
            if path in seen:
                continue
            seen.add(path)
            unique, k = name, 1
            while unique in names:
                k += 1
                unique = f"{name}_{k}"
            names.add(unique)
            items.append((path, unique))
    return items, failures


def _write(out_dir: str, rel: str, write_local) -> None:
    """Write one output under ``out_dir`` (a folder or a ``scheme://`` URI) through ``write_local(path)``."""
    if "://" not in out_dir:
        write_local(os.path.join(out_dir, rel))
        return
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(out_dir)
    target = f"{root.rstrip('/')}/{rel}"
    with tempfile.TemporaryDirectory() as tmp:  # encode locally, then upload the finished file
        local = os.path.join(tmp, os.path.basename(rel))
        write_local(local)
        fs.create_dir(os.path.dirname(target), recursive=True)
        with open(local, "rb") as src, fs.open_output_stream(target) as dst:
            dst.write(src.read())


class PredictReplica:
    """One model replica (a Ray Data actor, or called in-process): rows of (path, name) in, one
    ``error`` per row out (empty when the label PNG, and overlay, were written). ``state`` is the loaded
    checkpoint or its ObjectRef."""

    def __init__(self, cfg: Dict[str, Any], state: Any, source: str, palette: Sequence[Sequence[int]],
                 out_dir: str, overlay: bool = False, opacity: float = 0.5, use_gpu: bool = False):
        import_custom_modules(cfg)  # custom_imports, in this actor too (rayseg.custom_imports)
        self.pipeline = TestPipeline(cfg)  # the same preparation as inference_model
        model = load_inference_model(cfg, state, inference_device(use_gpu), source)
        self.predictor = Predictor.for_pipeline(model, self.pipeline.pipeline_cfg)
        self.palette, self.out_dir, self.overlay, self.opacity = palette, out_dir, overlay, float(opacity)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        from rayseg.datasets.ray_data import read_file_bytes

        paths = [str(p) for p in batch["path"]]
        errors = [""] * len(paths)
        ready: List[Tuple[int, bytes, Dict[str, Any]]] = []
        for i, path in enumerate(paths):
            try:
                data = read_file_bytes(path)
                ready.append((i, data, self.pipeline.from_path({"img_path": path, "img_bytes": data})))
            except Exception as exc:  # any unreadable input is reported and skipped, never fatal
                errors[i] = _reason(exc)
        preds = self.predictor.predict([r for _, _, r in ready])
        for (i, data, _), pred in zip(ready, preds):
            try:
                self._save(str(batch["name"][i]), data, pred)
            except Exception as exc:
                errors[i] = f"cannot write its output: {_reason(exc)}"
        return {"path": np.array(paths, dtype=object), "error": np.array(errors, dtype=object)}

    def _save(self, name: str, data: bytes, pred: np.ndarray) -> None:
        from rayseg.visualization import save_label_png, show_result

        _write(self.out_dir, name + ".png", lambda p: save_label_png(p, pred, self.palette))
        if self.overlay:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            _write(self.out_dir, name + ".jpg", lambda p: show_result(img, pred, self.palette, self.opacity, out_file=p))


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def predict_images(cfg: Dict[str, Any], checkpoint: Union[str, Dict[str, Any]], inputs: Sequence[str], out_dir: str,
                   overlay: bool = False, batch_size: int = 4, num_replicas: int = 1, use_gpu: bool = False,
                   opacity: float = 0.5, progress: bool = True, address: Optional[str] = None,
                   cpus_per_replica: float = 1.0) -> PredictSummary:
    """Predict every image in ``inputs`` and write ``<out_dir>/<name>.png`` (palette PNG of class
    indices in the dataset's colours, the input's size) and, with ``overlay``, ``<name>.jpg``.

    ``inputs``: files, folders (searched recursively), glob patterns, local or ``scheme://`` URIs
    (pyarrow filesystems). ``num_replicas`` model replicas run as a Ray Data actor pool (one GPU each with
    ``use_gpu``; 0 runs one replica in this process); ``batch_size`` images per call, same-size images
    sharing one forward pass. ``out_dir`` may be a URI too. Failures are returned, not raised.
    """
    from rayseg.engine.checkpoint import load_weights_file

    import_custom_modules(cfg)  # custom_imports: before the model is built, and before Ray starts
    items, failures = expand_inputs(inputs)
    summary = PredictSummary(num_inputs=len(items) + len(failures), failures=failures)
    state = checkpoint if isinstance(checkpoint, dict) else load_weights_file(str(checkpoint))
    source = weights_source(checkpoint)
    # Loaded once here so that a wrong checkpoint or config fails before any actor starts.
    palette = load_inference_model(cfg, state, "cpu", source).PALETTE
    if not items:
        return summary
    if "://" not in out_dir:
        out_dir = os.path.abspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
    kwargs = {"cfg": cfg, "source": source, "palette": palette, "out_dir": out_dir, "overlay": overlay,
              "opacity": opacity, "use_gpu": use_gpu}
    columns = {"path": [p for p, _ in items], "name": [n for _, n in items]}
    outputs = map_rows(PredictReplica, columns, state, kwargs, batch_size=batch_size, num_replicas=num_replicas,
                       use_gpu=use_gpu, cpus_per_replica=cpus_per_replica, max_block_rows=_MAX_BLOCK_ROWS,
                       address=address)
    with tqdm(total=len(items), desc="predict", unit="img", disable=not progress, smoothing=0.1) as bar:
        for out in outputs:
            for path, error in zip(out["path"], out["error"]):
                if error:
                    summary.failures.append((str(path), str(error)))
                else:
                    summary.num_written += 1
            bar.update(len(out["path"]))
    return summary
