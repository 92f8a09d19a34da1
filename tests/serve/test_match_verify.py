"""Verification in the service (issue 20): `qkcopy serve --verify K --references DIR` re-scores the top K of a
match by local features (score + 1.0 × confidence, as `qkcopy eval --verify`), returns each verified copy's
outline in the query (quad, and its bounding box as the box); `qkcopy match --collection` takes the model's
regions and --regions / --verify as the service does."""

import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image
from served import start_server
from testkit import FAST, free_port, textured_picture

from qkcopy.cli import main
from qkcopy.client import ApiError, Client
from qkcopy.collection import Collection
from qkcopy.collection.describe import Describer, add_files
from qkcopy.data.regions import box_iou
from qkcopy.evaluation.threshold import Threshold, threshold_to_json
from qkcopy.serve.service import open_service

pytestmark = pytest.mark.usefixtures("one_thread")
PASTE_BOX = (100, 80, 300, 240)  # where reference 1 (300 × 240, shrunk to 200 × 160) sits in the 400 × 320 query


@pytest.fixture(scope="module")
def textured(tmp_path_factory, trained, tiny_run) -> dict:
    """Three textured references in a collection (its model: the tiny run with 8 query regions by default) and
    a query with reference 1 pasted into another textured picture."""
    root = tmp_path_factory.mktemp("verify")
    run = root / "run"
    shutil.copytree(tiny_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["regions"] = 8  # the run's own choice, which `qkcopy match --collection` must take
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (root / "refs").mkdir()
    refs = []
    for i in range(3):
        textured_picture(10 + i).save(root / "refs" / f"tex{i}.png")
        refs.append(root / "refs" / f"tex{i}.png")
    query = textured_picture(20, (400, 320))
    query.paste(Image.open(refs[1]).resize((200, 160)), PASTE_BOX[:2])
    query.save(root / "query.png")
    describer = Describer(trained)
    with Collection.create(root / "c", trained.fingerprint, describer.dim, run) as coll:
        assert add_files(coll, describer, refs, "default", {})[0] == 3
    return dict(root=root, collection=root / "c", refs=root / "refs", query=root / "query.png")


def test_serve_verify_rescores_the_top_k_with_the_outline_on_the_real_server(textured, tmp_path, capsys):
    from qkcopy.serve.auth import create_key

    with Collection.open(textured["collection"]) as coll:
        key = create_key(coll.store, "t", ["read"])
    port = free_port()
    server = start_server(textured["collection"], port, open(tmp_path / "server.log", "wb"), "--verify", "3",
                          "--references", str(textured["refs"]), "--regions", "0")
    try:
        with Client(f"http://127.0.0.1:{port}", key) as client:
            verified = client.match([textured["query"]], k=3)["results"][0]["matches"]
            plain = client.match([textured["query"]], k=3, verify=0)["results"][0]["matches"]
            with pytest.raises(ApiError) as err:
                client.match([textured["query"]], k=3, verify=11)
    finally:
        server.terminate()
        server.wait(30)
    assert err.value.status == 422 and "verify" in err.value.message
    assert "verify=3" in (tmp_path / "server.log").read_text()  # the start-up line prints the setting
    best = verified[0]
    print("verified", {k: best[k] for k in ("name", "score", "confidence", "box", "quad")}, "unverified score",
          next(m["score"] for m in plain if m["id"] == best["id"]))
    assert best["name"] == "tex1.png" and best["confidence"] > 0.5 and len(best["quad"]) == 4
    assert box_iou(np.array([best["box"]]), np.array([PASTE_BOX]))[0, 0] >= 0.8, best["box"]
    assert all(m["confidence"] == 0.0 and m["quad"] is None for m in verified[1:])  # verified, not copies
    before = {m["id"]: m["score"] for m in plain}
    assert all(m["confidence"] is None and m["quad"] is None for m in plain)
    for m in verified:  # the rule of `qkcopy eval --verify`: score + 1.0 × confidence
        assert m["score"] == pytest.approx(before[m["id"]] + m["confidence"], abs=1e-5)
    assert [m["score"] for m in verified] == sorted((m["score"] for m in verified), reverse=True)


def test_the_threshold_recorded_scoring_is_checked_and_verify_needs_the_files(textured, trained, tmp_path, caplog):
    folder = tmp_path / "c"
    shutil.copytree(textured["collection"], folder)
    made = Threshold(-1.0, 0.9, 0.5, 0.9, True, trained.fingerprint, 10, "b", scoring="regions=8 margin=0")
    with Collection.open(folder) as coll:
        coll.store.set_settings({"threshold": threshold_to_json(made)})
    with caplog.at_level("WARNING", logger="qkcopy.serve.service"):
        open_service(folder, device="cpu", verify=2, references=textured["refs"]).collection.close()
    assert "calibrated on scores made with regions=8 margin=0, the service makes regions=8 margin=0 verify=2" \
        in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="qkcopy.serve.service"):
        open_service(folder, device="cpu").collection.close()
    assert "calibrated on scores made" not in caplog.text
    with pytest.raises(ValueError, match="--verify needs --references"):
        open_service(folder, device="cpu", verify=2)
    service = open_service(folder, device="cpu")
    try:
        with pytest.raises(ValueError, match="no reference files to verify with"):
            service.prepare(textured["query"].read_bytes(), "q.png", 0, verify=1)
    finally:
        service.collection.close()


def test_match_collection_takes_the_models_regions_and_the_flags(textured, tmp_path):
    base = ["match", "--collection", str(textured["collection"]), str(textured["query"]), "--k", "3"]
    assert main(base + ["--out", str(tmp_path / "default.json")] + FAST[2:]) == 0  # the run's 8 regions
    assert main(base + ["--regions", "0", "--out", str(tmp_path / "whole.json")] + FAST[2:]) == 0
    assert main(base + ["--verify", "2", "--references", str(textured["refs"]),
                        "--out", str(tmp_path / "verified.json")] + FAST[2:]) == 0
    default, whole, verified = (json.loads((tmp_path / f"{n}.json").read_text())[0]["matches"]
                                for n in ("default", "whole", "verified"))
    assert {tuple(m["box"]) for m in whole} == {(0, 0, 400, 320)} and all(m["confidence"] is None for m in whole)
    by_id = {m["id"]: m["score"] for m in whole}
    assert any(tuple(m["box"]) != (0, 0, 400, 320) for m in default)  # a region won somewhere
    assert all(m["score"] >= by_id[m["id"]] - 1e-5 for m in default)  # best over regions ≥ the whole image's
    assert verified[0]["name"] == "tex1.png" and verified[0]["confidence"] > 0.5
    assert sum(m["confidence"] is not None for m in verified) == 2  # the top 2 only
