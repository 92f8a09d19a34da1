"""Issue 10, row 6: the smaller cases — `index --add` keeps other files, missing folders and bad output paths
are named before any work, the folder scan names what it leaves out, an empty ground truth is refused before
embedding, and a failed `embed` leaves no shards behind."""

import logging
import os
import shutil

import pytest
from testkit import FAST, refused

from qkcopy.cli import main
from qkcopy.data.images import scan_images
from qkcopy.retrieval.index import ReferenceIndex

pytestmark = pytest.mark.usefixtures("one_thread")


def test_index_add_touches_only_its_own_files(tiny_run, tiny_benchmark, make_images, tmp_path):
    idx = tmp_path / "idx"
    assert main(["index", "--model", str(tiny_run), "--references", str(tiny_benchmark / "references"), "--out",
                 str(idx)] + FAST) == 0
    (idx / "NOTES.md").write_text("which references these are")
    (idx / "thumbs").mkdir()
    (idx / "thumbs" / "R000000.png").write_bytes(b"thumb")
    os.symlink("NOTES.md", idx / "readme-link")
    extra = make_images(tmp_path / "extra", 3, seed=30, prefix="X")
    assert main(["index", "--model", str(tiny_run), "--references", str(tmp_path / "extra"), "--out", str(idx),
                 "--add"] + FAST) == 0
    assert (idx / "NOTES.md").read_text() == "which references these are"
    assert (idx / "thumbs" / "R000000.png").read_bytes() == b"thumb"
    assert os.readlink(idx / "readme-link") == "NOTES.md"
    index = ReferenceIndex.load(idx)
    assert index.ids[-3:] == [p.stem for p in extra] and len(index) == 15
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx.")]  # no swap leftovers


def test_search_names_a_missing_folder_or_file(tiny_run, tiny_benchmark, tmp_path, capsys):
    refused(["search", "--model", str(tiny_run), "--index", str(tmp_path / "idx"), "--images",
             str(tmp_path / "missing_dir"), "--out", str(tmp_path / "r.csv")], capsys,
            f"image folder {tmp_path / 'missing_dir'} does not exist")
    refused(["search", "--model", str(tiny_run), "--index", str(tmp_path / "idx"),
             str(tiny_benchmark / "queries" / "Q00000.jpg"), str(tmp_path / "nope.jpg"),
             "--out", str(tmp_path / "r.csv")], capsys, f"query image {tmp_path / 'nope.jpg'} not found")


def test_search_checks_the_results_path_before_any_work(tiny_benchmark, tmp_path, capsys):
    # neither the model nor the index exists: the results path is what is refused, so it was checked first
    common = ["search", "--model", str(tmp_path / "no-model"), "--index", str(tmp_path / "no-index"), "--images",
              str(tiny_benchmark / "queries")]
    refused(common + ["--out", str(tmp_path / "r.txt")], capsys, "must end in .csv or .json", "r.txt")
    (tmp_path / "dir.csv").mkdir()
    refused(common + ["--out", str(tmp_path / "dir.csv")], capsys, "is a folder")
    (tmp_path / "file").write_text("")
    refused(common + ["--out", str(tmp_path / "file" / "r.csv")], capsys, "is not a folder")


def test_scan_names_what_it_leaves_out(make_images, tmp_path, caplog):
    root = tmp_path / "photos"
    make_images(root, 2, prefix="a")
    make_images(root / "x.jpg", 1, prefix="inside")  # a folder named like an image: its contents count
    make_images(root / ".thumbnails", 2, prefix="t")
    shutil.copy(root / "a000.jpg", root / ".hidden.jpg")
    os.symlink(tmp_path / "gone.jpg", root / "dangling.jpg")
    os.symlink(root, root / "loop")
    (root / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.INFO, logger="qkcopy.data.images"):
        paths = scan_images(root)
    assert [p.relative_to(root).as_posix() for p in paths] == ["a000.jpg", "a001.jpg", "x.jpg/inside000.jpg"]
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "left out 5 entries" in warning
    for name, reason in ((".hidden.jpg", "hidden file"), ("dangling.jpg", "dangling symlink"),
                         ("x.jpg", "a folder, not an image"), (".thumbnails", "hidden folder"),
                         ("loop", "symlink loop")):
        assert f"{root / name} ({reason}" in warning, (name, warning)
    assert any("1 files without an image extension" in r.getMessage() for r in caplog.records)


def test_empty_ground_truth_is_refused_before_embedding(tiny_run, tiny_benchmark, tmp_path, capsys):
    bench = tmp_path / "bench"
    shutil.copytree(tiny_benchmark, bench)
    (bench / "ground_truth.csv").write_text("query_id,reference_id\n")
    line = refused(["eval", "--model", str(tiny_run), "--benchmark", str(bench), "--out", str(tmp_path / "ev")],
                   capsys, "the ground truth lists 0 queries")
    assert not (tmp_path / "ev").exists()
    (bench / "ground_truth.csv").write_text("query_id,reference_id\nQ00000,\nQ00001,\n")
    refused(["eval", "--model", str(tiny_run), "--benchmark", str(bench), "--out", str(tmp_path / "ev")],
            capsys, "lists 2 queries, 0 of them copies")
    assert not (tmp_path / "ev").exists() and "embed" not in line


def test_embed_of_unreadable_images_leaves_no_shards(tiny_run, tmp_path, capsys):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.png").write_bytes(b"not a png")
    refused(["embed", "--model", str(tiny_run), "--images", str(folder), "--side", "query", "--out",
             str(tmp_path / "q")], capsys, "none of the 2 images could be read")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk"]


def test_counts_are_checked_when_the_command_line_is_parsed(tmp_path, capsys):
    for option, value in (("--k", "0"), ("--batch", "0"), ("--workers", "-1"), ("--nprobe", "zero")):
        with pytest.raises(SystemExit) as stop:
            main(["search", "--model", "m", "--index", "i", "--out", str(tmp_path / "r.csv"), option, value])
        assert stop.value.code == 2
        assert f"argument {option}:" in capsys.readouterr().err.strip().splitlines()[-1]


def test_an_unexpected_error_is_one_line_and_asks_for_debug(monkeypatch, tmp_path, capsys):
    import qkcopy.cli.search

    def broken(args):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(qkcopy.cli.search, "run", broken)  # stands for a bug in a command
    assert main(["search", "--model", "m", "--index", "i", "--out", str(tmp_path / "r.csv")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["qkcopy search: error: internal error (RuntimeError: a bug | over two "
                                        "lines); rerun with --debug for the traceback and report it"]
