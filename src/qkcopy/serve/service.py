"""The matching service as a library: uploads in, matches out; no web framework here (app.py maps it).

`MatchService` owns the collection, the describer (the loaded model) and the micro-batcher. An upload is
decoded and checked on the caller's thread (`prepare`: size limit, content sniffing, decompression-bomb
guard, all in qkcopy.data.images.decode_image), then submitted as a job; the batcher's worker runs Q (or K,
for new references) over the batch and searches the index once for all of the batch's queries.

Typed errors, each kind mapped to one HTTP status in serve/errors.py: `TooLarge` (a body, a field or a count
over its limit), data.images.ImageError (its `code` says which fault: empty, unidentified, format,
too_many_pixels, bomb, corrupt), `NotFound`, batcher.Overloaded, batcher.NotRunning and `Timeout`.

Query regions (issue 20): with `regions` n > 0 a query is described as its whole image plus up to n proposed
regions (`Describer.prepare_regions`), all in the same model call as the batch's other images; each region is
searched, a reference's score is its best over the query's regions (ties: the earlier region, the whole image
first; `region_margin` is added to a region's squared distance, not the whole image's, as `qkcopy eval
--region-margin` does, so a threshold calibrated there holds here), and the winning region's box comes back with
each match (`BoxedMatch`). With n = 0 the box is the whole image and the answers are those of a single
descriptor. Verification (`verify` K > 0, with the references' files): the top K re-scored by local features as
`qkcopy eval --verify K` does, each verified match with its confidence and outline (serve/verification.py).

Letters: B batch, E descriptor dim, k neighbours, R regions of a query (the whole image first), T region rows.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qkcopy.collection import Collection, MatchRow, NewRef
from qkcopy.collection.collection import check_bank
from qkcopy.collection.describe import Describer, Prepared, sha256, thumbnail
from qkcopy.data.images import decode_image
from qkcopy.data.verify import Features, VerifyConfig, features
from qkcopy.evaluation.threshold import any_copy, scoring_of
from qkcopy.serve.batcher import Batcher
from qkcopy.serve.region_matches import BoxedMatch, best_over_regions, check_regions
from qkcopy.serve.verification import ReferenceFiles, check_verify, verify_matches

log = logging.getLogger(__name__)
DESCRIBE_CHUNK = 64  # model inputs per model call when regions multiply a batch


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 20 * 2 ** 20  # per request body
    max_pixels: int = 40_000_000  # per decoded image
    max_images: int = 16  # per match request
    timeout_s: float = 10.0  # waiting for the model
    max_batch: int = 16
    max_wait_ms: float = 5.0
    queue_size: int = 64


class TooLarge(ValueError):
    """A request body, an upload, a field or a count over the service's limit."""


class NotFound(LookupError):
    pass


class Timeout(RuntimeError):
    pass


@dataclass(frozen=True)
class Upload:
    name: str
    prepared: Prepared  # the whole image
    sha256: str
    thumb: bytes
    boxes: np.ndarray  # (R, 4) int64 (x0, y0, x1, y1) in the image's pixels, row 0 the whole image
    regions: tuple[Prepared, ...] = ()  # (R − 1) the regions' inputs, in the order of boxes[1:]
    features: Features | None = None  # SIFT features of the query, when its matches are to be verified


@dataclass(frozen=True)
class _Match:
    upload: Upload
    k: int
    bank: str | None


@dataclass(frozen=True)
class _Describe:
    prepared: Prepared


