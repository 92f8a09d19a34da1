"""The error table (serve/errors.py): each kind → one status, chosen by type and reason code, never by message
text; image faults decoded from memory classified by code; the probe's requests of issue 18, one by one."""

import io
import json
import struct
import zlib

import pytest
from PIL import Image
from test_api import LIMITS, api, h, jpeg  # noqa: F401 (the in-process app fixture)

from qkcopy.data import images
from qkcopy.data.images import ImageError, decode_image
from qkcopy.serve.errors import TABLE, kind_of, table_rows

pytestmark = pytest.mark.usefixtures("one_thread")


def png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w × h pixels (one tiny IDAT): a decompression bomb's calling card."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def encoded(fmt: str, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("data, code", [
    (b"", images.EMPTY),
    (b"plain text, not an image", images.UNIDENTIFIED),
    (encoded("PPM"), images.FORMAT),
    (encoded("PNG", (3000, 3000)), images.TOO_MANY_PIXELS),
    (png_header(100_000, 100_000), images.BOMB),
    (encoded("JPEG")[:60], images.CORRUPT),
])
def test_decode_image_says_the_kind_of_fault_in_its_code(data, code, monkeypatch):
    import tempfile

    def no_file(*a, **k):
        raise AssertionError("an upload must be decoded from memory, not through a temporary file")
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_file)
    monkeypatch.setattr(tempfile, "mkstemp", no_file)
    with pytest.raises(ImageError) as err:
        decode_image(data, "up.bin", max_pixels=4_000_000)
    assert err.value.code == code and "up.bin" in str(err.value)
    assert decode_image(encoded("PNG"), "ok.png").size == (8, 8)


def test_each_kind_has_one_status_and_the_message_never_decides():
    assert kind_of(ImageError("x", "not an image PIL can identify", images.CORRUPT))[0] == 422
    assert kind_of(ImageError("x", "cannot decode", images.BOMB))[0] == 413
    for code, status in [(images.EMPTY, 415), (images.UNIDENTIFIED, 415), (images.FORMAT, 415),
                         (images.TOO_MANY_PIXELS, 413), (images.BOMB, 413), (images.CORRUPT, 422)]:
        assert TABLE[(ImageError, code)][0] == status
    assert kind_of(KeyError("a bug"))[:2] == (500, "internal")
    assert len(table_rows()) == len(TABLE) and all(len(r) == 4 for r in table_rows())


def test_the_issue_18_probe_now_gets_4xx_listed_in_the_schema(api, keys):
    r = h(keys["read"])
    schema = api.get("/openapi.json").json()["paths"]
    cases = [("get", "/v1/references?after=36893488147419103233", 422, "after"),
             ("get", "/v1/references/626626131812331159552/thumbnail", 422, "ref_id"),
             ("get", "/v1/references/9223372036854775808", 422, "ref_id"),
             ("delete", "/v1/references/-1", 403, "write"),
             ("get", "/v1/references/0", 422, "ref_id")]
    for method, url, status, needle in cases:
        got = api.request(method, url, headers=r)
        assert got.status_code == status and needle in got.json()["error"]["message"], (url, got.text)
        path = url.split("?")[0].replace("626626131812331159552", "{ref_id}").replace("9223372036854775808", "{ref_id}")
        path = path.replace("/-1", "/{ref_id}").replace("/0", "/{ref_id}")
        assert str(status) in schema[path][method]["responses"], (path, method, status)
    assert api.get("/v1/references/9223372036854775807", headers=r).status_code == 404  # the largest id: fine
    bomb = api.post("/v1/match", files={"images": ("bomb.png", png_header(100_000, 100_000), "image/png")},
                    headers=r)
    assert bomb.status_code == 413 and bomb.json()["error"]["code"] == "too_large"
    assert "decompression bomb" in bomb.json()["error"]["message"]
    for path, allow in [("/v1/references", "GET, POST"), ("/v1/references/1", "DELETE, GET"), ("/healthz", "GET")]:
        got = api.request("TRACE", path, headers=r)
        assert got.status_code == 405 and got.headers["allow"] == allow


@pytest.mark.parametrize("metadata, needle", [
    ('{"a": NaN}', "NaN is not JSON"), ('{"a": 1e999}', "out of the range"), ("[" * 5000 + "]" * 5000, "over"),
    ("[" * 3000 + "]" * 3000, "nested too deeply"), ('{"a": Infinity}', "Infinity is not JSON")])
def test_metadata_that_json_cannot_carry_back_is_a_4xx(api, keys, pictures, metadata, needle):
    r = api.post("/v1/references", files={"image": jpeg(pictures["others"][2])}, data={"metadata": metadata},
                 headers=h(keys["read+write"]))
    assert r.status_code in (400, 413) and needle in r.json()["error"]["message"], r.text
    assert json.loads(api.get("/v1/stats", headers=h(keys["read"])).text)["references"] == 12
