"""Sharded embedding: 2 gloo ranks write the same files as one process; GIST in the loader workers gives the
descriptors of GIST in the main process."""

import logging
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from testkit import free_port

from qkcopy.distributed import init
from qkcopy.model.trained import load_trained
from qkcopy.model.inference import embed_paths
from qkcopy.retrieval.embed_ranks import embed_folder_ranks
from qkcopy.retrieval.embed_shards import embed_folder

OUTPUTS = ("refs.npy", "refs_ids.txt", "refs.h5")


def _worker(rank: int, world: int, port: int, run_dir: str, paths: list, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist = init("cpu")
    result = embed_folder_ranks(load_trained(run_dir), paths, "reference", out, dist, batch_size=2,
                                    workers=0, shard_size=2)
    assert (result is not None) == dist.is_main
    if dist.is_main:
        assert result.shards_embedded == 0 and result.shards_reused == 3  # every shard came from a rank
    dist.close()
    logging.shutdown()
    os._exit(0)  # as in test_step_sharded: skip gloo's teardown at interpreter exit


def test_two_ranks_write_the_bytes_of_one_process(tiny_run, make_images, tmp_path):
    paths = make_images(tmp_path / "imgs", 5)  # 3 shards of 2: rank 0 embeds shards 0 and 2, rank 1 shard 1
    mp.spawn(_worker, args=(2, free_port(), str(tiny_run), paths, str(tmp_path / "two" / "refs")), nprocs=2,
             join=True)
    torch.set_num_threads(1)
    one = embed_folder(load_trained(tiny_run), paths, "reference", tmp_path / "one" / "refs", batch_size=2,
                           workers=0, shard_size=2)
    assert one.ids == [p.stem for p in paths]
    for name in OUTPUTS:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert not (tmp_path / "two" / "refs.shards").exists()


def test_gist_in_loader_workers_matches_the_main_process(tiny_run, make_images, tmp_path):
    trained = load_trained(tiny_run)
    paths = make_images(tmp_path / "imgs", 6)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inline = embed_paths(trained.k, trained.gist256, paths, trained.cfg.model.image_size, batch_size=4,
                             workers=0)
        in_workers = embed_paths(trained.k, trained.gist256, paths, trained.cfg.model.image_size, batch_size=4,
                                 workers=1)
    finally:
        torch.set_num_threads(before)
    assert in_workers.ids == inline.ids == [p.stem for p in paths]
    np.testing.assert_allclose(in_workers.vectors, inline.vectors, rtol=0, atol=1e-6)


def test_one_rank_is_embed_collection(tiny_run, make_images, tmp_path):
    from qkcopy.distributed import Dist

    paths = make_images(tmp_path / "imgs", 3)
    got = embed_folder_ranks(load_trained(tiny_run), paths, "query", tmp_path / "q", Dist(), batch_size=2,
                                 workers=0)
    assert got.ids == [p.stem for p in paths] and got.vectors.shape[0] == 3
    with pytest.raises(ValueError, match="side"):
        embed_folder_ranks(load_trained(tiny_run), paths, "sideways", tmp_path / "x", Dist(world=2))


@pytest.mark.slow
def test_torchrun_embed_cli_writes_the_files_of_one_process(tiny_run, make_images, tmp_path):
    """`torchrun --nproc-per-node 2 -m qkcopy embed` (gloo) against plain `qkcopy embed`: same bytes."""
    import subprocess
    import sys
    from pathlib import Path

    make_images(tmp_path / "imgs", 5)
    args = ["embed", "--model", str(tiny_run), "--images", str(tmp_path / "imgs"), "--side", "query",
            "--batch", "2", "--workers", "1", "--shard-size", "2", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = Path(sys.executable).parent / "torchrun"
    subprocess.run([sys.executable, "-m", "qkcopy", *args, "--out", str(tmp_path / "one" / "q")], check=True,
                   env=env, timeout=300)
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "qkcopy", *args,
                           "--out", str(tmp_path / "two" / "q")], check=True, env=env, timeout=300,
                          capture_output=True, text=True)
    assert done.stdout.count("query descriptors") == 1  # rank 0 reports
    for name in ("q.npy", "q_ids.txt", "q.h5"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
