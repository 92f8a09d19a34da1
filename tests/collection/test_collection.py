"""The collection: the database is the truth, the index a cache that always agrees with it."""

import numpy as np
import pytest

from qkcopy.collection import Collection, NewRef
from qkcopy.collection.store import DB_NAME, Store, StoreError
from qkcopy.errors import FingerprintMismatch

E = 8
STORES = ["faiss", "milvus-lite"]  # the vector-store seam: every test on `coll` or `store` runs on both


def _refs(n, seed=0, bank="default", prefix="r"):
    rng = np.random.default_rng(seed)
    return [NewRef(f"{prefix}{i}.jpg", f"{prefix}-{seed}-{i}", bank, {"i": i}, rng.normal(size=E).astype(np.float32))
            for i in range(n)]


def _brute(refs_by_id, q, k):
    ids = sorted(refs_by_id, key=lambda i: (float(((refs_by_id[i] - q) ** 2).sum()), i))
    return ids[:k]


@pytest.fixture(params=STORES)
def store(request):
    return request.param


@pytest.fixture
def coll(tmp_path, store):
    c = Collection.create(tmp_path / "c", "fp0", E, threshold=-1.0, vectors=store)
    yield c
    c.close()


def test_add_search_remove_match_a_brute_force_search(coll):
    refs = _refs(50)
    added = coll.add(refs)
    assert [a.id for a in added] == list(range(1, 51)) and not any(a.existing for a in added)
    by_id = {a.id: r.vector for a, r in zip(added, refs)}
    q = np.random.default_rng(1).normal(size=(3, E)).astype(np.float32)
    rows = coll.search(q, k=5)
    for qi, matches in enumerate(rows):
        assert [m.id for m in matches] == _brute(by_id, q[qi], 5)
        d = ((by_id[matches[0].id] - q[qi]) ** 2).sum()
        assert matches[0].score == pytest.approx(-d, rel=1e-5)
        assert matches[0].is_copy == (matches[0].score >= -1.0)
        assert matches[0].metadata == {"i": matches[0].id - 1} and matches[0].name == f"r{matches[0].id - 1}.jpg"
    assert coll.remove([3, 4, 999]) == [3, 4]
    del by_id[3], by_id[4]
    assert [m.id for m in coll.search(q, k=5)[0]] == _brute(by_id, q[0], 5)
    assert coll.check()["consistent"] and coll.check()["index"] == 48
    assert coll.get(3) is None and coll.get(5).name == "r4.jpg"
    assert list(coll.store.vectors(E, [3, 4])) == []  # the removal took the vectors with it
    import sqlite3
    db = sqlite3.connect(coll.root / DB_NAME)
    assert db.execute("SELECT COUNT(*) FROM ref_vectors").fetchone()[0] == 48
    db.close()


def test_exact_re_add_returns_the_existing_id_per_bank(coll):
    first = coll.add(_refs(3))
    again = coll.add(_refs(3))
    assert [a.id for a in again] == [a.id for a in first] and all(a.existing for a in again)
    other_bank = coll.add(_refs(3, bank="b2"))
    assert not any(a.existing for a in other_bank)
    assert coll.stats()["banks"] == {"b2": 3, "default": 3}


def test_bank_filter_only_returns_that_bank(coll):
    coll.add(_refs(20, seed=0, bank="a", prefix="a"))
    b = coll.add(_refs(20, seed=1, bank="b", prefix="b"))
    q = np.random.default_rng(2).normal(size=(4, E)).astype(np.float32)
    rows = coll.search(q, k=7, bank="b")
    assert all(len(m) == 7 and {x.bank for x in m} == {"b"} for m in rows)
    by_id = {a.id: r.vector for a, r in zip(b, _refs(20, seed=1, bank="b", prefix="b"))}
    assert [m.id for m in rows[0]] == _brute(by_id, q[0], 7)
    assert coll.search(q, k=3, bank="nope") == [[], [], [], []]
    odd = coll.add(_refs(2, seed=3, bank='q"u\\o te', prefix="o"))  # quotes and a backslash in a bank name
    assert [m.id for m in coll.search(q, k=5, bank='q"u\\o te')[0]] == sorted(
        (a.id for a in odd), key=lambda i: [m.id for m in coll.search(q, k=50)[0]].index(i))
    with pytest.raises(ValueError, match="bank name"):
        coll.search(q, bank="")
    with pytest.raises(ValueError, match="k must be"):
        coll.search(q, k=0)


