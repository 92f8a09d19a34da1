"""The HTTP API in-process (FastAPI's TestClient) against a temporary collection: every route, every bad request."""

import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from qkcopy.serve.app import create_app
from qkcopy.serve.auth import KeyRing
from qkcopy.serve.service import Limits, open_service

STORES = ["faiss", "milvus-lite"]  # the API is the same on both vector stores
pytestmark = pytest.mark.usefixtures("one_thread")
LIMITS = Limits(max_upload_bytes=300_000, max_pixels=4_000_000, max_images=4, timeout_s=20)


@pytest.fixture
def api(collection_dir):
    service = open_service(collection_dir, device="cpu", limits=LIMITS)
    with TestClient(create_app(service, KeyRing(service.collection.store))) as client:
        client.service = service
        yield client
    service.collection.close()


def h(key):
    return {"Authorization": f"Bearer {key}"}


def jpeg(path) -> tuple:
    return (path.name, path.read_bytes(), "image/jpeg")


@pytest.mark.parametrize("collection_dir", STORES, indirect=True)
def test_match_finds_the_reference_of_an_edited_copy_and_says_copy(api, keys, pictures):
    files = [("images", jpeg(pictures["copies"][1])), ("images", jpeg(pictures["others"][0]))]
    r = api.post("/v1/match", files=files, data={"k": "3"}, headers=h(keys["read"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == api.service.collection.fingerprint and body["threshold"] < 0
    copy, other = body["results"]
    assert copy["image"] == "copy1.jpg" and len(copy["matches"]) == 3
    best = copy["matches"][0]
    assert best["name"] == "ref001.jpg" and best["metadata"] == {"source": "test"} and best["bank"] == "default"
    assert best["is_copy"] is True and copy["is_copy"] is True
    assert [m["score"] for m in copy["matches"]] == sorted((m["score"] for m in copy["matches"]), reverse=True)
    assert other["is_copy"] is False and not any(m["is_copy"] for m in other["matches"])
    recent = api.get("/v1/recent", headers=h(keys["read"])).json()
    assert [x["name"] for x in recent[:2]] == ["other000.jpg", "copy1.jpg"]
    assert recent[1]["thumbnail"].startswith("data:image/jpeg;base64,")


@pytest.mark.parametrize("collection_dir", STORES, indirect=True)
def test_add_get_thumbnail_readd_delete_and_bank_filter(api, keys, pictures):
    w, r = h(keys["read+write"]), h(keys["read"])
    new = pictures["others"][1]
    added = api.post("/v1/references", files={"image": jpeg(new)},
                     data={"bank": "extra", "metadata": json.dumps({"owner": "me", "n": 3})}, headers=w)
    assert added.status_code == 201 and added.json()["existing"] is False
    ref_id = added.json()["id"]
    again = api.post("/v1/references", files={"image": jpeg(new)}, data={"bank": "extra"}, headers=w)
    assert again.status_code == 200 and again.json() == {"id": ref_id, "existing": True}
    got = api.get(f"/v1/references/{ref_id}", headers=r).json()
    assert got["name"] == new.name and got["bank"] == "extra" and got["metadata"] == {"owner": "me", "n": 3}
    thumb = api.get(f"/v1/references/{ref_id}/thumbnail", headers=r)
    assert thumb.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(thumb.content)).size[0] <= 160
    only = api.post("/v1/match", files={"images": jpeg(new)}, data={"k": "5", "bank": "extra"}, headers=r).json()
    assert [m["id"] for m in only["results"][0]["matches"]] == [ref_id]
    assert only["results"][0]["matches"][0]["is_copy"] is True
    stats = api.get("/v1/stats", headers=r).json()
    assert stats["banks"] == {"default": 12, "extra": 1} and stats["references"] == 13
    listed = api.get("/v1/references", params={"bank": "extra"}, headers=r).json()
    assert [x["id"] for x in listed] == [ref_id]
    assert api.delete(f"/v1/references/{ref_id}", headers=w).status_code == 204
    assert api.get(f"/v1/references/{ref_id}", headers=r).status_code == 404
    assert api.delete(f"/v1/references/{ref_id}", headers=w).json()["error"]["code"] == "not_found"
    gone = api.post("/v1/match", files={"images": jpeg(new)}, data={"bank": "extra"}, headers=r).json()
    assert gone["results"][0]["matches"] == []
    assert api.service.collection.check()["consistent"]


def test_health_ready_metrics_docs_and_page(api, keys, pictures):
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").status_code == 200
    api.post("/v1/match", files={"images": jpeg(pictures["copies"][0])}, headers=h(keys["read"]))
    text = api.get("/metrics").text
    assert 'qkcopy_requests_total{method="POST",route="/v1/match",status="200"} 1.0' in text
    assert "qkcopy_batch_size_count 1.0" in text and "qkcopy_references 12.0" in text
    assert "/v1/match" in api.get("/openapi.json").json()["paths"]
    page = api.get("/")
    assert page.status_code == 200 and "qkcopy review" in page.text and "default-src 'self'" in \
        page.headers["content-security-policy"]


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buf, "PNG")  # 9 Mpx in a few kB, over the 4 Mpx limit
    return buf.getvalue()


def _truncated(path) -> bytes:
    return path.read_bytes()[: len(path.read_bytes()) // 2]


@pytest.mark.parametrize("case, status, code, needle", [
    ("not an image", 415, "not_an_image", "not an image"),
    ("empty file", 415, "not_an_image", "empty"),
    ("truncated", 422, "bad_image", "cannot decode"),
    ("bomb", 413, "too_large", "over the limit"),
    ("huge body", 413, "too_large", "request body over the limit"),
    ("svg", 415, "not_an_image", "not an image"),
    ("too many images", 413, "too_large", "limit is 4"),
    ("no key", 401, "unauthorized", "no API key"),
    ("wrong key", 401, "unauthorized", "invalid API key"),
    ("write-only key matching", 403, "forbidden", "lacks the 'read' scope"),
    ("missing images", 422, "invalid_request", "images"),
    ("k out of range", 422, "invalid_request", "k"),
    ("control character in bank", 422, "invalid_request", "bank: String should match pattern"),
])
def test_bad_match_requests(api, keys, pictures, case, status, code, needle):
    good = jpeg(pictures["copies"][0])
    files, data, headers = [("images", good)], {}, h(keys["read"])
    if case == "not an image":
        files = [("images", ("x.jpg", b"just some text, named .jpg", "image/jpeg"))]
    elif case == "empty file":
        files = [("images", ("x.jpg", b"", "image/jpeg"))]
    elif case == "truncated":
        files = [("images", ("t.jpg", _truncated(pictures["refs"][0]), "image/jpeg"))]
    elif case == "bomb":
        files = [("images", ("bomb.png", _bomb(), "image/png"))]
    elif case == "huge body":
        files = [("images", ("big.jpg", b"\xff" * 400_000, "image/jpeg"))]
    elif case == "svg":
        files = [("images", ("a.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"))]
    elif case == "too many images":
        files = [("images", good)] * 5
    elif case == "no key":
        headers = {}
    elif case == "wrong key":
        headers = h("qk_not-a-key")
    elif case == "write-only key matching":
        headers = h(keys["write"])
    elif case == "missing images":
        files = None
        data = {"k": "3"}
    elif case == "k out of range":
        data = {"k": "0"}
    elif case == "control character in bank":
        data = {"bank": "a\tb"}
    r = api.post("/v1/match", files=files, data=data, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and needle in r.json()["error"]["message"], r.json()
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("case, status, needle", [
    ("read key adding", 403, "lacks the 'write' scope"),
    ("metadata not JSON", 400, "metadata: not valid JSON"),
    ("metadata not an object", 400, "metadata: must be a JSON object"),
    ("missing image", 422, "image"),
    ("bad bank", 422, "bank: String should match pattern"),
])
def test_bad_reference_requests(api, keys, pictures, case, status, needle):
    files, data, headers = {"image": jpeg(pictures["others"][2])}, {}, h(keys["read+write"])
    if case == "read key adding":
        headers = h(keys["read"])
    elif case == "metadata not JSON":
        data = {"metadata": "{oops"}
    elif case == "metadata not an object":
        data = {"metadata": "[1, 2]"}
    elif case == "missing image":
        files = None
        data = {"bank": "x"}
    elif case == "bad bank":
        data = {"bank": "tab\there"}
    r = api.post("/v1/references", files=files, data=data, headers=headers)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert api.service.collection.stats()["references"] == 12


@pytest.mark.parametrize("collection_dir", STORES, indirect=True)
def test_bad_lookups(api, keys):
    r, w = h(keys["read"]), h(keys["write"])
    assert api.get("/v1/references/abc", headers=r).status_code == 422
    assert api.get("/v1/references/99999", headers=r).json()["error"]["code"] == "not_found"
    assert api.delete("/v1/references/1", headers=r).status_code == 403
    assert api.get("/v1/nothing-here", headers=r).json()["error"]["code"] == "http_error"
    assert api.get("/v1/references", params={"limit": "0"}, headers=r).status_code == 422
    assert api.get("/v1/stats", headers={"X-API-Key": keys["read"]}).status_code == 200
    assert api.get("/v1/stats", headers=w).status_code == 403
    assert api.service.collection.stats()["references"] == 12


def test_full_queue_is_429_and_a_stuck_model_is_503_with_retry_after(collection_dir, keys, pictures):
    import threading

    service = open_service(collection_dir, device="cpu",
                           limits=Limits(queue_size=1, max_batch=1, max_wait_ms=0, timeout_s=0.5))
    gate = threading.Event()
    describe = service.describer.describe
    service.describer.describe = lambda side, items: (gate.wait(10), describe(side, items))[1]
    with TestClient(create_app(service, KeyRing(service.collection.store))) as api:
        files = {"images": jpeg(pictures["copies"][0])}
        slow = api.post("/v1/match", files=files, headers=h(keys["read"]))  # the worker takes it and waits
        assert slow.status_code == 503 and slow.json()["error"]["code"] == "timeout"
        assert int(slow.headers["retry-after"]) >= 1
        service.batcher.submit("filler")  # the queue (size 1) is now full
        full = api.post("/v1/match", files=files, headers=h(keys["read"]))
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        assert api.get("/readyz").status_code == 503
        gate.set()
    service.collection.close()


@pytest.mark.slow
def test_onnx_runtime_gives_the_torch_descriptors_and_matches(collection_dir, keys, pictures):
    from qkcopy.collection.describe import Describer
    from qkcopy.data.images import load_image

    service = open_service(collection_dir, device="cpu", limits=LIMITS, runtime="onnx")
    torch_describer = Describer(service.describer.trained)
    items = [service.describer.prepare(load_image(p)) for p in pictures["copies"] + pictures["refs"][:2]]
    for side in ("query", "reference"):
        onnx = service.describer.describe(side, items)
        assert onnx.shape == (5, 256) and abs(onnx - torch_describer.describe(side, items)).max() < 1e-4
    assert (collection_dir / f"onnx-{service.collection.fingerprint}" / "q.onnx").is_file()
    with TestClient(create_app(service, KeyRing(service.collection.store))) as api:
        r = api.post("/v1/match", files={"images": jpeg(pictures["copies"][1])}, headers=h(keys["read"]))
        assert r.json()["results"][0]["matches"][0]["name"] == "ref001.jpg"
    service.collection.close()
    with pytest.raises(ValueError, match="runtime must be"):
        open_service(collection_dir, device="cpu", runtime="tensorrt")
