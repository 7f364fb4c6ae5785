"""Dataset manifests: the (image, mask, size) list of one split, written once as Parquet, so a job on a cluster
reads one file instead of listing a bucket (``jobs/build_manifest.py``; a dataset config's ``manifest:``).

Columns: ``img_path`` and ``seg_path`` (absolute paths or URIs; ``seg_path`` null without masks), ``height`` and
``width`` (the image's, from its header). The sizes are read in parallel Ray tasks from the files' first bytes.
"""
from __future__ import annotations

import io
import math
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow as pa

from rayseg.errors import DataError

COLUMNS = ("img_path", "seg_path", "height", "width")
_BATCH = 16


def _image_size(path: str) -> tuple:
    from PIL import Image

    from rayseg.datasets.ray_data import read_file_bytes

    try:
        with Image.open(io.BytesIO(read_file_bytes(path))) as im:
            width, height = im.size
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises several kinds for a file that is not an image
        raise DataError(f"cannot read the header of {path}: {exc}") from exc
    return height, width


def _sizes_batch(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    sizes = [_image_size(str(p)) for p in batch["img_path"]]
    return {"index": batch["index"], "height": np.array([h for h, _ in sizes], np.int64),
            "width": np.array([w for _, w in sizes], np.int64)}


def manifest_table(samples: List[Dict[str, Optional[str]]], progress: bool = True,
                   address: Optional[str] = None) -> pa.Table:
    """The manifest of ``samples`` (a dataset's ``samples``), reading each image's size in Ray tasks."""
    import ray.data
    from tqdm import tqdm

    from rayseg.utils.ray_session import connect_ray, quiet_ray_data, user_error

    heights = np.zeros(len(samples), np.int64)
    widths = np.zeros(len(samples), np.int64)
    if samples:
        connect_ray(address)
        quiet_ray_data()
        items = [{"index": i, "img_path": s["img_path"]} for i, s in enumerate(samples)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(200, math.ceil(len(items) / _BATCH))))
        ds = ds.map_batches(_sizes_batch, batch_size=_BATCH)
        seen = 0
        with tqdm(total=len(samples), desc="image sizes", unit="image", disable=not progress) as bar:
            try:
                for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    heights[out["index"]] = out["height"]
                    widths[out["index"]] = out["width"]
                    seen += len(out["index"])
                    bar.update(len(out["index"]))
            except Exception as exc:
                cause = user_error(exc)
                if cause is None:
                    raise
                raise cause from None
        if seen != len(samples):
            raise RuntimeError(f"read {seen} image sizes but the split has {len(samples)} samples")
    return pa.table({
        "img_path": pa.array([s["img_path"] for s in samples], pa.string()),
        "seg_path": pa.array([s.get("seg_path") for s in samples], pa.string()),
        "height": pa.array(heights, pa.int64()),
        "width": pa.array(widths, pa.int64()),
    })


def write_manifest(table: pa.Table, out: str) -> str:
    """Write ``table`` to ``out`` (a path or URI) as Parquet, through a temporary name on local disks."""
    import os

    import pyarrow.parquet as pq

    if "://" in out:
        pq.write_table(table, out)
        return out
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return out


def read_manifest(location: str, with_masks: bool = True) -> List[Dict[str, Any]]:
    """The samples of a manifest (``img_path``, ``seg_path``; ``seg_path`` None unless ``with_masks``)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(location)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, FileNotFoundError
        raise DataError(f"cannot read manifest {location}: {exc}") from exc
    missing = [c for c in ("img_path", "seg_path") if c not in table.column_names]
    if missing:
        raise DataError(f"manifest {location} has no column(s) {missing}; write it with jobs/build_manifest.py")
    rows = table.select(["img_path", "seg_path"]).to_pylist()
    if not rows:
        raise DataError(f"manifest {location} lists no samples")
    if with_masks:
        absent = [r["img_path"] for r in rows if not r["seg_path"]]
        if absent:
            raise DataError(f"manifest {location}: {len(absent)} image(s) have no seg_path, e.g. {absent[0]}")
    return [{"img_path": r["img_path"], "seg_path": r["seg_path"] if with_masks else None} for r in rows]


def build_split_manifest(cfg: Dict[str, Any], split: str, out: str, progress: bool = True,
                         address: Optional[str] = None) -> tuple:
    """List ``data.<split>`` of a loaded config, read the image sizes on Ray and write the manifest to ``out``;
    returns ``(where it was written, number of samples)``. Errors name ``data.<split>``."""
    from rayseg.datasets import build_dataset
    from rayseg.errors import ConfigError

    dataset_cfg = (cfg.get("data") or {}).get(split)
    if not isinstance(dataset_cfg, dict):
        raise ConfigError(f"data.{split} is not set in the config")
    if dataset_cfg.get("manifest"):
        raise ConfigError(f"data.{split} already reads a manifest ({dataset_cfg['manifest']}); "
                          f"set data.{split}.manifest=null to list the files again")
    try:
        dataset = build_dataset(dataset_cfg)
    except (ConfigError, DataError) as exc:
        raise type(exc)(f"data.{split}: {exc}") from exc
    table = manifest_table(dataset.samples, progress=progress, address=address)
    return write_manifest(table, out), table.num_rows
