"""A reference index: faiss over K-model descriptors, saved with its ids and the model that made them.

An index directory holds `index.faiss`, `ids.txt` (row i of the index is the reference on line i) and
`meta.json` (model fingerprint, descriptor dim, index type and parameters, size). It is written into a
temporary sibling and swapped in by rename, so a crash never leaves a half-written index; other files a user
keeps in the folder are carried over (hard links), so only these three are ever replaced. A damaged or
inconsistent index is an `IndexFileError` naming the file.

Types: "flat" (exact squared L2, the default), "ivf" (inverted lists, `nlist` cells, `nprobe` searched),
"ivfpq" (inverted lists with product-quantised codes, `m` sub-quantisers of 8 bits: approximate distances,
much less memory). IVF types are trained (k-means) on the descriptors they are built from; `add` appends
new references to an existing index without retraining or rebuilding.

Letters: N references, Nq queries, E descriptor dim, k neighbours.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from qkcopy.errors import FingerprintMismatch, IndexFileError, read_json
from qkcopy.io import atomic_dir, recover_dir
from qkcopy.retrieval.faiss_index import INDEX_TYPES, new_faiss_index

log = logging.getLogger(__name__)

FORMAT = "qkcopy-index/1"
FILES = ("index.faiss", "ids.txt", "meta.json")  # what an index owns in its folder


def _check_vectors(vectors: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or vectors.dtype != np.float32:
        raise ValueError(f"{what} must be a float32 array (N, E), got "
                         f"{getattr(vectors, 'shape', type(vectors).__name__)} {getattr(vectors, 'dtype', '')}")
    if dim is not None and vectors.shape[1] != dim:
        raise ValueError(f"{what} have dimension {vectors.shape[1]} but the index holds {dim}-d descriptors; "
                         "were they made by another model?")
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise ValueError(f"{what}: row {bad[0]} has non-finite values ({bad.size} such rows)")
    return np.ascontiguousarray(vectors)


def check_ids(ids: Sequence[str], n: int, what: str) -> list[str]:
    """Ids line up with n vectors, are non-empty, one per line, and unique."""
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"{what}: {len(ids)} ids for {n} descriptors")
    bad = [s for s in ids if not isinstance(s, str) or not s or "\n" in s or "\r" in s]
    if bad:
        raise ValueError(f"{what}: id {bad[0]!r} is empty or holds a line break")
    seen: set[str] = set()
    dups = [s for s in ids if s in seen or seen.add(s)]
    if dups:
        raise ValueError(f"{what}: {len(dups)} duplicated ids, e.g. {dups[0]}")
    return ids


@dataclass
class ReferenceIndex:
    index: faiss.Index
    ids: list[str]
    fingerprint: str  # TrainedModels.fingerprint of the model whose K side made the descriptors
    kind: str = "flat"
    params: dict = field(default_factory=dict)  # nlist, m for IVF types

    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    def check_model(self, fingerprint: str, what: str = "descriptors") -> None:
        if fingerprint != self.fingerprint:
            raise FingerprintMismatch(
                f"{what} come from model {fingerprint}, but this index was built from model {self.fingerprint}'s "
                "reference descriptors; descriptors of different models are not comparable — use the same "
                "--model as the index, or rebuild the index with this model")

    def add(self, ids: Sequence[str], vectors: np.ndarray, fingerprint: str) -> None:
        """Append references (refuses another model's descriptors and ids already in the index)."""
        self.check_model(fingerprint, "the new references")
        vectors = _check_vectors(vectors, "new references", self.dim)
        ids = check_ids(ids, len(vectors), "new references")
        present = set(self.ids)
        again = [i for i in ids if i in present]
        if again:
            raise ValueError(f"{len(again)} of the new references are already in the index, e.g. {again[0]}; "
                             "remove them (ids must stay unique)")
        self.index.add(vectors)
        self.ids.extend(ids)
        log.info("added %d references (index now holds %d)", len(ids), len(self))

    def search(self, vectors: np.ndarray, k: int = 10, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest references per query: sqdist (Nq, k) float32 ascending and rows (Nq, k) int64 (−1: none)."""
        vectors = _check_vectors(vectors, "query descriptors", self.dim)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(self) == 0:
            raise ValueError("the index is empty: nothing to search")
        k = min(k, len(self))
        if self.kind != "flat":
            ivf = faiss.extract_index_ivf(self.index)
            ivf.nprobe = min(nprobe or self.params.get("nprobe", 1), ivf.nlist)
        elif nprobe is not None:
            log.debug("nprobe is ignored by a flat index")
        sqdist, rows = self.index.search(vectors, k)  # (Nq, k) float32, (Nq, k) int64
        return np.maximum(sqdist, 0.0), rows.astype(np.int64)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            (tmp / "ids.txt").write_text("".join(i + "\n" for i in self.ids), encoding="utf-8")
            meta = dict(format=FORMAT, fingerprint=self.fingerprint, dim=self.dim, type=self.kind,
                        params=self.params, n=len(self))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
            _carry_over(directory, tmp)
        log.info("wrote %s index of %d references (E=%d) to %s", self.kind, len(self), self.dim, directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ReferenceIndex:
        directory = Path(directory)
        if not directory.exists():  # a writer killed inside its swap: read the index it was replacing
            olds = sorted(directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime)
            directory = olds[-1] if olds else directory
        files = [directory / n for n in FILES]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} is not a qkcopy index (missing {', '.join(missing)}); "
                                    "build one with `qkcopy index`")
        meta = read_json(files[2], IndexFileError, "index metadata")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise IndexFileError(f"{files[2]}: unknown index format "
                                 f"{meta.get('format') if isinstance(meta, dict) else meta!r} (expected {FORMAT})",
                                 files[2])
        bad = [k for k, kind in (("fingerprint", str), ("type", str), ("n", int), ("dim", int))
               if not isinstance(meta.get(k), kind)]
        if bad or meta["type"] not in INDEX_TYPES:
            raise IndexFileError(f"{files[2]}: damaged index metadata (bad or missing {', '.join(bad) or 'type'}); "
                                 "rebuild the index with `qkcopy index`", files[2])
        try:
            index = faiss.read_index(str(files[0]))
        except RuntimeError as err:  # faiss: truncated, empty or foreign file
            reason = str(err).strip().splitlines()
            raise IndexFileError(f"{files[0]}: damaged faiss index ({reason[-1] if reason else 'unreadable'}); "
                                 "rebuild the index with `qkcopy index`", files[0]) from None
        try:
            ids = files[1].read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise IndexFileError(f"{files[1]}: damaged id list (not UTF-8 text); rebuild the index", files[1]) from None
        if index.ntotal != len(ids) or index.ntotal != meta["n"] or index.d != meta["dim"]:
            raise IndexFileError(f"{directory} is inconsistent: {index.ntotal} vectors of dim {index.d}, {len(ids)} "
                                 f"ids, meta.json says n={meta['n']} dim={meta['dim']}; rebuild it", directory)
        check_ids(ids, index.ntotal, str(files[1]))
        return cls(index, ids, meta["fingerprint"], meta["type"], meta.get("params", {}))


def _carry_over(directory: Path, tmp: Path) -> None:
    """Hard-link (or copy) into `tmp` every entry of `directory` that is not the index's own."""
    if not directory.is_dir():
        return

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:
            shutil.copy2(src, dst, follow_symlinks=False)

    for entry in directory.iterdir():
        if entry.name in FILES:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, tmp / entry.name, symlinks=True, copy_function=link)
        else:
            link(str(entry), str(tmp / entry.name))


def build_index(ids: Sequence[str], vectors: np.ndarray, fingerprint: str, kind: str = "flat",
                nlist: int | None = None, m: int | None = None, nprobe: int | None = None,
                seed: int = 0) -> ReferenceIndex:
    """An index over reference descriptors (N, E); IVF types are trained on these same vectors."""
    if kind not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, got {kind!r}")
    vectors = _check_vectors(vectors, "reference descriptors")
    ids = check_ids(ids, len(vectors), "reference descriptors")
    n, dim = vectors.shape
    if n == 0:
        raise ValueError("no reference descriptors to index")
    index, params = new_faiss_index(kind, dim, vectors, nlist, m, nprobe, seed)
    index.add(vectors)
    log.info("built %s index over %d references (E=%d)%s", kind, n, dim, f" {params}" if params else "")
    return ReferenceIndex(index, ids, fingerprint, kind, params)


def index_folder(trained, out: str | Path, references: str | Path | None = None,
                     descriptors: str | Path | None = None, kind: str = "flat", nlist: int | None = None,
                     m: int | None = None, nprobe: int | None = None, add: bool = False, batch_size: int = 64,
                     workers: int = 2, allow_missing_meta: bool = False) -> ReferenceIndex:
    """Build (or with `add`, extend) the index in `out` from a folder of references or a descriptor file.

    A descriptor file without its `.meta.json` is refused unless `allow_missing_meta` (see `read_descriptors`).

    A folder is embedded with the K model of `trained` (a `qkcopy.model.trained.TrainedModels`) in one pass; for large
    folders run `embed_folder(side="reference")` first (resumable) and pass its file as `descriptors`.
    """
    from qkcopy.retrieval.embed_shards import image_ids, read_descriptors
    from qkcopy.data.images import scan_images

    if (references is None) == (descriptors is None):
        raise ValueError("give either a folder of reference images or a reference descriptor file")
    recover_dir(out)  # an earlier writer killed inside its swap: its index back in place
    existing = ReferenceIndex.load(out) if add else None
    if existing is not None:
        existing.check_model(trained.fingerprint, f"references embedded with model {trained.checkpoint}")
    elif Path(out).exists():
        raise FileExistsError(f"{out} already exists; pass --add to append references to it, or choose "
                              "another --out")
    fingerprint = trained.fingerprint
    if descriptors is not None:
        ids, vectors = read_descriptors(descriptors, fingerprint, "reference", trained.cfg.model.descriptor_dim,
                                        allow_missing_meta)
    else:
        paths = scan_images(references)
        image_ids(paths)
        emb = trained.describe("reference", paths, batch_size, workers, "references")
        if not emb.ids:
            raise ValueError(f"none of the {len(paths)} images under {references} could be read")
        ids, vectors = emb.ids, emb.vectors
    if existing is None:
        index = build_index(ids, vectors, fingerprint, kind, nlist, m, nprobe)
    else:
        existing.add(ids, vectors, fingerprint)
        index = existing
    index.save(out)
    return index
