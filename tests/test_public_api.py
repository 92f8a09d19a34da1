"""The public API: the README's "Python API" example runs as written, and each function returns what it says."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import qkcopy
from qkcopy.evaluation.threshold import Threshold, save_threshold

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def workdir(tmp_path, tiny_run, tiny_benchmark, one_thread):
    """The folders the README example names: runs/qk, refs/, uploads/, data/mybench, a calibrated threshold."""
    shutil.copytree(tiny_run, tmp_path / "runs" / "qk")
    shutil.copytree(tiny_benchmark, tmp_path / "data" / "mybench")
    shutil.copytree(tiny_benchmark / "references", tmp_path / "refs")
    shutil.copytree(tiny_benchmark / "queries", tmp_path / "uploads")
    model = qkcopy.load_model(tmp_path / "runs" / "qk", device="cpu")
    save_threshold(Threshold(-0.05, 0.95, 0.5, 0.9, True, model.fingerprint, 10, "tiny"),
                   tmp_path / "runs" / "qk" / "eval" / "threshold.json")
    before = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(before)


def test_readme_example_runs(workdir, capsys):
    exec(compile(_readme_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"µAP \d\.\d{3}  R@P90 \d\.\d{3}  on 10 queries", out)
    assert (workdir / "index" / "index.faiss").is_file()
    copies = [line for line in out.splitlines() if " is a copy of " in line]
    assert copies, out  # lightly edited copies score above −0.05 with the tiny model
    assert all(re.match(r"Q\d+ is a copy of R\d+", line) for line in copies)


def test_api_functions_agree_with_each_other(workdir):
    model = qkcopy.load_model("runs/qk", device="cpu")
    refs = qkcopy.embed(model, "refs/", side="reference")
    queries = qkcopy.embed(model, sorted(Path("uploads").glob("*.jpg")), side="query")
    assert refs.vectors.shape == (12, 256) and queries.vectors.shape == (10, 256)
    index = qkcopy.build_index(model, "refs/")  # in memory, not saved
    result = qkcopy.search(model, index, "uploads/", k=1)
    best = {m.query: m for m in result.matches}
    for qi, qid in enumerate(queries.ids):  # the API's search is the exact nearest K descriptor
        d2 = ((refs.vectors - queries.vectors[qi]) ** 2).sum(1)
        assert best[qid].reference == refs.ids[int(np.argmin(d2))]
        assert best[qid].score == pytest.approx(-float(d2.min()), rel=1e-4, abs=1e-5)
    assert all(m.is_copy is None for m in result.matches)  # no threshold: ranked, not labelled
    framed = {m.query: m for m in qkcopy.search(model, index, "uploads/", k=1, regions=2).matches}
    for qid, m in best.items():  # the whole image is one of the regions: a query's best score can only rise
        assert framed[qid].score >= m.score - 1e-5 and len(framed[qid].box) == 4
    metrics = qkcopy.evaluate(model, "data/mybench")
    assert 0.0 <= metrics.micro_ap <= 1.0 and metrics.recall_at_1 > 0.5
    with pytest.raises(ValueError, match="side must be one of"):
        qkcopy.embed(model, "refs/", side="key")