def test_snapshot_then_changes_are_replayed_on_reopen(tmp_path, store):
    root = tmp_path / "c"
    with Collection.create(root, "fp0", E, vectors=store) as c:
        c.add(_refs(30))
        c.search(np.zeros((1, E), np.float32))  # load the index
        assert c.snapshot() == 30
        c.add(_refs(5, seed=9))
        c.remove([1, 2, 33])
        expect = c.search(np.ones((1, E), np.float32), k=10)
    with Collection.open(root, "fp0") as c:
        index = c.index()
        assert index.seq == 38 and len(index) == 32  # snapshot at 30 + 8 changes replayed
        assert c.check() == dict(database=32, index=32, missing=[], extra=[], consistent=True)
        assert c.search(np.ones((1, E), np.float32), k=10) == expect


def test_a_corrupt_or_foreign_snapshot_is_rebuilt_from_the_database(tmp_path):
    root = tmp_path / "c"
    with Collection.create(root, "fp0", E) as c:
        c.add(_refs(10))
        c.snapshot()
    (root / "cache" / "index.faiss").write_bytes(b"garbage")
    with Collection.open(root) as c:
        assert c.check()["consistent"] and len(c.index()) == 10


def test_two_handles_share_one_collection_and_a_cut_log_forces_a_rebuild(tmp_path, store):
    root = tmp_path / "c"
    server = Collection.create(root, "fp0", E, vectors=store)
    server.add(_refs(5))
    assert len(server.index()) == 5
    writer = Collection.open(root)
    writer.add(_refs(5, seed=3))
    assert len(server.index()) == 10  # caught up from the change log
    writer.remove([1])
    writer.snapshot()  # cuts the log past the server's position
    writer.add(_refs(2, seed=4))
    assert server.check()["consistent"] and len(server.index()) == 11
    server.close(), writer.close()


def test_a_mismatched_model_is_refused(tmp_path):
    Collection.create(tmp_path / "c", "fp0", E).close()
    with pytest.raises(FingerprintMismatch, match="fp0"):
        Collection.open(tmp_path / "c", "fp1")
    with pytest.raises(FileExistsError):
        Collection.create(tmp_path / "c", "fp0", E)
    with pytest.raises(FileNotFoundError, match="not a qkcopy collection"):
        Collection.open(tmp_path / "nothing")


def test_bad_vectors_and_a_newer_schema_are_refused(tmp_path, coll):
    bad = NewRef("x", "h", "default", {}, np.full(E, np.nan, np.float32))
    with pytest.raises(ValueError, match="finite"):
        coll.add([bad])
    assert coll.stats()["references"] == 0  # the transaction rolled back
    import sqlite3
    db = sqlite3.connect(tmp_path / "new.db")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path / "new.db")


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_ivf_reindex_keeps_ids_banks_and_consistency(tmp_path, kind):
    with Collection.create(tmp_path / "c", "fp0", E) as c:
        refs = _refs(600) + _refs(100, seed=5, bank="b", prefix="b")
        c.add(refs)
        c.reindex(kind, nlist=8, nprobe=8, m=4)
        assert c.stats()["index"] == kind and c.check()["consistent"]
        c.remove([10, 650])
        c.add(_refs(3, seed=6))
        assert c.check() == dict(database=701, index=701, missing=[], extra=[], consistent=True)
        rows = c.search(refs[0].vector[None], k=5, bank="b")
        assert {m.bank for m in rows[0]} == {"b"}
    with Collection.open(tmp_path / "c") as c:  # from the snapshot, the type pinned
        assert c.index().kind == kind and c.check()["consistent"]
        assert c.search(refs[1].vector[None], k=1)[0][0].id == 2


