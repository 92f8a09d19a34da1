"""A training run's directory and context: config, provenance, models, checkpoints, evaluations.

Layout of a run directory:
    config.yaml        the resolved config          provenance.json   git commit, data fingerprint, versions
    gist_pca.safetensors  PCA fitted on training images only
    train_log.jsonl    one JSON line per step       evaluations.jsonl  metrics after each segment
    banks/             memory-mapped banks          checkpoints/latest, checkpoints/Q1, K1, …
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from qkcopy import checkpoint as ckpt
from qkcopy.config import TrainConfig, load_config, phase_steps, to_dict
from qkcopy.data.images import valid_images
from qkcopy.device import autocast
from qkcopy.distributed import Dist, init
from qkcopy.io import atomic_write, atomic_write_json, files_fingerprint, git_commit
from qkcopy.model.backbone import feature_dim
from qkcopy.model.descriptor import DescriptorModel, build_qk_models
from qkcopy.model.gist256 import Gist256, fit_gist256
from qkcopy.model.pca import PCA
from qkcopy.retrieval.embed import embed_paths
from qkcopy.retrieval.knn import search_predictions
from qkcopy.retrieval.metrics import evaluate
from qkcopy.training.methods import KeyQueue, Method, get_method

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    cfg: TrainConfig
    dir: Path
    paths: list[Path]
    device: torch.device
    q: DescriptorModel
    k: DescriptorModel
    gist256: Gist256
    data_hash: str
    method: Method
    dist: Dist = dataclasses.field(default_factory=Dist)
    queue: KeyQueue | None = None
    tensorboard: object | None = None

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @classmethod
    def open(cls, cfg: TrainConfig, train_paths: Sequence[Path], run_dir: Path, resume: bool) -> Run:
        run_dir = Path(run_dir)
        dist = init(cfg.device)  # torchrun: joins the process group; a plain process: rank 0 of 1
        method = get_method(cfg.method)
        if dist.world > 1 and not method.sharded:
            raise ValueError(f"method {cfg.method} runs in one process only; torchrun shards the QK bank")
        if run_dir.exists() and any(run_dir.iterdir()) and not resume and dist.is_main:
            raise FileExistsError(f"run directory {run_dir} is not empty; pass --resume to continue it "
                                  "or choose a new --out")
        if resume and not (run_dir / "checkpoints" / "latest").exists():
            raise FileNotFoundError(f"nothing to resume in {run_dir} (no checkpoints/latest)")
        dist.barrier()
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            saved = load_config(run_dir / "config.yaml")
            if to_dict(saved) != to_dict(cfg):
                raise ValueError(f"--resume with a config that differs from {run_dir / 'config.yaml'}; "
                                 "resume with the same settings")
        all_paths = valid_images(sorted(Path(p) for p in train_paths))
        paths = all_paths[:cfg.data.max_train_images]  # slice end None: all
        if len(paths) < cfg.data.batch_size:
            raise ValueError(f"{len(paths)} readable training images; need at least one batch "
                             f"({cfg.data.batch_size})")
        data_hash = files_fingerprint(paths)
        pca_path = run_dir / "gist_pca.safetensors"
        if dist.is_main:
            atomic_write(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
            atomic_write_json(run_dir / "provenance.json", dict(
                git_commit=git_commit(), data_hash=data_hash, n_train=len(paths), world_size=dist.world,
                torch=torch.__version__))
            if not pca_path.exists():
                fit_gist256(all_paths, cfg.data.pca_images, cfg.seed, cfg.model.descriptor_dim).save(pca_path)
        dist.barrier()
        pca = PCA.load(pca_path)
        device = dist.device
        q, k = build_qk_models(cfg.model, cfg.seed)
        run = cls(cfg, run_dir, paths, device, q.to(device), k.to(device), Gist256(pca).to(device), data_hash,
                  method, dist)
        method.setup(run)
        if resume:
            ckpt.load_weights(run.latest, {"q": run.q, "k": run.k})
            if run.queue is not None:
                run.queue.keys = ckpt.load_extra(run.latest)["moco_queue"].to(device)
        if cfg.tensorboard and dist.is_main:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
            run.tensorboard = SummaryWriter(run_dir / "tensorboard")
        return run

    @property
    def latest(self) -> Path:
        return self.dir / "checkpoints" / "latest"

    @property
    def feature_dim(self) -> int:
        return feature_dim(self.q.backbone)

    @property
    def gist_dim(self) -> int:
        return self.cfg.model.descriptor_dim

    def autocast(self):
        return autocast(self.device, self.cfg.amp)

    def global_step(self, phase: int, step: int) -> int:
        return phase * phase_steps(self.cfg.schedule, len(self.paths), self.cfg.data.batch_size) + step

    def save(self, phase: int, next_step: int, optimizer: torch.optim.Optimizer, tag: str | None = None) -> None:
        """Rank 0 writes the checkpoint (weights are identical on every rank); the others wait for it."""
        if not self.is_main:
            self.dist.barrier()
            return
        state = dict(phase=phase, next_step=next_step, method=self.cfg.method,
                     phase_done=next_step >= phase_steps(self.cfg.schedule, len(self.paths),
                                                         self.cfg.data.batch_size))
        models = {"q": self.q, "k": self.k}
        extra = {"moco_queue": self.queue.keys} if self.queue is not None else None
        ckpt.save_checkpoint(self.latest, models, state, optimizer, extra)
        if tag is not None:
            ckpt.save_checkpoint(self.dir / "checkpoints" / tag, models, state)
        self.dist.barrier()

    def resume_point(self) -> tuple[int, int]:
        """(segment, step) to continue from: (0, 0) for a new run."""
        if not self.latest.exists():
            return 0, 0
        state = ckpt.read_state(self.latest)
        if state["phase_done"]:
            return state["phase"] + 1, 0
        return state["phase"], state["next_step"]

    def read_evaluations(self) -> list[dict]:
        path = self.dir / "evaluations.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def evaluate_run(run: Run, benchmark, segment: str) -> dict:
    """Q on the benchmark's queries, K on its references, exhaustive L2 search, ISC2021 metrics."""
    size, device = run.cfg.model.image_size, run.device
    queries = embed_paths(run.q, run.gist256, benchmark.query_paths, size, device=device, desc="queries")
    refs = embed_paths(run.k, run.gist256, benchmark.reference_paths, size, device=device, desc="references")
    metrics = evaluate(search_predictions(queries.ids, queries.vectors, refs.ids, refs.vectors, k=10),
                       benchmark.ground_truth)
    row = dict(method=run.cfg.method, segment=segment, **metrics.as_dict())
    with open(run.dir / "evaluations.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    log.info("%s %s: µAP %.4f  R@P90 %.4f  recall@1 %.4f", run.cfg.method, segment, metrics.micro_ap,
             metrics.recall_at_p90, metrics.recall_at_1)
    return row
