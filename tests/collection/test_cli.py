"""`qkcopy collection …` end to end with the tiny run; refusals end in one line, exit 2."""

import json

import pytest

from qkcopy.cli import main
from qkcopy.collection import Collection
from qkcopy.model.trained import load_trained

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = ["--device", "cpu"]


def test_create_add_list_remove_keys_reindex(tiny_run, tiny_benchmark, tmp_path, capsys):
    coll = tmp_path / "coll"
    refs = tiny_benchmark / "references"
    assert main(["collection", "create", str(coll), "--model", str(tiny_run), "--threshold", "-0.05",
                 "--add", str(refs), "--bank", "main", "--meta", "source=bench", *CPU]) == 0
    assert "added 12 references to bank 'main' (0 already present" in capsys.readouterr().out
    assert main(["collection", "add", str(coll), str(refs), "--bank", "main", *CPU]) == 0  # the pinned model
    assert "added 0 references to bank 'main' (12 already present" in capsys.readouterr().out
    assert main(["collection", "add", str(coll), str(refs / "R000000.jpg"), "--bank", "other", *CPU]) == 0
    capsys.readouterr()
    assert main(["collection", "list", str(coll), "--bank", "main", "--limit", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [1, 2] and rows[0]["metadata"] == {"source": "bench"}
    assert rows[0]["name"] == "R000000.jpg"
    assert main(["collection", "remove", str(coll), "2", "77"]) == 1
    assert "removed 1 references; not found: [77]" in capsys.readouterr().out
    assert main(["collection", "stats", str(coll), "--check"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["banks"] == {"main": 11, "other": 1} and stats["threshold"] == -0.05
    assert stats["model"] == load_trained(tiny_run).fingerprint and stats["check"]["consistent"]
    assert main(["collection", "key", str(coll), "create", "ci", "--scope", "read"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("qk_") and len(token) > 40
    with Collection.open(coll) as c:
        (name, stored_hash, scopes, _), = c.store.keys()
        assert name == "ci" and scopes == ("read",) and token not in stored_hash and len(stored_hash) == 64
    assert main(["collection", "key", str(coll), "revoke", "ci"]) == 0
    assert main(["collection", "snapshot", str(coll)]) == 0
    assert (coll / "cache" / "index.faiss").is_file()
    capsys.readouterr()
    assert main(["collection", "reindex", str(coll), "--type", "ivfpq"]) == 2  # 12 references are too few
    assert "IVF-PQ needs at least 256" in capsys.readouterr().err


def test_refusals(tiny_run, other_tiny_run, tiny_benchmark, tmp_path, capsys):
    coll = tmp_path / "coll"
    assert main(["collection", "create", str(coll), "--model", str(tiny_run), *CPU]) == 0
    assert main(["collection", "create", str(coll), "--model", str(tiny_run), *CPU]) == 2
    assert "already holds a collection" in capsys.readouterr().err
    assert main(["collection", "add", str(coll), str(tiny_benchmark / "references"), "--model", str(other_tiny_run),
                 *CPU]) == 2
    assert "use the collection's model" in capsys.readouterr().err
    assert main(["collection", "add", str(coll), str(tiny_benchmark / "references"), "--meta", "oops", *CPU]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["collection", "stats", str(tmp_path / "none")]) == 2
    assert "not a qkcopy collection" in capsys.readouterr().err
    assert main(["collection", "key", str(coll), "revoke", "nobody"]) == 2
    assert main(["collection", "add", str(coll), str(tmp_path / "gone.jpg"), *CPU]) == 2
    assert "no such image file or folder" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["collection", "add", str(coll), str(bad), *CPU]) == 0
    assert "added 0 references" in capsys.readouterr().out