def test_ivfpq_lookups_are_reranked_by_the_exact_vectors(tmp_path):
    """IVF-PQ shortlists k·R by code distance; the database's exact vectors order the shortlist: the scores are
    the exact −‖q − r‖² and the neighbours nearly the exact ones, where the codes alone lose them."""
    e = 32
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, e))
    vectors = (centres[rng.integers(0, 20, 1500)] + rng.normal(scale=0.4, size=(1500, e))).astype(np.float32)
    refs = [NewRef(f"r{i}.jpg", f"h{i}", "default" if i % 5 else "b", {}, v) for i, v in enumerate(vectors)]
    queries = vectors[:40] + rng.normal(scale=0.2, size=(40, e)).astype(np.float32)
    by_id = {i + 1: v for i, v in enumerate(vectors)}
    truth = [_brute(by_id, q, 10) for q in queries]
    with Collection.create(tmp_path / "c", "fp0", e) as c:
        c.add(refs)
        got = {}
        for rerank in (0, 10):
            c.reindex("ivfpq", nlist=8, nprobe=8, m=4, rerank=rerank)
            rows = c.search(queries, k=10)
            got[rerank] = np.mean([len({m.id for m in r} & set(t)) / 10 for r, t in zip(rows, truth)])
        assert c.params["rerank"] == 10
        for q, r in zip(queries, rows):  # exact scores, best first
            exact = [-float(((by_id[m.id].astype(np.float64) - q) ** 2).sum()) for m in r]
            np.testing.assert_allclose([m.score for m in r], exact, rtol=1e-5)
            assert [m.score for m in r] == sorted((m.score for m in r), reverse=True)
        assert got[10] >= 0.95 and got[10] > got[0] + 0.1, got
        in_b = c.search(queries[:5], k=10, bank="b")
        assert all(m.bank == "b" for r in in_b for m in r) and all(len(r) == 10 for r in in_b)
        c.remove([rows[0][0].id])
        assert rows[0][0].id not in [m.id for m in c.search(queries[:1], k=10)[0]]
    with Collection.open(tmp_path / "c") as c:  # the shortlist factor is pinned with the type
        assert c.params["rerank"] == 10
        with pytest.raises(ValueError, match="rerank must be in 0..100"):
            c.reindex("ivfpq", m=4, rerank=-1)


def test_a_large_rebuild_trains_on_a_sample_and_streams_the_rows(tmp_path, monkeypatch):
    """Above MAX_TRAIN rows the IVF types train on a seeded sample and add the rows chunk by chunk (a 10M
    collection never holds all its vectors at once); nlist follows the sample (>= 39 points a cell)."""
    import qkcopy.collection.cache as cache

    monkeypatch.setattr(cache, "MAX_TRAIN", 400)
    with Collection.create(tmp_path / "c", "fp0", E) as c:
        refs = _refs(1200)
        c.add(refs)
        seen = []
        chunks = c.store.vectors
        monkeypatch.setattr(c.store, "vectors", lambda dim, ids=None, batch=50_000: (
            seen.append(None if ids is None else len(ids)) or chunks(dim, ids, batch=300)))
        c.reindex("ivf", nprobe=10)
        assert seen == [400, None]  # the sample, then every row streamed
        assert c.params["nlist"] == 400 // 39 and c.check()["consistent"]
        assert c.search(refs[7].vector[None], k=1)[0][0].id == 8


def test_milvus_builds_its_own_ivf_index_and_refuses_what_it_cannot(tmp_path):
    """On Milvus, `reindex --type ivf` is Milvus's IVF_FLAT (pinned, reopened as such, probed with nprobe);
    milvus-lite has no IVF_PQ: a one-line ValueError, and the exact index it had stays."""
    refs = _refs(700)
    by_id = {i + 1: r.vector for i, r in enumerate(refs)}
    with Collection.create(tmp_path / "c", "fp0", E, vectors="milvus-lite") as c:
        c.add(refs)
        c.reindex("ivf", nlist=8, nprobe=8)
        assert (c.kind, c.params) == ("ivf", dict(nlist=8, nprobe=8))
        with pytest.raises(ValueError, match="milvus-lite at .* cannot build a IVF_PQ index.*stays IVF_FLAT"):
            c.reindex("ivfpq", nlist=8, m=4)
        assert c.kind == "ivf" and c.index().kind == "ivf"
        for r in refs[:5]:  # every cell probed: the exact neighbours
            assert [m.id for m in c.search(r.vector[None], k=5)[0]] == _brute(by_id, r.vector, 5)
    with Collection.open(tmp_path / "c") as c:
        assert c.index().kind == "ivf" and c.check()["consistent"]
        assert c.search(refs[1].vector[None], k=1)[0][0].id == 2
        c.move_vectors("faiss")  # another store starts exact
        assert c.kind == "flat" and c.search(refs[1].vector[None], k=1)[0][0].id == 2
