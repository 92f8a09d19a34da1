"""Reading images robustly: one loader for every path in qkcopy that opens an image file.

`load_image` returns a fully decoded RGB image with its EXIF orientation applied, whatever the file holds
(CMYK, 16-bit, palette, alpha), or raises `ImageError` naming the file and the reason. Loops over folders
never stop on a bad file: they skip it into a `SkipLog` and report the count and names at the end.

Letters: B batch (items in a collated batch).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from qkcopy.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
WHITE = (255, 255, 255)


# Reason codes of ImageError: what kind of bad image, for callers that act on the kind (the service maps each
# to one HTTP status in qkcopy.serve.errors) rather than on the message text.
MISSING, EMPTY, UNIDENTIFIED, FORMAT, TOO_MANY_PIXELS, BOMB, CORRUPT = (
    "missing", "empty", "unidentified", "format", "too_many_pixels", "bomb", "corrupt")


class ImageError(DataError):
    """An image file that cannot be used; `path` is the file, `reason` says why, `code` is the kind of fault."""

    def __init__(self, path: str | Path, reason: str, code: str = CORRUPT) -> None:
        self.path = Path(path)
        self.reason = reason
        self.code = code
        super().__init__(f"{self.path}: {reason}", self.path)

    def __reduce__(self):  # picklable across DataLoader worker processes
        return type(self), (self.path, self.reason, self.code)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → RGB; transparent pixels are composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16/32-bit integer grey
        grey = np.asarray(img, dtype=np.float64) / 257.0  # (H, W) 0..65535 → 0..255
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":  # float grey: 0..1 when it looks normalised, else 0..255
        grey = np.asarray(img, dtype=np.float64)
        if np.nanmax(grey, initial=0.0) <= 1.0:
            grey = grey * 255.0
        return Image.fromarray(np.clip(np.nan_to_num(grey), 0, 255).astype(np.uint8)).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*WHITE, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, *, max_pixels: int = 100_000_000) -> Image.Image:
    """Decode `path` into an RGB image, or raise `ImageError` saying which file and why.

    Applies the EXIF orientation; converts CMYK, 16-bit, palette and alpha images (alpha over white).
    Refuses images over `max_pixels` pixels before decoding them, and also over PIL's own
    decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`), whichever is smaller.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "no such file", MISSING)
    if path.stat().st_size == 0:
        raise ImageError(path, "empty file (0 bytes)", EMPTY)
    # Scoped to this call: PIL's bomb *warning* becomes an error here only (not thread-safe, like every
    # warnings.catch_warnings; DataLoader workers are processes, so this is fine).
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return _decode(path, path, max_pixels)


def decode_image(data: bytes, name: str = "<upload>", *, max_pixels: int = 100_000_000,
                 formats: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})) -> Image.Image:
    """`load_image` for bytes (an upload), decoded from memory: the same guards, and the format sniffed from the
    content (not a name) and refused unless in `formats`; raises `ImageError` naming `name` and the reason.

    Thread-safe (no warnings filter): the pixel count is checked against PIL's bomb limit explicitly."""
    if not data:
        raise ImageError(name, "empty file (0 bytes)", EMPTY)
    return _decode(io.BytesIO(data), name, min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels), formats)


def _decode(source, name: str | Path, max_pixels: int, formats: frozenset[str] | None = None) -> Image.Image:
    """The one decoder behind `load_image` and `decode_image` (`source`: a path or a binary file object)."""
    try:
        with Image.open(source) as img:
            if formats is not None and img.format not in formats:
                raise ImageError(name, f"image format {img.format} is not accepted (accepted: "
                                 f"{', '.join(sorted(formats))})", FORMAT)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(name, f"{w}x{h} = {w * h} pixels is over the limit of {max_pixels}",
                                 TOO_MANY_PIXELS)
            img.load()  # decode now so truncation is caught here, not later
            try:
                img = ImageOps.exif_transpose(img) or img
            except Exception as err:  # a broken EXIF block should not cost the picture
                log.debug("%s: ignoring unreadable EXIF orientation (%s)", name, err)
            return _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(name, f"decompression bomb refused, too many pixels ({err})", BOMB) from err
    except Image.UnidentifiedImageError as err:
        raise ImageError(name, "not an image PIL can identify", UNIDENTIFIED) from err
    except Exception as err:  # truncated or corrupt data: PIL raises OSError, SyntaxError, ValueError…
        raise ImageError(name, f"cannot decode ({type(err).__name__}: {err})", CORRUPT) from err


def scan_images(folder: str | Path) -> list[Path]:
    """All image files under `folder` (recursive, by extension, symlinks followed), sorted by path.

    What is left out is counted and named in one warning: hidden files and folders, dangling symlinks,
    folders named like images (their contents are still scanned), symlink loops, special files; files with
    other extensions are counted.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; expected a folder of images")
    paths, left_out, others, seen = [], [], 0, set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        here = Path(root)
        real = os.path.realpath(here)
        if real in seen:
            left_out.append((here, "symlink loop, not followed"))
            dirs[:] = []
            continue
        seen.add(real)
        for d in list(dirs):
            if d.startswith("."):
                left_out.append((here / d, "hidden folder"))
                dirs.remove(d)
            elif Path(d).suffix.lower() in IMAGE_EXTENSIONS:
                left_out.append((here / d, "a folder, not an image (its contents are scanned)"))
        for name in files:
            path = here / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                others += 1
            elif name.startswith("."):
                left_out.append((path, "hidden file"))
            elif not path.exists():
                left_out.append((path, "dangling symlink"))
            elif not path.is_file():
                left_out.append((path, "not a regular file"))
            else:
                paths.append(path)
    _report_left_out(folder, left_out, others)
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}"
                         + (f"; left out {len(left_out)} entries, e.g. {left_out[0][0]} ({left_out[0][1]})"
                            if left_out else ""))
    return sorted(paths, key=lambda p: p.relative_to(folder).as_posix())


def _report_left_out(folder: Path, left_out: list[tuple[Path, str]], others: int, show: int = 20) -> None:
    if others:
        log.info("%s: %d files without an image extension ignored", folder, others)
    if not left_out:
        return
    lines = [f"  {p} ({reason})" for p, reason in sorted(left_out)[:show]]
    if len(left_out) > show:
        lines.append(f"  ... and {len(left_out) - show} more")
    log.warning("%s: left out %d entries that are not image files:\n%s", folder, len(left_out), "\n".join(lines))


class SkipLog:
    """The (path, reason) of each file skipped by a loop, reported once at its end."""

    def __init__(self) -> None:
        self.items: list[tuple[Path, str]] = []

    def add(self, err: ImageError) -> None:
        self.items.append((err.path, err.reason))

    @property
    def count(self) -> int:
        return len(self.items)

    def report(self, logger: logging.Logger = log, what: str = "images", show: int = 20) -> None:
        """Log how many files were skipped and name the first `show` of them."""
        if not self.items:
            logger.info("no unreadable %s", what)
            return
        lines = [f"  {p} ({reason})" for p, reason in self.items[:show]]
        if self.count > show:
            lines.append(f"  ... and {self.count - show} more")
        logger.warning("skipped %d unreadable %s:\n%s", self.count, what, "\n".join(lines))


def iter_images(paths: Sequence[Path], skips: SkipLog, *, max_pixels: int = 100_000_000):
    """Yield (index, path, RGB image) for each readable path; unreadable ones go into `skips`."""
    for i, path in enumerate(paths):
        try:
            img = load_image(path, max_pixels=max_pixels)
        except ImageError as err:
            skips.add(err)
            continue
        yield i, path, img


class ImageDataset(torch.utils.data.Dataset):
    """Item i is `(i, transform(load_image(paths[i])))`, or `(i, None)` when the file is bad.

    The reason for a bad item is kept in `errors` of the process that loaded it; with DataLoader
    workers, call `record_skips(indices, skips)` in the main process to collect the reasons.
    """

    def __init__(self, paths: Sequence[str | Path], transform: Callable[[Image.Image], Any],
                 *, max_pixels: int = 100_000_000) -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.max_pixels = max_pixels
        self.errors: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        try:
            img = load_image(self.paths[index], max_pixels=self.max_pixels)
        except ImageError as err:
            self.errors[index] = err.reason
            return index, None
        return index, self.transform(img)

    def record_skips(self, indices: Sequence[int], skips: SkipLog) -> None:
        """Add skipped `indices` to `skips`, re-reading a file when its reason was lost in a worker."""
        for i in indices:
            reason = self.errors.get(i)
            if reason is None:
                try:
                    load_image(self.paths[i], max_pixels=self.max_pixels)
                    reason = "unreadable when loaded"
                except ImageError as err:
                    reason = err.reason
            skips.add(ImageError(self.paths[i], reason))


def _stack(values: list[Any]) -> Any:
    if isinstance(values[0], tuple):  # transform returned a tuple: stack each field
        return tuple(_stack([v[k] for v in values]) for k in range(len(values[0])))
    if isinstance(values[0], torch.Tensor):
        return torch.stack(values)  # (B, ...)
    return list(values)


def collate_skipping(batch: Sequence[tuple[int, Any]]) -> tuple[torch.Tensor, Any, list[int]]:
    """DataLoader collate for `ImageDataset`: drop bad items.

    Returns (indices (B,) int64, stacked values — or a tuple of stacked values when the transform
    returns a tuple, None when every item was bad — and the list of skipped indices).
    """
    kept = [(i, v) for i, v in batch if v is not None]
    skipped = [int(i) for i, v in batch if v is None]
    indices = torch.tensor([i for i, _ in kept], dtype=torch.long)  # (B,)
    data = _stack([v for _, v in kept]) if kept else None
    return indices, data, skipped


def valid_images(paths: Sequence[Path], what: str = "training images") -> list[Path]:
    """Keep the paths that load; report the others (counted and named), never crash."""
    skips, kept = SkipLog(), []
    for path in tqdm(paths, desc="checking images", unit="img", leave=False):
        try:
            load_image(path)
            kept.append(path)
        except ImageError as err:
            skips.add(err)
    skips.report(log, what)
    return kept
