"""Schemathesis hooks of the contract fuzz (loaded with SCHEMATHESIS_HOOKS=fuzz_hooks): real image files for the
multipart parts whose `encoding.contentType` names image types, since no schema can say "bytes PIL decodes";
and a one-file `images` sent as a file (before_call).
Each drawn image is small (1–48 px a side), of a drawn colour, saved in the drawn format."""

import io
import json

import schemathesis
from hypothesis import strategies as st
from PIL import Image

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF",
           "image/bmp": "BMP", "image/tiff": "TIFF"}


def _image(fmt: str, size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


# bank names: `str.isprintable` (the schema's format "printable"; its pattern only rules out control characters)
schemathesis.openapi.format("printable", st.text(st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")), max_size=64).filter(str.isprintable))

# `metadata`: a JSON object, as the part's text (the schema: contentMediaType application/json, contentSchema
# object; its multipart encoding names application/json)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
schemathesis.openapi.media_type("application/json", st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=6)
                                .map(lambda d: json.dumps(d).encode()))

for media_type, fmt in FORMATS.items():
    schemathesis.openapi.media_type(media_type, st.builds(
        _image, st.just(fmt), st.tuples(st.integers(1, 48), st.integers(1, 48)),
        st.tuples(*[st.integers(0, 255)] * 3)))



@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """A positive case's one-image `images` drawn as bare bytes, not a list of one (schemathesis's coverage phase
    does this), goes out as a part without a filename, which multipart parsers (Starlette's too) read as a text
    field: send it as the list of one file it stands for. (In a negative case bare bytes are the violation.)"""
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive and isinstance(case.body, dict) and isinstance(case.body.get("images"), bytes):
        case.body["images"] = [case.body["images"]]
