"""``CustomDataset``: image/mask pairs in MMSeg's custom layout, listed once into a manifest.

Layout (paths relative to ``data_root``)::

    img_dir/xxx{img_suffix}   ann_dir/xxx{seg_map_suffix}

The dataset only lists files and runs pipelines; Ray Data reads the bytes (from ``manifest()``) and calls
``prepare_train`` / ``prepare_test`` in its workers.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa

from rayseg.datasets import listing
from rayseg.datasets.compose import build_pipeline
from rayseg.datasets.loading import LoadAnnotations, as_label_map
from rayseg.errors import ConfigError, DataError
from rayseg.registry import DATASETS, build

_MAX_LISTED = 5  # how many offending files an error message names before summarising


def _listing(items: Sequence[str]) -> str:
    shown = "; ".join(items[:_MAX_LISTED])
    return shown + (f"; … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _default_palette(n: int) -> List[List[int]]:
    # MMSeg's choice: a fixed-seed random palette, drawn without disturbing the global numpy RNG.
    return np.random.RandomState(42).randint(0, 255, size=(n, 3)).tolist()


def _as_list(value: Any) -> List[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


@DATASETS.register()
class CustomDataset:
    """A semantic segmentation dataset in MMSeg's custom layout.

    Defaults come from class attributes, so a dataset class declares what differs and needs no
    constructor of its own: ``IMG_SUFFIX``, ``SEG_MAP_SUFFIX``, ``REDUCE_ZERO_LABEL``, ``IGNORE_INDEX``,
    ``LABEL_MAP`` and ``REQUIRES_SPLIT``; a constructor argument left at None takes the class's value.

    Label values go through three steps, one lookup table (docs/datasets.md):

    1. ``label_map`` (old → new on the raw mask values): the class's ``LABEL_MAP`` (e.g. CamVid's void
       11 → 255) with the user's entries merged over it;
    2. ``reduce_zero_label``: 0 → 255, k → k−1, 255 stays;
    3. ``subset_label_map``: when ``classes`` (names, or a path to a file with one per line) selects a
       subset of ``CLASSES``, old class index → new index, dropped classes → ``ignore_index``. As in
       MMSeg 1.x this runs after the reduction, so it is indexed by the reduced labels.

    ``data_root``, the folders and split files may be local or on object storage (``s3://``, ``gs://``:
    ``rayseg.datasets.listing``). ``manifest`` (a Parquet file ``jobs/build_manifest.py`` wrote, local or a URI)
    replaces the listing: the samples are its rows, and nothing is listed or checked for existence.

    ``ann_dir`` and ``split`` may be equal-length lists (one ``ann_dir`` may serve several splits): the
    samples of each (ann_dir, split) pair are concatenated in order, duplicates kept, as MMSeg builds a
    ConcatDataset from such lists (``pascal_voc12_aug``).
    """

    CLASSES: Optional[Tuple[str, ...]] = None
    PALETTE: Optional[List[List[int]]] = None
    IMG_SUFFIX = ".jpg"
    SEG_MAP_SUFFIX = ".png"
    REDUCE_ZERO_LABEL = False
    IGNORE_INDEX = 255
    LABEL_MAP: Dict[int, int] = {}  # raw mask value → new value, always applied (user entries win)
    REQUIRES_SPLIT = False

    def __init__(
        self,
        pipeline: Sequence[Dict[str, Any]],
        data_root: Optional[str] = None,
        img_dir: str = "",
        ann_dir: Union[None, str, Sequence[str]] = None,
        img_suffix: Optional[str] = None,
        seg_map_suffix: Optional[str] = None,
        split: Union[None, str, Sequence[str]] = None,
        classes: Any = None,
        palette: Optional[Sequence[Sequence[int]]] = None,
        label_map: Any = None,
        reduce_zero_label: Optional[bool] = None,
        ignore_index: Optional[int] = None,
        test_mode: bool = False,
        manifest: Optional[str] = None,
    ):
        self.pipeline_cfg = [dict(c) for c in pipeline]
        self.pipeline = build_pipeline(self.pipeline_cfg)  # config errors surface at construction
        self.data_root = data_root
        self.img_dir = self._join(img_dir)
        self._parts = self._ann_split_pairs(ann_dir, split)
        self.ann_dirs = [a for a, _ in self._parts]
        self.splits = [s for _, s in self._parts]
        # The first pair under MMSeg's singular names (the only one unless lists were given).
        self.ann_dir, self.split = self._parts[0]
        self.img_suffix = self.IMG_SUFFIX if img_suffix is None else img_suffix
        self.seg_map_suffix = self.SEG_MAP_SUFFIX if seg_map_suffix is None else seg_map_suffix
        self.reduce_zero_label = bool(self.REDUCE_ZERO_LABEL if reduce_zero_label is None else reduce_zero_label)
        self.ignore_index = int(self.IGNORE_INDEX if ignore_index is None else ignore_index)
        self.test_mode = test_mode
        self.CLASSES, self.PALETTE, subset_map = self._classes_and_palette(classes, palette)
        self.subset_label_map: Optional[Dict[int, int]] = subset_map or None
        merged = {**as_label_map(self.LABEL_MAP), **(as_label_map(label_map) or {})}
        self.label_map: Optional[Dict[int, int]] = merged or None
        self.manifest_path = self._join(manifest) if manifest is not None else None
        self._samples = self._list_samples()

    # ------------------------------------------------------------------ listing
    def _join(self, path: str) -> str:
        """``path`` under ``data_root`` (either may be a local path or a ``scheme://`` URI), made absolute."""
        if self.data_root is not None:
            path = listing.join(self.data_root, path)
        return listing.absolute(path)

    def _ann_split_pairs(self, ann_dir: Any, split: Any) -> List[Tuple[Optional[str], Optional[str]]]:
        """[(ann_dir, split)] as absolute paths (None where absent), one pair per split file."""
        name = type(self).__name__
        if split is None and self.REQUIRES_SPLIT:
            raise ConfigError(f"{name}: a split file is required (e.g. ImageSets/Segmentation/train.txt)")
        ann_dirs, splits = _as_list(ann_dir), _as_list(split)
        if not ann_dirs or not splits:
            raise ConfigError(f"{name}: ann_dir and split must not be empty lists")
        if len(ann_dirs) == 1 and len(splits) > 1:
            ann_dirs = ann_dirs * len(splits)
        if len(ann_dirs) != len(splits):
            raise ConfigError(f"{name}: ann_dir has {len(ann_dirs)} entries but split has {len(splits)}; "
                              f"give one ann_dir per split file")
        return [(self._join(a) if a is not None else None, self._join(s) if s is not None else None)
                for a, s in zip(ann_dirs, splits)]

    def _classes_and_palette(self, classes: Any, palette: Any) -> Tuple[Tuple[str, ...], Any, Dict[int, int]]:
        subset_map: Dict[int, int] = {}
        if classes is None:
            names = self.CLASSES
            if names is None:
                raise ConfigError(f"{type(self).__name__}: no CLASSES defined; pass classes=[...]")
        else:
            if isinstance(classes, str):
                with open(self._join(classes)) as f:
                    classes = [line.strip() for line in f if line.strip()]
            names = tuple(classes)
            if self.CLASSES is not None and tuple(self.CLASSES) != names:
                unknown = [c for c in names if c not in self.CLASSES]
                if unknown:
                    raise ConfigError(f"{type(self).__name__}: classes {unknown} are not in CLASSES {self.CLASSES}")
                subset_map = {i: (names.index(c) if c in names else self.ignore_index)
                              for i, c in enumerate(self.CLASSES)}
        if palette is None:
            if subset_map and self.PALETTE is not None:
                palette = [self.PALETTE[old] for old, new in sorted(subset_map.items(), key=lambda x: x[1])
                           if new != self.ignore_index]
            elif self.PALETTE is not None and len(self.PALETTE) == len(names):
                palette = self.PALETTE
            else:
                palette = _default_palette(len(names))
        palette = [[int(v) for v in c] for c in palette]
        if len(palette) != len(names) or any(len(c) != 3 for c in palette):
            raise ConfigError(f"{type(self).__name__}: palette needs one RGB triple per class ({len(names)})")
        return names, palette, subset_map

    def _list_samples(self) -> List[Dict[str, Optional[str]]]:
        """The samples of every (ann_dir, split) pair, concatenated in order; or the manifest's rows."""
        if self.manifest_path is not None:
            from rayseg.datasets.manifest import read_manifest

            return read_manifest(self.manifest_path, with_masks=self._parts[0][0] is not None)
        self._trees: Dict[str, listing.FileTree] = {}
        if not self._tree(self.img_dir).exists():
            raise DataError(f"image directory {self.img_dir} does not exist")
        samples: List[Dict[str, Optional[str]]] = []
        for ann_dir, split in self._parts:
            samples.extend(self._list_part(ann_dir, split))
        return samples

    def _tree(self, directory: str) -> listing.FileTree:
        """One listing per folder per dataset (object storage is listed once, not asked once per file)."""
        trees = self.__dict__.setdefault("_trees", {})
        if directory not in trees:
            trees[directory] = listing.FileTree(directory)
        return trees[directory]

    def _list_part(self, ann_dir: Optional[str], split: Optional[str]) -> List[Dict[str, Optional[str]]]:
        if ann_dir is not None and not self._tree(ann_dir).exists():
            raise DataError(f"annotation directory {ann_dir} does not exist")
        images = self._tree(self.img_dir)
        if split is not None:
            if not listing.is_file(split):
                raise DataError(f"split file {split} does not exist")
            stems = [line.strip() for line in listing.read_text(split).splitlines() if line.strip()]
            rel = [s + self.img_suffix for s in stems]
            absent = [listing.join(self.img_dir, r) for r in rel if not images.has(r)]
            if absent:
                raise DataError(f"split {split} names {len(absent)} image(s) that do not exist: {_listing(absent)}")
        else:
            rel = images.files(self.img_suffix)
        rel = sorted(rel)
        if not rel:
            raise DataError(f"no images ending in {self.img_suffix!r} found in {self.img_dir}")
        mask_rel = [r[: -len(self.img_suffix)] + self.seg_map_suffix for r in rel]
        samples = [{"img_path": listing.join(self.img_dir, r),
                    "seg_path": None if ann_dir is None else listing.join(ann_dir, m)} for r, m in zip(rel, mask_rel)]
        if ann_dir is not None:
            masks = self._tree(ann_dir)
            missing = [f"{s['img_path']} (expected mask {s['seg_path']})"
                       for s, m in zip(samples, mask_rel) if not masks.has(m)]
            if missing:
                raise DataError(f"{len(missing)} image(s) have no mask: {_listing(missing)}")
        return samples

    # ------------------------------------------------------------------ access
    @property
    def samples(self) -> List[Dict[str, Optional[str]]]:
        """``[{"img_path", "seg_path"}]``, sorted, absolute paths (``seg_path`` None without ann_dir)."""
        return [dict(s) for s in self._samples]

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        sample = self._samples[idx]
        return self.prepare_test(sample) if self.test_mode else self.prepare_train(sample)

    @property
    def num_classes(self) -> int:
        return len(self.CLASSES)

    def dataset_fields(self) -> Dict[str, Any]:
        """Fields every results dict gets before the pipeline runs (read by LoadAnnotations)."""
        return {
            "label_map": self.label_map,
            "reduce_zero_label": self.reduce_zero_label,
            "subset_label_map": self.subset_label_map,
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
        }

    def manifest(self) -> pa.Table:
        """One row per sample: paths plus the dataset's metadata (repeated per row so each row is
        self-contained for Ray Data). ``label_map`` and ``subset_label_map`` are map<int64, int64> columns
        (rows read back as lists of pairs); ``pipeline`` is the pipeline config list as a JSON string."""
        n = len(self._samples)

        def pairs(mapping: Optional[Dict[int, int]]) -> pa.Array:
            return pa.array([sorted(mapping.items()) if mapping else None] * n, pa.map_(pa.int64(), pa.int64()))

        columns = {
            "img_path": pa.array([s["img_path"] for s in self._samples], pa.string()),
            "seg_path": pa.array([s["seg_path"] for s in self._samples], pa.string()),
            "num_classes": pa.array([self.num_classes] * n, pa.int64()),
            "class_names": pa.array([list(self.CLASSES)] * n, pa.list_(pa.string())),
            "palette": pa.array([self.PALETTE] * n, pa.list_(pa.list_(pa.int64()))),
            "ignore_index": pa.array([self.ignore_index] * n, pa.int64()),
            "label_map": pairs(self.label_map),
            "reduce_zero_label": pa.array([self.reduce_zero_label] * n, pa.bool_()),
            "subset_label_map": pairs(self.subset_label_map),
            "pipeline": pa.array([json.dumps(self.pipeline_cfg)] * n, pa.string()),
        }
        return pa.table(columns)

    # ------------------------------------------------------------------ pipelines
    def prepare_train(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        """Add the dataset fields to a copy of ``sample`` and run the pipeline."""
        results = dict(sample)
        results.update(self.dataset_fields())
        return self.pipeline(results)

    def prepare_test(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        """Run the (test) pipeline for the image, then load the ground truth at the ORIGINAL size.

        MMSeg evaluates against the original-size mask while ``img`` is the resized test image, so
        ``gt_semantic_seg`` comes from LoadAnnotations (label_map, reduce_zero_label, range check) and is
        not passed through the pipeline's geometric steps.
        """
        seg_bytes = sample.get("seg_bytes")
        results = dict(sample)
        results.update(self.dataset_fields())
        results = self.pipeline(results)
        results.pop("seg_bytes", None)  # raw bytes are not part of the output batch
        if sample.get("seg_path") is None and seg_bytes is None:
            return results
        gt = {
            "seg_path": sample.get("seg_path"),
            "filename": results.get("filename", sample.get("img_path")),
            "ori_shape": results.get("ori_shape"),
            **self.dataset_fields(),
        }
        if seg_bytes is not None:
            gt["seg_bytes"] = seg_bytes
        gt = LoadAnnotations()(gt)
        results["gt_semantic_seg"] = gt["gt_semantic_seg"]
        return results

    def validate(self, check_sizes: bool = True) -> None:
        """Check every sample's file headers without decoding pixels (``rayseg.datasets.check.check_headers``):
        each image and mask opens and is not truncated, the mask exists, is single-channel or palette and
        has its image's size. Raises DataError listing the problems; ``check_sizes=False`` skips the check.
        ``jobs/check_dataset.py`` runs the same check in parallel on Ray, and with ``--full`` the pixels too."""
        if not check_sizes:
            return
        from rayseg.datasets.check import check_headers  # check.py builds on this module

        problems = [p.line() for s in self._samples for p in check_headers(s["img_path"], s["seg_path"])]
        if problems:
            raise DataError(f"{len(problems)} problem(s) in the files of {self!r}: {_listing(problems)}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(img_dir={self.img_dir!r}, ann_dir={self.ann_dir!r}, "
                f"num_samples={len(self)}, classes={len(self.CLASSES)})")


def build_dataset(cfg: Dict[str, Any], **default_args: Any) -> CustomDataset:
    """Build a dataset from ``{"type": "CamVidDataset", ...}`` (see the DATASETS registry)."""
    return build(cfg, DATASETS, **default_args)
