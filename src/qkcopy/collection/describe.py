"""Describing images for a collection: K for references, Q for queries, in batches, plus their thumbnails.

`Describer` wraps a trained run (qkcopy.model.trained.TrainedModels): `prepare` turns a decoded image into
the model inputs (`TrainedModels.prepare`), `describe` runs a batch of them through one side;
`prepare_regions` gives a query's whole image and up to n proposed regions (`qkcopy.data.regions`) as inputs.
`add_files` is the bulk path of `qkcopy collection add`: exact re-adds are recognised by content hash before
anything is embedded, and every chunk is committed (acknowledged) as soon as it is described, so an
interrupted add keeps what it did and a rerun skips it.

Letters: B batch, S model input size, E descriptor dim, R regions of an image (the whole first).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from qkcopy.collection.collection import Collection
from qkcopy.collection.records import NewRef
from qkcopy.data.images import ImageError, SkipLog, load_image
from qkcopy.data.regions import propose_regions
from qkcopy.data.transforms import image_pair
from qkcopy.model.inference import describe_batch

log = logging.getLogger(__name__)

SIDES = ("query", "reference")
THUMB_SIZE = 160


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def thumbnail(img: Image.Image, size: int = THUMB_SIZE) -> bytes:
    """A small JPEG of `img` (longest side `size`) for the review page."""
    small = img.copy()
    small.thumbnail((size, size))
    buf = io.BytesIO()
    small.convert("RGB").save(buf, "JPEG", quality=80)
    return buf.getvalue()


@dataclass(frozen=True)
class Prepared:
    pixels: torch.Tensor  # (3, S, S) float32
    gist_pixels: torch.Tensor  # (3, 32, 32) float32


RUNTIMES = ("torch", "onnx")


def onnx_sessions(trained, folder: Path, threads: int) -> dict:
    """onnxruntime sessions of q.onnx and k.onnx in `folder`, exported once (`qkcopy export`) if absent.

    The exported files hold the whole descriptor (backbone, head, GIST, PCA; docs/EXPORT.md) and run it about
    2.3× faster than PyTorch on one CPU thread (docs/RESULTS.md); their fingerprint must be the model's."""
    import json

    import onnxruntime as ort

    from qkcopy.model.export import export_models

    meta = folder / "export.json"
    if not meta.is_file() or not (folder / "q.onnx").is_file() or not (folder / "k.onnx").is_file():
        log.info("exporting the model to ONNX in %s (once)", folder)
        export_models(trained, folder, ["onnx"])
    found = json.loads(meta.read_text()).get("fingerprint")
    if found != trained.fingerprint:
        raise ValueError(f"{folder} holds an export of model {found}, not {trained.fingerprint}; remove it")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = max(1, threads), 1
    return {side: ort.InferenceSession(str(folder / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
            for side, name in (("query", "q"), ("reference", "k"))}


class Describer:
    """Q and K over prepared images, with PyTorch or (`sessions` from `onnx_sessions`) onnxruntime."""

    def __init__(self, trained, sessions: dict | None = None) -> None:
        self.trained, self.sessions = trained, sessions
        self.fingerprint: str = trained.fingerprint
        self.dim: int = trained.cfg.model.descriptor_dim
        self.device = next(trained.q.parameters()).device

    def prepare(self, img: Image.Image) -> Prepared:
        return Prepared(*self.trained.prepare(img))

    def prepare_regions(self, img: Image.Image, n: int, size: int | None = None) -> tuple[np.ndarray, list[Prepared]]:
        """The whole image and up to `n` proposed regions: (boxes (R, 4) int64 (x0, y0, x1, y1) in `img`'s
        pixels, row 0 the whole image; their inputs: the whole at the model's input side, each region's crop at
        `size` (default the same), as `TrainedModels.describe_regions` does with `region_size`)."""
        boxes = propose_regions(img, n)  # (R, 4)
        side = size or self.trained.input_size
        regions = [Prepared(*image_pair(img.crop(tuple(int(v) for v in box)), side)) for box in boxes[1:]]
        return boxes, [self.prepare(img), *regions]

    @torch.no_grad()
    def describe(self, side: str, items: Sequence[Prepared]) -> np.ndarray:
        """Descriptors (B, E) float32 of prepared images through Q ("query") or K ("reference")."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        if not items:
            return np.zeros((0, self.dim), np.float32)
        sides = {tuple(p.pixels.shape) for p in items}
        if len(sides) > 1:  # inputs of more than one side (regions at their own): one model call per side
            out = np.zeros((len(items), self.dim), np.float32)  # (B, E)
            for shape in sides:
                rows = [i for i, p in enumerate(items) if tuple(p.pixels.shape) == shape]
                out[rows] = self.describe(side, [items[i] for i in rows])
            return out
        pixels = torch.stack([p.pixels for p in items])  # (B, 3, S, S)
        gist_pixels = torch.stack([p.gist_pixels for p in items])  # (B, 3, 32, 32)
        if self.sessions is not None:
            feed = {"pixels": pixels.numpy(), "gist_pixels": gist_pixels.numpy()}
            return self.sessions[side].run(["descriptor"], feed)[0].astype(np.float32)  # (B, E)
        model = self.trained.q if side == "query" else self.trained.k
        pixels, gist_pixels = pixels.to(self.device), gist_pixels.to(self.device)
        return describe_batch(model, pixels, self.trained.gist256(gist_pixels)).cpu().numpy()  # (B, E)


def add_files(collection: Collection, describer: Describer, paths: Sequence[Path], bank: str, meta: dict,
              batch_size: int = 32) -> tuple[int, int, SkipLog]:
    """Add image files as references of `bank`: (added, already present, skipped files)."""
    if describer.fingerprint != collection.fingerprint:
        raise ValueError(f"model {describer.fingerprint} is not the collection's model {collection.fingerprint}")
    skips = SkipLog()
    hashes = {}
    for p in paths:
        try:
            hashes[Path(p)] = sha256(Path(p).read_bytes())
        except OSError as err:
            skips.add(ImageError(p, f"cannot read ({err.strerror})"))
    known = collection.store.known_hashes(bank, list(hashes.values()))
    todo = [p for p, h in hashes.items() if h not in known]
    todo = list(dict((hashes[p], p) for p in reversed(todo)).values())[::-1]  # one of each content, first kept
    added = 0
    with tqdm(total=len(todo), desc="adding references", unit="img", leave=False) as bar:
        for start in range(0, len(todo), batch_size):
            refs, items = [], []
            for p in todo[start:start + batch_size]:
                try:
                    img = load_image(p)
                except ImageError as err:
                    skips.add(err)
                    continue
                items.append(describer.prepare(img))
                refs.append((p, thumbnail(img)))
            vectors = describer.describe("reference", items)
            result = collection.add([NewRef(p.name, hashes[p], bank, meta, v, thumb)
                                     for (p, thumb), v in zip(refs, vectors)])
            added += sum(not a.existing for a in result)
            bar.update(len(todo[start:start + batch_size]))
    return added, len(hashes) - len(todo), skips
