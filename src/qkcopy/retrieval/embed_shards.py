"""Embedding a collection of images with a trained model, in resumable shards.

Queries go through the Q model, references through the K model (the QK asymmetry). A folder of any size is
cut into shards of `shard_size` images in path order; shard i is written atomically to
`PREFIX.shards/00000.h5` as soon as it is done, tagged with a key over its files (path, size, mtime), the
model fingerprint, the side and the input size. A rerun reuses every shard whose key still matches and
embeds the rest, then merges the shards in order into

    PREFIX.h5           ISC2021 descriptor file (vectors, image_names)
    PREFIX.npy          (N, E) float32, with PREFIX_ids.txt (one id per line)
    PREFIX.meta.json    model fingerprint, side, dim, count, skipped files

Image ids are file stems; two files with the same stem are refused (ids must be unique).

Letters: N images, E descriptor dim.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from qkcopy.errors import DataError, DescriptorError, FingerprintMismatch, read_json
from qkcopy.io import atomic_path, atomic_write_json
from qkcopy.retrieval.descriptors import write_isc_h5, write_npy

log = logging.getLogger(__name__)

SIDES = {"query": "q", "reference": "k"}
META_SUFFIX = ".meta.json"


@dataclass(frozen=True)
class EmbeddedFolder:
    prefix: Path
    ids: list[str]
    vectors: np.ndarray  # (N, E) float32
    skipped: list[str]  # unreadable files
    shards_embedded: int  # shards computed by this call
    shards_reused: int  # shards found complete on disk


def output_prefix(out: str | Path) -> Path:
    """`out` without a descriptor-file suffix: refs.h5 → refs (writes refs.h5, refs.npy, …)."""
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".h5", ".hdf5", ".npy") else out


def image_ids(paths: Sequence[Path]) -> list[str]:
    """File stems of `paths`; refuses two files that would get the same id."""
    first: dict[str, Path] = {}
    for p in map(Path, paths):
        if p.stem in first:
            raise ValueError(f"image id {p.stem!r} names two files: {first[p.stem]} and {p}; ids are file "
                             "stems and must be unique — rename one of them")
        first[p.stem] = p
    return list(first)


def device_of(model) -> str:
    return str(next(model.parameters()).device)


def shard_key(paths: Sequence[Path], fingerprint: str, side: str, image_size: int) -> str:
    h = hashlib.sha256(f"{fingerprint}|{side}|{image_size}\n".encode())
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _write_shard(path: Path, key: str, ids: list[str], vectors: np.ndarray, skipped: list[str]) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("vectors", data=vectors)
        f.create_dataset("image_names", data=np.array([i.encode() for i in ids], dtype=bytes).reshape(-1))
        f.attrs["key"] = key
        f.attrs["skipped"] = json.dumps(skipped)


def _read_shard(path: Path, key: str) -> tuple[list[str], np.ndarray, list[str]] | None:
    """The shard's (ids, vectors, skipped) when it is complete and its key matches, else None."""
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("key") != key:
                log.info("shard %s is stale (its images or the model changed); embedding it again", path.name)
                return None
            ids = [x.decode() for x in f["image_names"][()]]
            return ids, np.asarray(f["vectors"][()], dtype=np.float32), json.loads(f.attrs["skipped"])
    except (OSError, KeyError, ValueError) as err:
        log.warning("shard %s is unreadable (%s); embedding it again", path, err)
        return None


def embed_shard(trained, side: str, part: Sequence[Path], shard: Path, key: str, batch_size: int,
                workers: int) -> tuple[list[str], np.ndarray, list[str]]:
    """Embed one shard's images and write it (atomically) to `shard`; its (ids, vectors (n, E), skipped)."""
    emb = trained.describe(side, part, batch_size, workers, f"{side} {shard.name}")
    vectors = emb.vectors.reshape(-1, trained.cfg.model.descriptor_dim) if len(emb.ids) == 0 else emb.vectors
    _write_shard(shard, key, emb.ids, vectors, emb.skipped)
    return emb.ids, vectors, emb.skipped


