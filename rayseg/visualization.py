"""Looking at segmentations: colour label maps, blend them over images, save palette PNGs, plot confusion.

Images are BGR uint8 H×W×3 (as OpenCV decodes them, like the rest of rayseg); palettes are lists of RGB
triples, one per class, as in the dataset classes' ``PALETTE``.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
from PIL import Image

from rayseg.errors import DataError

ImageLike = Union[str, os.PathLike, np.ndarray]


def _palette_array(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """The palette as a (K, 3) uint8 RGB array; a ValueError names a malformed palette."""
    arr = np.asarray(palette)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"palette must be a non-empty list of RGB triples, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
        raise ValueError("palette values must be integers in 0..255")
    return arr.astype(np.uint8)


def _label_array(seg: Any) -> np.ndarray:
    """``seg`` as an (H, W) integer numpy array (torch tensors are moved to the CPU)."""
    if hasattr(seg, "detach"):  # a torch tensor, without importing torch here
        seg = seg.detach().cpu().numpy()
    seg = np.asarray(seg)
    if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"a label map must be an (H, W) array of integer class indices, got "
                         f"shape {seg.shape} and dtype {seg.dtype}")
    return seg


def _check_labels(seg: np.ndarray, num_colours: int, ignore_index: Optional[int]) -> np.ndarray:
    """Mask of pixels to colour; a ValueError lists labels that have no palette entry."""
    valid = seg != ignore_index if ignore_index is not None else np.ones(seg.shape, bool)
    labels = seg[valid]
    if labels.size and (labels.min() < 0 or labels.max() >= num_colours):
        bad = np.unique(labels[(labels < 0) | (labels >= num_colours)])
        raise ValueError(f"label map has values {bad[:10].tolist()} with no colour: the palette has "
                         f"{num_colours} entries (ignore index {ignore_index})")
    return valid


def colorize(seg: Any, palette: Sequence[Sequence[int]], ignore_index: Optional[int] = 255) -> np.ndarray:
    """Colour an (H, W) label map with ``palette``: a BGR uint8 (H, W, 3) image.

    Pixels equal to ``ignore_index`` are black. Labels without a palette entry raise ValueError.
    """
    seg = _label_array(seg)
    colours = _palette_array(palette)
    valid = _check_labels(seg, len(colours), ignore_index)
    out = np.zeros((*seg.shape, 3), np.uint8)
    out[valid] = colours[seg[valid]][:, ::-1]  # RGB palette → BGR image
    return out


def _read_image(img: ImageLike) -> np.ndarray:
    """A BGR uint8 image from a path (DataError naming it when unreadable) or an array."""
    if isinstance(img, (str, os.PathLike)):
        path = os.fspath(img)
        data = cv2.imread(path, cv2.IMREAD_COLOR) if os.path.isfile(path) else None
        if data is None:
            raise DataError(f"cannot read image {path} (missing, not an image file, or corrupt)")
        return data
    img = np.asarray(img)
    if img.ndim == 2:  # greyscale: show it as grey BGR
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a BGR image of shape (H, W, 3), got shape {img.shape}")
    return img.astype(np.uint8, copy=False)


def _write_image(path: Union[str, os.PathLike], img: np.ndarray) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if not cv2.imwrite(path, img):
        raise OSError(f"could not write image {path} (check the file extension and permissions)")


def show_result(img: ImageLike, seg: Any, palette: Sequence[Sequence[int]], opacity: float = 0.5,
                out_file: Optional[Union[str, os.PathLike]] = None, ignore_index: Optional[int] = 255) -> np.ndarray:
    """Blend the colour-coded ``seg`` over ``img`` (a path or a BGR array); returns the BGR result.

    As MMSeg: ``img * (1 - opacity) + colour * opacity``, truncated to uint8; pixels equal to
    ``ignore_index`` blend with black. ``out_file`` (folders created) receives the image when given.
    A ``seg`` whose size differs from the image's is a ValueError naming both shapes.
    """
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity!r}")
    image = _read_image(img)
    seg = _label_array(seg)
    if seg.shape != image.shape[:2]:
        raise ValueError(f"label map shape {seg.shape} does not match image shape {image.shape[:2]} (H, W)")
    colour = colorize(seg, palette, ignore_index)
    blended = (image * (1 - opacity) + colour * opacity).astype(np.uint8)
    if out_file is not None:
        _write_image(out_file, blended)
    return blended


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner on a dark box (readable over any colours)."""
    h, w = img.shape[:2]
    scale = max(0.35, min(h, w) / 500)  # grows with the image so it stays readable on large frames
    thickness = max(1, round(scale * 2))
    (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, th // 3)
    cv2.rectangle(img, (0, 0), (tw + 2 * pad, th + baseline + 2 * pad), (0, 0, 0), -1)
    cv2.putText(img, text, (pad, th + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
    return img


def side_by_side(img: ImageLike, pred: Any, gt: Any, palette: Sequence[Sequence[int]], opacity: float = 0.5,
                 ignore_index: Optional[int] = 255) -> np.ndarray:
    """``prediction`` overlay | ``ground truth`` overlay, side by side: a BGR (H, 2W, 3) image.

    Each half is ``show_result`` of its label map, labelled in its top-left corner.
    """
    image = _read_image(img)
    left = _label(show_result(image, pred, palette, opacity, ignore_index=ignore_index), "prediction")
    right = _label(show_result(image, gt, palette, opacity, ignore_index=ignore_index), "ground truth")
    return np.concatenate([left, right], axis=1)


def save_label_png(path: Union[str, os.PathLike], seg: Any, palette: Sequence[Sequence[int]],
                   ignore_index: Optional[int] = 255) -> None:
    """Write ``seg`` as a palette-mode ("P") PNG: pixel values are the class indices, shown in the
    dataset's colours (index ``ignore_index`` is black). PIL reads the indices back; parent folders
    are created. Labels without a palette entry raise ValueError.
    """
    seg = _label_array(seg)
    colours = _palette_array(palette)
    if len(colours) > 256:
        raise ValueError(f"a palette PNG holds at most 256 colours; the palette has {len(colours)}")
    _check_labels(seg, len(colours), ignore_index)
    if seg.size and (seg.min() < 0 or seg.max() > 255):
        raise ValueError(f"a palette PNG stores indices 0..255; the label map holds {seg.min()}..{seg.max()}")
    table = np.zeros((256, 3), np.uint8)  # full 256-entry table: unused indices (e.g. 255) are black
    table[: len(colours)] = colours
    image = Image.fromarray(seg.astype(np.uint8))  # mode "L"; putpalette turns it into "P"
    image.putpalette(table.ravel().tolist())
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path, format="PNG")


def plot_confusion_matrix(matrix: Any, class_names: Sequence[str], path: Union[str, os.PathLike],
                          title: Optional[str] = None, normalize: bool = True) -> str:
    """Save a confusion matrix (rows ground truth, columns prediction) as a PNG; returns the path.

    The matrix is row-normalised first (each ground-truth row sums to 1; empty rows stay 0), which
    leaves an already normalised matrix unchanged; ``normalize=False`` plots it as given. Cells show
    their values up to 40 classes; the figure grows with the number of classes so 19 or 150 class
    names stay legible. Uses matplotlib's Agg canvas directly (no pyplot state, no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.asarray(matrix, dtype=np.float64)
    n = len(class_names)
    if values.shape != (n, n):
        raise ValueError(f"confusion matrix has shape {values.shape} but there are {n} class names")
    if normalize:
        rows = values.sum(axis=1, keepdims=True)
        values = np.divide(values, rows, out=np.zeros_like(values), where=rows > 0)

    # Inches per class: room for the cell text up to 40 classes; beyond, just enough for a 6 pt name
    # per row (150 classes → a 2700-pixel square, which renders in a few seconds).
    per_class = 0.45 if n <= 40 else 0.16
    side = max(6.0, per_class * n + 3.0)
    label_size = 9 if n <= 40 else 6
    fig = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    top = 1.0 if normalize else max(float(values.max()), 1.0)
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=top, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(n)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels([str(c) for c in class_names], rotation=90, fontsize=label_size)
    ax.set_yticklabels([str(c) for c in class_names], fontsize=label_size)
    ax.set_xlabel("prediction", fontsize=label_size + 3)
    ax.set_ylabel("ground truth", fontsize=label_size + 3)
    ax.set_title(title or ("normalised confusion matrix" if normalize else "confusion matrix"),
                 fontsize=label_size + 5)
    if n <= 40:  # beyond that the numbers would overlap; the colours still show the structure
        threshold = top / 2  # white text on dark cells
        cell_size = 8 if n <= 20 else 6
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=cell_size,
                        color="white" if values[i, j] > threshold else "black")
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path
