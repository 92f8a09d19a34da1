"""Synthesising a DISC21-like benchmark from a pool of photos: `make_benchmark` and the development benchmark.

From a folder `images` and, optionally, a separate folder of training photos:
  * references are a random subset of `images`, re-encoded as JPEG (quality 90);
  * matched queries are edited copies of references (qkcopy.augment recipes, one seed per query);
  * distractor queries are edited copies of images of `images` that are NOT references;
  * training images are disjoint from both: from `train_images` when given, else from the rest of `images`;
  * the copy-paste edit ("overlay onto background image") pastes onto a *spare* photo of `images` (neither
    a reference, a distractor source nor a training image) when there are spares, else onto a training
    image; the recipe's `bg_pick` chooses which;
  * queries are shuffled before ids are given, so ids say nothing about matches. A query whose recipe ends
    with JPEG re-encoding (`encoding_quality`) is written once at that quality; others at quality 90.
Exact byte duplicates are used once; unreadable photos are skipped and reported. Everything is drawn from
`random.Random(seed)` and per-query seeds, so the same arguments give a byte-identical benchmark (with the
same Pillow / AugLy / libjpeg versions, which manifest.json records).

DISC21's dev set has about 1 query in 5 matched (4,991 of 25,000) against 1M references; the default here
is 1 in 2, so that a small benchmark still holds hundreds of positives. µAP falls as distractors grow, so
compare numbers only on the same benchmark. The development benchmark's options are `DEV_BENCHMARK`
(documented in docs/BENCHMARK.md).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import PIL
from PIL import Image
from tqdm import tqdm

import qkcopy
from qkcopy.data.augment import STRENGTHS, apply_recipe, sample_recipe
from qkcopy.data.benchmark import GROUND_TRUTH, MANIFEST, Benchmark, load_benchmark
from qkcopy.data.families import excluded_ops, family_of_op, heldout_edit
from qkcopy.data.images import ImageError, SkipLog, load_image, scan_images
from qkcopy.data.isc_csv import GroundTruth
from qkcopy.io import atomic_dir
from qkcopy.seeds import derive_seed

log = logging.getLogger(__name__)

PASTE_OP = "overlay_onto_background_image"
JPEG_OP = "encoding_quality"
SHARED_PHOTOS = Path(__file__).resolve().parents[4] / "shared" / "data" / "photos"  # <repo>/../shared/...


@dataclass(frozen=True)
class BenchmarkOptions:
    """Sizes and seeds of a synthesised benchmark. n_train=None takes every remaining usable photo."""

    n_references: int = 1000
    n_queries: int = 1000
    matched_fraction: float = 0.5
    n_train: int | None = None
    seed: int = 0
    strength: str = "medium"
    jpeg_quality: int = 90
    heldout: tuple[str, ...] = ()  # queries made only with these families' own edits (qkcopy.data.families)
    avoid: tuple[str, ...] = ()  # sha256 prefixes of photos never made references (still distractors/backgrounds)

    def __post_init__(self) -> None:
        if self.n_references < 1 or self.n_queries < 1:
            raise ValueError(f"need >= 1 reference and query, got {self.n_references} and {self.n_queries}")
        if not 0.0 <= self.matched_fraction <= 1.0:
            raise ValueError(f"matched_fraction must be in [0, 1], got {self.matched_fraction}")
        if self.n_matched > self.n_references:
            raise ValueError(f"{self.n_matched} matched queries need as many distinct references, "
                             f"but n_references is {self.n_references}")
        if self.n_train is not None and self.n_train < 0:
            raise ValueError(f"n_train must be >= 0 or None (all), got {self.n_train}")
        if self.strength not in STRENGTHS:
            raise ValueError(f"unknown strength {self.strength!r}; expected one of {STRENGTHS}")
        excluded_ops(self.heldout)  # refuses unknown families
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    @property
    def n_matched(self) -> int:
        return round(self.n_queries * self.matched_fraction)

    @property
    def n_distractors(self) -> int:
        return self.n_queries - self.n_matched


# The development benchmark: 1,000 ImageNet references, 1,000 queries of which 500 are copies, 500
# distractors, every Caltech101 photo (6,782) as training images; 499 ImageNet photos are left as spares
# (copy-paste backgrounds). `qkcopy make-benchmark --dev --out data/dev` builds it.
DEV_BENCHMARK = BenchmarkOptions(n_references=1000, n_queries=1000, matched_fraction=0.5, n_train=None,
                                 seed=2021, strength="medium")
DEV_IMAGES = SHARED_PHOTOS / "eval"
# The report benchmark (issue 21): the same photo pools, but references drawn only from ImageNet photos the
# development benchmark does not use as references (`avoid` = dev's), and queries made by the held-out edit
# code of every family and `paste` (other code than training's synthesis) with other draws: presets are chosen
# on dev and reported here. `qkcopy make-benchmark --report --avoid-references data/dev --out data/report`.
REPORT_BENCHMARK = BenchmarkOptions(n_references=600, n_queries=600, matched_fraction=0.5, n_train=None,
                                    seed=4242, strength="medium")
DEV_TRAIN_IMAGES = SHARED_PHOTOS / "train"


@dataclass(frozen=True)
class _Source:
    path: Path
    sha: str  # first 16 hex digits of the file's sha256

    def record(self) -> dict[str, str]:
        return {"source": str(self.path), "sha256": self.sha}


def _usable(paths: Sequence[Path], skips: SkipLog, seen: dict[str, Path]) -> Iterator[tuple[_Source, Image.Image]]:
    """Readable, not-yet-seen photos of `paths`, in order; the rest go to `skips`."""
    for path in paths:
        try:
            img = load_image(path)
        except ImageError as err:
            skips.add(err)
            continue
        sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        if sha in seen:
            skips.add(ImageError(path, f"same bytes as {seen[sha]}"))
            continue
        seen[sha] = path
        yield _Source(path.resolve(), sha), img


def _shuffled(folder: Path, rng: random.Random) -> list[Path]:
    paths = scan_images(folder)
    rng.shuffle(paths)
    return paths


def _write_jpeg(img: Image.Image, path: Path, quality: int) -> None:
    img.convert("RGB").save(path, format="JPEG", quality=quality)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace it")
        if not (out / MANIFEST).is_file():
            raise FileExistsError(f"{out} is not empty and holds no {MANIFEST}: refusing to replace a folder "
                                  "that is not a qkcopy benchmark")



def make_benchmark(images: str | Path, out: str | Path, train_images: str | Path | None = None,
                   options: BenchmarkOptions = BenchmarkOptions(), overwrite: bool = False) -> Benchmark:
    """Build a benchmark from the photos under `images` (see the module docstring) and load it back."""
    images, out = Path(images), Path(out)
    train_images = Path(train_images) if train_images is not None else None
    if train_images is not None and train_images.resolve() == images.resolve():
        raise ValueError(f"train_images and images are the same folder ({images}); give train_images=None "
                         "to take training photos from the rest of images")
    _check_out(out, overwrite)
    with atomic_dir(out) as tmp:
        manifest = _build(images, tmp, train_images, options)
    log.info("wrote %s: %d references, %d queries (%d matched), %d training images, %d photos skipped",
             out, len(manifest["references"]), len(manifest["queries"]), options.n_matched,
             len(manifest["train"]), len(manifest["skipped"]))
    return load_benchmark(out)


def _build(images: Path, tmp: Path, train_images: Path | None, opt: BenchmarkOptions) -> dict:
    rng = random.Random(opt.seed)
    skips, seen = SkipLog(), {}
    order = _shuffled(images, rng)
    if opt.avoid:  # photos that must not become references go last: distractor sources and backgrounds
        avoid = set(opt.avoid)
        late = {p for p in order if hashlib.sha256(p.read_bytes()).hexdigest()[:16] in avoid}
        order = [p for p in order if p not in late] + [p for p in order if p in late]
    pool = _usable(order, skips, seen)
    for sub in ("references", "queries", "train"):
        (tmp / sub).mkdir()

    def short(what: str, n: int, got: int, where: Path) -> ValueError:
        return ValueError(f"{where} has too few usable photos: needed {n} for {what}, found {got} "
                          f"({skips.count} skipped so far); lower the sizes or add photos")

    refs: list[_Source] = []
    for src, img in tqdm(islice(pool, opt.n_references), total=opt.n_references, desc="references", unit="img"):
        _write_jpeg(img, tmp / "references" / f"R{len(refs):06d}.jpg", opt.jpeg_quality)
        refs.append(src)
    if len(refs) < opt.n_references:
        raise short("references", opt.n_references, len(refs), images)
    if opt.avoid and set(opt.avoid) & {r.sha for r in refs}:
        raise ValueError(f"{images} has too few photos outside the avoided references for {opt.n_references} "
                         "references; lower --references")
    distractors = [src for src, _ in islice(pool, opt.n_distractors)]
    if len(distractors) < opt.n_distractors:
        raise short("distractor queries", opt.n_distractors, len(distractors), images)

    train_pool = pool if train_images is None else _usable(_shuffled(train_images, rng), skips, seen)
    n_train = opt.n_train
    train: list[_Source] = []
    for src, img in tqdm(islice(train_pool, n_train), total=n_train, desc="train", unit="img"):
        _write_jpeg(img, tmp / "train" / f"T{len(train):06d}.jpg", opt.jpeg_quality)
        train.append(src)
    if n_train is not None and len(train) < n_train:
        raise short("training images", n_train, len(train), train_images or images)
    spares = [src for src, _ in pool]
    backgrounds = spares or train

    slots: list[tuple[str, int]] = [("matched", i) for i in rng.sample(range(len(refs)), opt.n_matched)]
    slots += [("distractor", i) for i in range(len(distractors))]
    rng.shuffle(slots)
    queries, matches = [], {}
    for qi, (kind, i) in enumerate(tqdm(slots, desc="queries", unit="img")):
        qid, src = f"Q{qi:05d}", refs[i] if kind == "matched" else distractors[i]
        matches[qid] = f"R{i:06d}" if kind == "matched" else None
        seed = derive_seed(opt.seed, qi)
        if opt.heldout:
            queries.append(_heldout_query(tmp, qid, kind, matches[qid], src, seed, opt, backgrounds))
            continue
        recipe = sample_recipe(seed, opt.strength)
        bg = None
        if any(e.op == PASTE_OP for e in recipe):
            if not backgrounds:
                raise ValueError("a copy-paste edit needs a background photo, but there are no spare or "
                                 "training photos; add photos or set n_train > 0")
            pick = next(e for e in recipe if e.op == PASTE_OP).params["bg_pick"]
            bg = backgrounds[int(pick * len(backgrounds)) % len(backgrounds)]
        jpeg = recipe[-1].params["quality"] if recipe and recipe[-1].op == JPEG_OP else opt.jpeg_quality
        edits = recipe[:-1] if recipe and recipe[-1].op == JPEG_OP else recipe
        img = apply_recipe(load_image(src.path), edits, None if bg is None else load_image(bg.path))
        _write_jpeg(img, tmp / "queries" / f"{qid}.jpg", jpeg)
        queries.append({"id": qid, "kind": kind, "reference_id": matches[qid], **src.record(), "seed": seed,
                        "background": None if bg is None else bg.record(), "jpeg_quality": jpeg,
                        "edits": [e.to_dict() for e in recipe],
                        "families": sorted({family_of_op(e.op) for e in recipe})})

    GroundTruth(matches).to_csv(tmp / GROUND_TRUTH)
    skips.report(log, "source photos")
    manifest = {
        "format": "qkcopy-benchmark/1",
        "options": asdict(opt),
        "sources": {"images": str(images.resolve()),
                    "train_images": None if train_images is None else str(train_images.resolve())},
        "background_pool": "spares" if spares else "train",
        "versions": {"qkcopy": qkcopy.__version__, "pillow": PIL.__version__,
                     "augly": importlib.metadata.version("augly")},
        "references": [{"id": f"R{i:06d}", **s.record()} for i, s in enumerate(refs)],
        "train": [{"id": f"T{i:06d}", **s.record()} for i, s in enumerate(train)],
        "spares": [s.record() for s in spares],
        "queries": queries,
        "skipped": [{"path": str(Path(p).resolve()), "reason": r} for p, r in skips.items],
    }
    (tmp / MANIFEST).write_text(_manifest_json(manifest), encoding="utf-8")
    return manifest


def _heldout_query(tmp: Path, qid: str, kind: str, ref: str | None, src: _Source, seed: int,
                   opt: BenchmarkOptions, backgrounds: list[_Source]) -> dict:
    """One query made with a held-out family's own edit (`families.heldout_edit`), its manifest record."""
    r = random.Random(seed)
    family = opt.heldout[r.randrange(len(opt.heldout))]
    picks = [backgrounds[r.randrange(len(backgrounds))] for _ in range(3)] if backgrounds else []
    others = [load_image(b.path) for b in picks] if family in ("collage", "paste") else []
    img = heldout_edit(load_image(src.path), family, seed, others)
    _write_jpeg(img, tmp / "queries" / f"{qid}.jpg", opt.jpeg_quality)
    return {"id": qid, "kind": kind, "reference_id": ref, **src.record(), "seed": seed, "family": family,
            "families": [family], "others": [b.record() for b in picks] if others else [],
            "jpeg_quality": opt.jpeg_quality}


def _manifest_json(manifest: dict) -> str:
    """JSON with one line per top-level key and per list item (greppable, diff-friendly)."""
    def one(v) -> str:
        return json.dumps(v, sort_keys=True, ensure_ascii=False)

    parts = []
    for key in sorted(manifest):
        value = manifest[key]
        if isinstance(value, list) and value:
            body = ",\n  ".join(one(v) for v in value)
            parts.append(f" {one(key)}: [\n  {body}\n ]")
        else:
            parts.append(f" {one(key)}: {one(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"