class MatchService:
    def __init__(self, collection: Collection, describer: Describer, limits: Limits = Limits(),
                 on_batch=None, regions: int = 0, region_margin: float = 0.0, region_size: int | None = None,
                 verify: int = 0, references: ReferenceFiles | None = None, verify_side: int = 320) -> None:
        if describer.fingerprint != collection.fingerprint:
            raise ValueError(f"the model ({describer.fingerprint}) is not the collection's ({collection.fingerprint})")
        if not (np.isfinite(region_margin) and region_margin >= 0):
            raise ValueError(f"region margin must be a finite number >= 0, got {region_margin}")
        if region_size is not None and (region_size < 16 or describer.sessions is not None
                                        and region_size != describer.trained.input_size):
            raise ValueError(f"region size must be >= 16 (and, with the onnx runtime, the model's input side "
                             f"{describer.trained.input_size}), got {region_size}")
        self.regions = check_regions(regions)  # a match request's default
        self.region_margin, self.region_size = float(region_margin), region_size
        self.verify, self.references = check_verify(verify), references  # a request's default; reference files
        if verify and references is None:
            raise ValueError("verification needs the references' image files: give --references DIR")
        self.verify_cfg = VerifyConfig(k=1, max_side=verify_side)  # k: each request's
        made = scoring_of(self.regions, self.region_margin, region_size, self.verify)
        told = getattr(collection.threshold, "scoring", None)
        if told is not None and told != made:
            log.warning("the collection's threshold was calibrated on scores made with %s, the service makes %s: "
                        "its copy verdicts are on another scale (calibrate with the same options)", told, made)
        self.collection, self.describer, self.limits = collection, describer, limits
        self.batcher = Batcher(self._run, limits.max_batch, limits.max_wait_ms / 1000, limits.queue_size, on_batch)
        self.recent: collections.deque[dict] = collections.deque(maxlen=50)
        self._recent_lock = threading.Lock()

    def start(self) -> MatchService:
        self.collection.index()  # load the index before taking traffic
        self.batcher.start()
        return self

    def stop(self) -> None:
        self.batcher.stop()

    @property
    def ready(self) -> bool:
        return self.batcher.alive and not self.batcher.full

    # --- on the caller's thread ---

    def prepare(self, data: bytes, name: str, regions: int = 0, verify: int = 0) -> Upload:
        """Decode and check one uploaded file (content sniffed, bomb-guarded) into model inputs: the whole
        image's, and those of up to `regions` proposed regions (a query's; references take none); with `verify`
        > 0 also its local features, to verify its matches."""
        check_regions(regions)
        if check_verify(verify) and self.references is None:
            raise ValueError("verify: this server has no reference files to verify with (start it with --verify K "
                             "--references DIR)")
        if len(data) > self.limits.max_upload_bytes:
            raise TooLarge(f"{name}: {len(data)} bytes is over the limit of {self.limits.max_upload_bytes}")
        img = decode_image(data, name, max_pixels=self.limits.max_pixels)  # ImageError, its code the kind
        boxes, items = self.describer.prepare_regions(img, regions, self.region_size)  # (R, 4), R inputs
        found = features(img, self.verify_cfg) if verify else None
        return Upload(name, items[0], sha256(data), thumbnail(img), boxes, tuple(items[1:]), found)

    def submit_match(self, upload: Upload, k: int, bank: str | None) -> Future:
        if bank is not None:
            check_bank(bank)
        if not 1 <= k <= 100:
            raise ValueError(f"k must be in 1..100, got {k}")
        return self.batcher.submit(_Match(upload, k, bank))

    def match_now(self, uploads: Sequence[Upload], k: int, bank: str | None, verify: int = 0) -> list[list[MatchRow]]:
        """Match on the caller's thread, as one batch of the worker (`qkcopy match` without a server), the top
        `verify` of each upload prepared with its features verified."""
        if bank is not None:
            check_bank(bank)
        if not 1 <= k <= 100:
            raise ValueError(f"k must be in 1..100, got {k}")
        results = self._run([_Match(u, k, bank) for u in uploads])
        for r in results:
            if isinstance(r, Exception):
                raise r
        return self.verified(uploads, results, verify)

    def verified(self, uploads: Sequence[Upload], results: Sequence[list[BoxedMatch]], k: int) -> list[list]:
        """Each upload's matches with its top `k` verified and re-scored (`verification.verify_matches`; uploads
        prepared without features are left as they are). Blocking: seconds at most, call it off the event loop."""
        if not check_verify(k):
            return list(results)
        cfg = dataclasses.replace(self.verify_cfg, k=k)
        return [verify_matches(ms, u.features, self.collection, self.references, cfg, self.collection.threshold)
                if u.features is not None else ms for u, ms in zip(uploads, results)]

    def submit_describe(self, upload: Upload) -> Future:
        return self.batcher.submit(_Describe(upload.prepared))

    def add(self, upload: Upload, vector: np.ndarray, bank: str, meta: dict, name: str | None = None):
        """Commit a described upload as a reference (blocking: SQLite fsync); returns store.Added."""
        check_bank(bank)
        ref = NewRef(name or upload.name, upload.sha256, bank, meta, vector, upload.thumb)
        return self.collection.add([ref])[0]

    def remember(self, uploads: Sequence[Upload], results: Sequence[list[MatchRow]]) -> None:
        """Keep the latest matches (with the query's thumbnail) for the review page."""
        with self._recent_lock:
            for upload, matches in zip(uploads, results):
                self.recent.appendleft(dict(
                    at=time.time(), name=upload.name,
                    thumbnail="data:image/jpeg;base64," + base64.b64encode(upload.thumb).decode(),
                    is_copy=any_copy([m.score for m in matches], self.collection.threshold),
                    matches=[dict(id=m.id, name=m.name, bank=m.bank, metadata=m.metadata, score=m.score,
                                  is_copy=m.is_copy, box=list(m.box), confidence=m.confidence, quad=m.quad)
                             for m in matches[:5]]))

    # --- on the batcher's worker thread ---

    def _describe(self, side: str, items: Sequence[Prepared]) -> np.ndarray:
        """Descriptors (B, E) of `items`, at most DESCRIBE_CHUNK inputs per model call."""
        if len(items) <= DESCRIBE_CHUNK:
            return self.describer.describe(side, items)
        return np.concatenate([self.describer.describe(side, items[i:i + DESCRIBE_CHUNK])
                               for i in range(0, len(items), DESCRIBE_CHUNK)])

    def _run(self, jobs: Sequence[_Match | _Describe]) -> list:
        results: list = [None] * len(jobs)
        refs = [i for i, j in enumerate(jobs) if isinstance(j, _Describe)]
        for i, v in zip(refs, self._describe("reference", [jobs[i].prepared for i in refs])):
            results[i] = v
        rows = [i for i, j in enumerate(jobs) if isinstance(j, _Match)]
        if not rows:
            return results
        items = [p for i in rows for p in (jobs[i].upload.prepared, *jobs[i].upload.regions)]
        vectors = self._describe("query", items)  # (T, E): each query's whole image, then its regions
        ends = np.cumsum([len(jobs[i].upload.boxes) for i in rows])  # (B,) end of each query's rows
        groups: dict[tuple, list[int]] = collections.defaultdict(list)  # one search per (k, bank)
        for r, i in enumerate(rows):
            groups[(jobs[i].k, jobs[i].bank)].append(r)
        for (k, bank), members in groups.items():
            spans = [range(ends[r] - len(jobs[rows[r]].upload.boxes), ends[r]) for r in members]
            try:
                found = self.collection.search(vectors[[t for span in spans for t in span]], k, bank)
            except Exception as err:  # e.g. the database went away: those jobs fail, not the worker
                for r in members:
                    results[rows[r]] = err
                continue
            start = 0
            for r, span in zip(members, spans):
                upload = jobs[rows[r]].upload
                results[rows[r]] = best_over_regions(found[start:start + len(span)], upload.boxes, k,
                                                     self.region_margin, self.collection.threshold)
                start += len(span)
        return results


