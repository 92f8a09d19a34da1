"""The real server process: `qkcopy serve` on uvicorn, killed with SIGKILL in the middle of an add burst,
restarted: every acknowledged reference is there and the index equals the database. Then `qkcopy match
--server` and the Python client against it. Traffic goes to 127.0.0.1 only, bounded in count and time."""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from served import start_server
from testkit import draw_images, free_port

from qkcopy.cli import main
from qkcopy.client import ApiError, Client
from qkcopy.collection import Collection

STORES = ["faiss", "milvus-lite"]  # the service is the same on both vector stores


@pytest.mark.slow
@pytest.mark.parametrize("collection_dir", STORES, indirect=True)
def test_kill_9_mid_burst_then_restart_keeps_every_acknowledged_reference(collection_dir, keys, tmp_path, capsys):
    images = draw_images(tmp_path / "burst", 40, seed=30, prefix="burst")
    port, url = free_port(), None
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")
    server = start_server(collection_dir, port, log)
    acked: dict[int, str] = {}
    try:
        def add(path):
            try:
                r = httpx.post(f"{url}/v1/references", files={"image": (path.name, path.read_bytes())},
                               data={"bank": "burst"}, headers={"Authorization": f"Bearer {keys['read+write']}"},
                               timeout=30)
            except httpx.HTTPError:
                return  # in flight when the server died: not acknowledged
            if r.status_code in (200, 201):
                acked[r.json()["id"]] = path.name

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(add, p) for p in images]
            deadline = time.monotonic() + 60
            while len(acked) < 12 and time.monotonic() < deadline:
                time.sleep(0.01)
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            for f in futures:
                f.result(timeout=60)
        assert 12 <= len(acked) < 40, f"{len(acked)} acknowledged: the kill did not land mid-burst"

        server = start_server(collection_dir, port, log)
        with Client(url, keys["read"]) as client:
            for ref_id, name in acked.items():
                assert client.get(ref_id)["name"] == name
            stats = client.stats()
            assert stats["indexed"] == stats["references"] == 12 + stats["banks"]["burst"]
            assert stats["banks"]["burst"] >= len(acked)
            # an acknowledged reference is found by the index after the restart
            some_id, some_name = next(iter(acked.items()))
            found = client.match([tmp_path / "burst" / some_name], k=1, bank="burst")["results"][0]["matches"]
            assert found[0]["id"] == some_id
            with pytest.raises(ApiError) as err:
                client.add(images[0])
            assert err.value.status == 403

        # `qkcopy match --server`
        os.environ["QKCOPY_API_KEY"] = keys["read"]
        try:
            code = main(["match", "--server", url, str(tmp_path / "burst" / some_name), "--k", "2",
                         "--out", str(tmp_path / "m.json")])
        finally:
            del os.environ["QKCOPY_API_KEY"]
        out = capsys.readouterr().out
        assert code == 0 and f"#{some_id} {some_name}" in out and (tmp_path / "m.json").exists()
        assert main(["match", "--server", url, "--key", "qk_wrong", str(images[0])]) == 2
        assert "invalid API key" in capsys.readouterr().err
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log.close()
    with Collection.open(collection_dir) as coll:
        check = coll.check()
    assert check["consistent"], check
