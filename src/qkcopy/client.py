"""A small Python client for `qkcopy serve`: match images, add/remove/get references, stats.

    from qkcopy.client import Client
    with Client("http://127.0.0.1:8000", key) as c:
        result = c.match(["upload.jpg"], k=5)          # the API's JSON: {"results": [{"matches": [...]}]}

429 and 503 answers are retried after their Retry-After (at most `retries` times); any other error raises
`ApiError` with the status and the server's message.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


class ApiError(RuntimeError):
    """An error answer of the service: HTTP `status`, the error's `code` and the server's `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    """The service's HTTP API from Python.

    Args:
        url: the server, e.g. http://127.0.0.1:8000. key: an API key [env QKCOPY_API_KEY].
        timeout: seconds per request. retries: how often a 429/503 is retried after its Retry-After.
    Raises (every call):
        ApiError: any other error answer (status, code, message). httpx.HTTPError: the server is unreachable.
    """

    def __init__(self, url: str, key: str | None = None, timeout: float = 30.0, retries: int = 3) -> None:
        key = key or os.environ.get("QKCOPY_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.retries = retries

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        for attempt in range(self.retries + 1):
            r = self.http.request(method, path, **kwargs)
            if r.status_code in (429, 503) and attempt < self.retries:
                time.sleep(min(float(r.headers.get("retry-after", "1")), 30.0))
                continue
            if r.is_error:
                try:
                    err = r.json()["error"]
                except (ValueError, KeyError, TypeError):
                    err = {"code": "http_error", "message": r.text[:200]}
                raise ApiError(r.status_code, err["code"], err["message"])
            return r
        raise AssertionError("unreachable")

    @staticmethod
    def _file(image: str | Path | bytes, i: int) -> tuple[str, bytes]:
        if isinstance(image, bytes):
            return f"image{i}", image
        path = Path(image)
        return path.name, path.read_bytes()

    def match(self, images: Sequence[str | Path | bytes], k: int = 10, bank: str | None = None,
              regions: int | None = None, verify: int | None = None) -> dict:
        """Match image files or bytes: {"model", "threshold", "results": [{"image", "is_copy", "matches"}]}, each
        match with the query region it was found in (`box`); `regions`: 0..16 regions beside the whole image
        (None: the server's --regions); `verify`: 0..10 best matches verified by local features, each with its
        `confidence` and `quad` (None: the server's --verify)."""
        files = [("images", self._file(im, i)) for i, im in enumerate(images)]
        data = {"k": str(k), **({"bank": bank} if bank else {}),
                **({"regions": str(regions)} if regions is not None else {}),
                **({"verify": str(verify)} if verify is not None else {})}
        return self._call("POST", "/v1/match", files=files, data=data).json()

    def add(self, image: str | Path | bytes, bank: str = "default", metadata: dict | None = None,
            name: str | None = None) -> dict:
        """Add one reference to `bank` with JSON-object `metadata`: {"id", "existing"} (existing: these exact
        bytes were already in the bank, nothing added)."""
        data = {"bank": bank, "metadata": json.dumps(metadata or {}), **({"name": name} if name else {})}
        return self._call("POST", "/v1/references", files={"image": self._file(image, 0)}, data=data).json()

    def get(self, ref_id: int) -> dict:
        """One reference's record (ApiError 404 when there is none)."""
        return self._call("GET", f"/v1/references/{int(ref_id)}").json()

    def remove(self, ref_id: int) -> None:
        """Remove one reference (ApiError 404 when there is none)."""
        self._call("DELETE", f"/v1/references/{int(ref_id)}")

    def stats(self) -> dict:
        """Counts per bank, the model, the threshold and the index."""
        return self._call("GET", "/v1/stats").json()