def plan_shards(paths: Sequence[Path], side: str, out: str | Path, shard_size: int) -> tuple[list[Path], Path, int]:
    """Checked inputs of an embedding run: (paths, the shard folder beside `out`, number of shards)."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {sorted(SIDES)}, got {side!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no images to embed")
    image_ids(paths)
    prefix = output_prefix(out)
    return paths, prefix.with_name(prefix.name + ".shards"), -(-len(paths) // shard_size)


def embed_folder(trained, paths: Sequence[Path], side: str, out: str | Path, batch_size: int = 64,
                     workers: int = 2, shard_size: int = 10_000, keep_shards: bool = False) -> EmbeddedFolder:
    """Descriptors of `paths` with `trained.q` (side "query") or `trained.k` (side "reference").

    `trained` is a `qkcopy.model.trained.TrainedModels`. Shards are removed after the merge unless `keep_shards`.
    """
    paths, shard_dir, n_shards = plan_shards(paths, side, out, shard_size)
    size, fingerprint = trained.cfg.model.input_size, trained.fingerprint
    prefix = output_prefix(out)
    new_dir = not shard_dir.exists()
    shard_dir.mkdir(parents=True, exist_ok=True)
    ids, chunks, skipped, embedded = [], [], [], 0
    for s in range(n_shards):
        part = paths[s * shard_size:(s + 1) * shard_size]
        key = shard_key(part, fingerprint, side, size)
        shard = shard_dir / f"{s:05d}.h5"
        found = _read_shard(shard, key)
        if found is None:
            log.info("embedding shard %d/%d (%d images, %s side)", s + 1, n_shards, len(part), side)
            found, embedded = embed_shard(trained, side, part, shard, key, batch_size, workers), embedded + 1
        ids.extend(found[0])
        chunks.append(found[1])
        skipped.extend(found[2])
    for extra in sorted(shard_dir.glob("*.h5"))[n_shards:]:  # the folder shrank since an earlier run
        extra.unlink()
    if not ids:
        if new_dir and not keep_shards:  # shards of nothing are no use to a rerun
            shutil.rmtree(shard_dir)
        raise DataError(f"none of the {len(paths)} images could be read ({len(skipped)} skipped, e.g. "
                        f"{skipped[0]})", skipped[0])
    vectors = np.concatenate(chunks)  # (N, E)
    write_isc_h5(prefix.with_name(prefix.name + ".h5"), ids, vectors)
    write_npy(prefix, ids, vectors)
    meta = dict(fingerprint=fingerprint, side=side, dim=int(vectors.shape[1]), n=len(ids), image_size=size,
                checkpoint=str(trained.checkpoint), skipped=skipped)
    atomic_write_json(prefix.with_name(prefix.name + META_SUFFIX), meta)
    if not keep_shards:
        shutil.rmtree(shard_dir)
    log.info("%s descriptors of %d images (%d skipped) written to %s.h5 / .npy (%d shards embedded, %d reused)",
             side, len(ids), len(skipped), prefix, embedded, n_shards - embedded)
    return EmbeddedFolder(prefix, ids, vectors, skipped, embedded, n_shards - embedded)


def read_meta(descriptor_file: str | Path) -> dict | None:
    """The `.meta.json` written beside a descriptor file by `embed_folder`, or None when there is none."""
    base = output_prefix(descriptor_file)
    path = base.with_name(base.name + META_SUFFIX)
    if not path.is_file():
        return None
    meta = read_json(path, DescriptorError, "descriptor metadata")
    missing = [k for k in ("fingerprint", "side") if not isinstance(meta, dict) or not isinstance(meta.get(k), str)]
    if missing or meta["side"] not in SIDES:
        raise DescriptorError(f"{path}: damaged descriptor metadata (needs text keys fingerprint and side, side "
                              f"one of {sorted(SIDES)}); embed the images again with `qkcopy embed`", path)
    return meta


def read_descriptors(path: str | Path, fingerprint: str, side: str, dim: int,
                     allow_missing_meta: bool = False, mmap: bool = False) -> tuple[list[str], np.ndarray]:
    """(ids, vectors) from a `.h5` (ISC2021) or `.npy` descriptor file, checked against the model using them.

    The `.meta.json` that `embed_folder` writes beside the file says which model and side made the
    descriptors: another model or the wrong side is refused. A file without one is refused too (its model
    cannot be checked, and an index would be stamped with the wrong one) unless `allow_missing_meta`, when the
    caller vouches that this model made them. `mmap`: a `.npy` file's vectors memory-mapped (read-only).
    """
    from qkcopy.retrieval.descriptors import read_isc_h5, read_npy

    path = Path(path)
    meta = read_meta(path)
    if meta is None and not allow_missing_meta and path.exists():
        base = output_prefix(path)
        raise DescriptorError(f"{path} has no {base.name + META_SUFFIX} beside it, so which model made these "
                              "descriptors cannot be checked; embed them with `qkcopy embed`, or pass "
                              "--allow-missing-meta if you are sure this model's "
                              f"{SIDES[side].upper()} side made them", path)
    ids, vectors = read_npy(path, mmap) if path.suffix == ".npy" else read_isc_h5(path)
    if meta is None:
        log.warning("%s has no %s beside it: trusting that model %s made these descriptors", path, META_SUFFIX,
                    fingerprint)
    else:
        if meta["fingerprint"] != fingerprint:
            raise FingerprintMismatch(f"{path} was embedded with model {meta['fingerprint']}, not {fingerprint}; "
                                      "descriptors of different models are not comparable — embed again with this "
                                      "model", path)
        if meta["side"] != side:
            raise DescriptorError(f"{path} holds {meta['side']} descriptors ({SIDES[meta['side']].upper()} model) "
                                  f"but {side} descriptors ({SIDES[side].upper()} model) are needed here", path)
    if vectors.shape[1] != dim:
        raise DescriptorError(f"{path} holds {vectors.shape[1]}-d descriptors but the model makes {dim}-d ones",
                              path)
    if len(ids) == 0:
        raise DescriptorError(f"{path} holds no descriptors", path)
    return ids, vectors
