"""Verification in the service (issue 20): a match request's top K references re-scored by local features, by
the rule of `qkcopy eval --verify K` (`qkcopy.data.verify`): SIFT on both images at `VerifyConfig.max_side`, a
RANSAC homography, score + bonus × confidence, the verdict taken again and the matches ranked again. A verified
match (confidence > 0) carries the reference's outline mapped into the query (`quad`, 4 corners in query pixels)
and that outline's bounding box as its `box`.

The collection keeps thumbnails, not the references' images: `ReferenceFiles` finds a reference's file by its
name in the folder given to `qkcopy serve --references` and trusts it only when its bytes hash to the
reference's sha256 (a renamed or edited file is not used); a reference without its file stays unverified
(confidence null), as do matches below the top K.

Letters: k matches of a query, K verified (≤ k).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from qkcopy.data.images import ImageError, decode_image, scan_images
from qkcopy.data.verify import Features, VerifyConfig, features, verify_features
from qkcopy.evaluation.threshold import is_copy

log = logging.getLogger(__name__)
MAX_VERIFY = 10  # references verified per query, at most (each ≈ 15–20 ms on one CPU thread at 320 px)


@dataclass(frozen=True)
class ReferenceFiles:
    """Reference image files by name (file name, as `qkcopy collection add` records it), from one folder."""

    by_name: dict[str, list[Path]]

    @classmethod
    def scan(cls, folder: str | Path) -> ReferenceFiles:
        by_name: dict[str, list[Path]] = defaultdict(list)
        for path in scan_images(folder):  # a missing folder: "does not exist"
            by_name[path.name].append(path)
        return cls(dict(by_name))

    def image(self, name: str, sha256: str) -> Image.Image | None:
        """The file named `name` whose bytes hash to `sha256`, decoded; None when there is none (or unreadable)."""
        for path in self.by_name.get(name, []):
            try:
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() == sha256:
                    return decode_image(data, path)
            except (OSError, ImageError) as err:
                log.warning("reference file %s not usable to verify: %s", path, err)
        return None


def check_verify(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_VERIFY:
        raise ValueError(f"verify must be an integer in 0..{MAX_VERIFY}, got {k!r}")
    return k


def verify_matches(matches: Sequence, query: Features, collection, files: ReferenceFiles, cfg: VerifyConfig,
                   threshold=None) -> list:
    """One query's matches (`service.BoxedMatch`, best first) with the first `cfg.k` verified and re-scored,
    ranked again by score (stable); a verified one gets its `confidence` (and `quad`, when > 0)."""
    out = []
    for rank, m in enumerate(matches):
        confidence, quad, box, score = None, None, m.box, m.score
        ref = collection.get(m.id) if rank < cfg.k else None
        img = files.image(ref.name, ref.sha256) if ref is not None else None
        if img is not None:
            v = verify_features(query, features(img, cfg), cfg)
            confidence, score = v.confidence, m.score + cfg.bonus * v.confidence
            if v.confidence > 0 and v.quad is not None:
                quad = tuple((round(float(x), 2), round(float(y), 2)) for x, y in v.quad)
                box = v.box
        elif rank < cfg.k:
            log.info("reference #%d (%s) not verified: no file of that name and content under --references", m.id,
                     getattr(ref, "name", "removed"))
        out.append(dataclasses.replace(m, score=score, is_copy=is_copy(score, threshold), box=box,
                                       confidence=confidence, quad=quad))
    return sorted(out, key=lambda m: -m.score)