def open_service(collection_dir, model=None, device: str = "auto", limits: Limits = Limits(),
                 runtime: str = "torch", regions: int | None = None, region_margin: float | None = None,
                 region_size: int | None = None, verify: int = 0, references: str | Path | None = None,
                 verify_side: int = 320) -> MatchService:
    """The collection in `collection_dir` with its model (or `model`, which must have the pinned fingerprint);
    runtime "onnx" runs the model with onnxruntime (exported once into COLLECTION/onnx-<fingerprint>);
    `regions`: query regions described beside each whole query unless a request says otherwise, at
    `region_size` (0: the model's input side), `region_margin` added to their squared distances; each None
    takes the model's own (`model.regions`, `model.region_size`, `model.region_margin`: its preset's choice);
    `verify`: matches verified per query unless a request says otherwise, with the image files in `references`
    (by name and content) at `verify_side` px."""
    import torch

    from qkcopy.collection.describe import RUNTIMES, onnx_sessions

    if regions is not None:
        check_regions(regions)
    if check_verify(verify) and references is None:
        raise ValueError("--verify needs --references DIR, the folder of the references' image files")
    files = ReferenceFiles.scan(references) if references is not None else None
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")

    collection = Collection.open(collection_dir)
    try:
        trained = collection.load_model(model, device)
    except BaseException:
        collection.close()
        raise
    own, told_size = trained.cfg.model, region_size  # the options not given: the model's
    regions, region_margin, region_size = trained.query_regions(regions, region_margin, region_size)
    if told_size is None and runtime == "onnx" and regions and own.region_size not in (None, trained.input_size):
        collection.close()
        raise ValueError(f"the model describes query regions at {own.region_size} px (model.region_size) and the onnx "
                         f"runtime only at its input side {trained.input_size}: give --region-size 0 (and calibrate "
                         "the threshold with --region-size of that side) or --regions 0")
    sessions = None
    if runtime == "onnx":
        if next(trained.q.parameters()).device.type != "cpu":
            raise ValueError("--runtime onnx runs on the CPU; use --device cpu (or the torch runtime on a GPU)")
        sessions = onnx_sessions(trained, Path(collection_dir) / f"onnx-{trained.fingerprint}", torch.get_num_threads())
    try:
        return MatchService(collection, Describer(trained, sessions), limits, regions=regions,
                            region_margin=region_margin, region_size=region_size, verify=verify, references=files,
                            verify_side=verify_side)
    except BaseException:
        collection.close()
        raise
