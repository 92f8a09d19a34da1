import h5py
import numpy as np
import pytest

from qkcopy.retrieval.descriptors import read_isc_h5, read_npy, write_isc_h5, write_npy


def sample(n: int = 5, e: int = 8) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    return [f"R{i:06d}" for i in range(n)], rng.standard_normal((n, e)).astype(np.float32)


def test_isc_h5_round_trip_and_layout(tmp_path):
    ids, vecs = sample()
    path = tmp_path / "refs.h5"
    write_isc_h5(path, ids, vecs)
    back_ids, back = read_isc_h5(path)
    assert back_ids == ids
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, vecs)
    with h5py.File(path, "r") as f:  # the datasets the ISC2021 scripts read
        assert f["vectors"].shape == (5, 8) and f["vectors"].dtype == np.float32
        assert f["image_names"][0] == b"R000000"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refs.h5"]  # no temp file left


def test_isc_h5_non_ascii_ids_and_overwrite(tmp_path):
    ids = ["Q1", "photo_é", "写真"]
    vecs = np.eye(3, dtype=np.float32)
    write_isc_h5(tmp_path / "q.h5", ["old"], np.ones((1, 3), np.float32))
    write_isc_h5(tmp_path / "q.h5", ids, vecs)
    assert read_isc_h5(tmp_path / "q.h5")[0] == ids


def test_isc_h5_reads_variable_length_strings_and_float64(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("vectors", data=np.arange(6, dtype=np.float64).reshape(2, 3))
        f.create_dataset("image_names", data=["a", "b"], dtype=h5py.string_dtype("utf-8"))
    ids, vecs = read_isc_h5(path)
    assert ids == ["a", "b"] and vecs.dtype == np.float32 and vecs[1].tolist() == [3.0, 4.0, 5.0]


def write_raw(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data)


def test_isc_h5_errors(tmp_path):
    write_raw(tmp_path / "no_names.h5", vectors=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"no_names.h5 lacks dataset\(s\) \['image_names'\]"):
        read_isc_h5(tmp_path / "no_names.h5")
    write_raw(tmp_path / "short.h5", vectors=np.zeros((3, 3), np.float32), image_names=np.array([b"a", b"b"]))
    with pytest.raises(ValueError, match="short.h5: 2 ids for 3 vectors"):
        read_isc_h5(tmp_path / "short.h5")
    vecs = np.zeros((2, 3), np.float32)
    vecs[1, 2] = np.nan
    write_raw(tmp_path / "nan.h5", vectors=vecs, image_names=np.array([b"a", b"b"]))
    with pytest.raises(ValueError, match="descriptor of b has non-finite values"):
        read_isc_h5(tmp_path / "nan.h5")
    write_raw(tmp_path / "dup.h5", vectors=np.zeros((2, 3), np.float32), image_names=np.array([b"a", b"a"]))
    with pytest.raises(ValueError, match="id a appears more than once"):
        read_isc_h5(tmp_path / "dup.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        read_isc_h5(tmp_path / "text.h5")
    with pytest.raises(FileNotFoundError):
        read_isc_h5(tmp_path / "absent.h5")


def test_write_rejects_bad_input_and_leaves_nothing(tmp_path):
    ids, vecs = sample()
    with pytest.raises(ValueError, match="float32 array of shape"):
        write_isc_h5(tmp_path / "x.h5", ids, vecs.astype(np.float64))
    with pytest.raises(ValueError, match="4 ids for 5 vectors"):
        write_isc_h5(tmp_path / "x.h5", ids[:4], vecs)
    bad = vecs.copy()
    bad[3, 0] = np.inf
    with pytest.raises(ValueError, match="descriptor of R000003"):
        write_isc_h5(tmp_path / "x.h5", ids, bad)
    assert list(tmp_path.iterdir()) == []


def test_npy_round_trip_with_prefix_and_directory(tmp_path):
    ids, vecs = sample()
    prefix = write_npy(tmp_path / "sub" / "queries", ids, vecs)
    assert (tmp_path / "sub" / "queries.npy").is_file()
    assert (tmp_path / "sub" / "queries_ids.txt").read_text().splitlines() == ids
    back_ids, back = read_npy(prefix)
    assert back_ids == ids
    np.testing.assert_array_equal(back, vecs)
    assert read_npy(tmp_path / "sub" / "queries.npy")[0] == ids  # the .npy path names the same prefix

    write_npy(tmp_path, ids[:2], vecs[:2])  # an existing directory: <dir>/descriptors
    assert read_npy(tmp_path)[0] == ids[:2]
    assert (tmp_path / "descriptors.npy").is_file()


def test_npy_errors(tmp_path):
    ids, vecs = sample()
    write_npy(tmp_path / "d", ids, vecs)
    (tmp_path / "d_ids.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="2 ids for 5 vectors"):
        read_npy(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="e.npy"):
        read_npy(tmp_path / "e")
    with pytest.raises(ValueError, match="line break"):
        write_npy(tmp_path / "f", ["a\nb"], vecs[:1])


def test_non_finite_rows_are_found_and_counted_chunk_by_chunk(tmp_path, monkeypatch):
    """The NaN/inf check reads a (memory-mapped) file in chunks: each bad row counted once, wherever it lies."""
    import qkcopy.retrieval.descriptors as d

    monkeypatch.setattr(d, "FINITE_CHUNK", 4)
    vectors = np.zeros((11, 3), np.float32)
    vectors[[5, 9, 10]] = np.nan
    prefix = d.write_npy(tmp_path / "v", [f"i{i}" for i in range(11)], np.zeros((11, 3), np.float32))
    np.save(f"{prefix}.npy", vectors)
    with pytest.raises(ValueError, match=r"descriptor of i5 has non-finite values \(3 such rows\)"):
        d.read_npy(prefix, mmap=True)
