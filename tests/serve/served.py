"""Helpers of the service tests: drawn copies, a pasted copy, a real `qkcopy serve` process (fixtures: conftest.py)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image, ImageEnhance
from testkit import draw_images


def edited_copy(src: Path, out: Path) -> Path:
    img = Image.open(src).convert("RGB").resize((80, 80))
    ImageEnhance.Brightness(img).enhance(1.1).save(out, quality=70)
    return out


PASTE_BOX = (100, 60, 260, 220)  # x0, y0, x1, y1 in a 320 px host: a 160 px side, 50 % of the host's
PASTED = 3  # pictures["refs"][3] (reference id 4) is the one pasted


def pasted_copy(pictures: dict, folder: Path) -> Path:
    """Reference PASTED shrunk to half the host's side and pasted at PASTE_BOX into an unrelated drawn picture."""
    host = Image.open(draw_images(folder / "hosts", 1, seed=31, size=320)[0]).convert("RGB")
    host.paste(Image.open(pictures["refs"][PASTED]).convert("RGB").resize((160, 160)), PASTE_BOX[:2])
    host.save(folder / "pasted.jpg", quality=90)
    return folder / "pasted.jpg"


def start_server(collection, port, log, *args):
    """`qkcopy serve COLLECTION` (one torch thread, CPU) on 127.0.0.1:`port`, output into `log`; returns the
    process once /readyz answers 200."""
    env = {**os.environ, "QKCOPY_PORT": str(port), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "qkcopy", "serve", str(collection), "--device", "cpu",
                             "--threads", "1", "--snapshot-interval", "1", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.flush()
            raise AssertionError(f"the server exited with {proc.returncode}:\n"
                                 + open(log.name, errors="replace").read()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("the server did not become ready within 120 s")
