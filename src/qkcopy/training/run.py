"""A training run's directory and context: config, provenance, models, checkpoints, evaluations.

Layout of a run directory:
    config.yaml        the resolved config          provenance.json   git commit, data fingerprint, versions
    gist_pca.safetensors  PCA fitted on training images only
    train_log.jsonl    one JSON line per step       evaluations.jsonl  metrics after each segment
    banks/             memory-mapped banks          checkpoints/latest, checkpoints/Q1, K1, …
The directory's lifecycle (fresh start, retry, resume, recovery after a kill) is `training.run_dir`.
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
from qkcopy.config import TrainConfig, phase_steps, segment_names, to_dict
from qkcopy.data.images import valid_images
from qkcopy.errors import ConfigError, DataError
from qkcopy.device import autocast
from qkcopy.distributed import Dist, init
from qkcopy.io import atomic_write, atomic_write_json, files_fingerprint, git_commit
from qkcopy.model.backbone import feature_dim
from qkcopy.model.descriptor import DescriptorModel, build_qk_models
from qkcopy.model.gist256 import Gist256, fit_gist256
from qkcopy.model.pca import PCA
from qkcopy.model.trained import TrainedModels
from qkcopy.evaluation.model_eval import evaluate_model
from qkcopy.training.methods import Method, get_method
from qkcopy.training.run_dir import clear_run, prepare_dir, trim_jsonl

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
            raise ConfigError(f"method {cfg.method} runs in one process only; torchrun shards the QK bank",
                              "method")
        existed = run_dir.exists()
        fresh = prepare_dir(run_dir, cfg, resume) if dist.is_main else False
        dist.barrier()
        try:  # every rank sees the checkpoint rank 0 kept (resume) or cleared (a fresh start)
            return cls._build(cfg, train_paths, run_dir, dist, method,
                              resume=(run_dir / "checkpoints" / "latest").exists())
        except BaseException:
            if fresh and dist.is_main and run_dir.is_dir():  # a failed start leaves nothing behind
                clear_run(run_dir)
                if not existed and not any(run_dir.iterdir()):
                    run_dir.rmdir()
            raise

    @classmethod
    def _build(cls, cfg: TrainConfig, train_paths: Sequence[Path], run_dir: Path, dist: Dist, method: Method,
               resume: bool) -> Run:
        q, k = build_qk_models(cfg.model, cfg.seed)  # an unknown backbone or weights file: refused before any work
        all_paths = valid_images(sorted(Path(p) for p in train_paths))
        paths = all_paths[:cfg.data.max_train_images]  # slice end None: all
        if len(paths) < cfg.data.batch_size:
            raise DataError(f"{len(paths)} readable training images; need at least one batch "
                            f"(data.batch_size = {cfg.data.batch_size}): add training images")
        pca_path = run_dir / "gist_pca.safetensors"
        if not pca_path.exists() and len(all_paths) < cfg.model.descriptor_dim:
            raise DataError(f"the GIST PCA to {cfg.model.descriptor_dim} dims needs at least "
                            f"{cfg.model.descriptor_dim} training images, got {len(all_paths)} readable ones: "
                            "add training images")
        data_hash = files_fingerprint(paths)
        run_dir.mkdir(parents=True, exist_ok=True)
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
        run = cls(cfg, run_dir, paths, device, q.to(device), k.to(device), Gist256(pca).to(device), data_hash,
                  method, dist)
        method.setup(run)
        if resume:
            ckpt.load_weights(run.latest, {"q": run.q, "k": run.k})
            if method.extra_state() is not None:
                method.load_extra_state(ckpt.load_extra(run.latest), device)
            if dist.is_main:  # steps after the checkpoint were logged by the killed process: they run again
                done = run.global_step(*run.resume_point())
                trim_jsonl(run_dir / "train_log.jsonl", lambda row: row.get("global_step", 0) < done)
                trim_jsonl(run_dir / "evaluations.jsonl", lambda row: True)
                run.repair()
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

    def models(self) -> TrainedModels:
        """The run's Q, K and gist256 as a user's `TrainedModels` (they describe images the same way)."""
        return TrainedModels(self.q, self.k, self.gist256, self.cfg, self.latest)

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
        if tag is not None:  # the tag first: `latest` marked phase_done implies the tag is there
            ckpt.save_checkpoint(self.dir / "checkpoints" / tag, models, dict(state), None,
                                 self.method.extra_state())
        ckpt.save_checkpoint(self.latest, models, dict(state), optimizer, self.method.extra_state())
        self.dist.barrier()

    def repair(self) -> None:
        """Rank 0, on resume: when `latest` says a phase is done but its tag is missing (a run of an older
        qkcopy killed between the two writes, or a tag removed by hand), rebuild the tag from `latest`."""
        if not self.is_main or not self.latest.exists():
            return
        state = ckpt.read_state(self.latest)
        if not state.get("phase_done") or not isinstance(state.get("phase"), int):
            return
        tag = self.dir / "checkpoints" / segment_names(self.cfg)[state["phase"]]
        if not tag.exists():
            log.warning("%s is missing though %s says its phase is done: rebuilt from it", tag, self.latest)
            state = {k: v for k, v in state.items() if k != "optimizer"}
            ckpt.save_checkpoint(tag, {"q": self.q, "k": self.k}, state, None, self.method.extra_state())

    def resume_point(self) -> tuple[int, int]:
        """(segment, step) to continue from: (0, 0) for a new run."""
        if not self.latest.exists():
            return 0, 0
        state = ckpt.read_state(self.latest)
        if not all(isinstance(state.get(k), int) for k in ("phase", "next_step")) or "phase_done" not in state:
            raise ckpt.CheckpointError(f"{self.latest / 'state.json'} lacks phase, next_step or phase_done: not a "
                                       "training checkpoint, cannot resume from it", self.latest)
        if state["phase_done"]:
            return state["phase"] + 1, 0
        return state["phase"], state["next_step"]

    def read_evaluations(self) -> list[dict]:
        """The evaluation rows written so far (a torn last line was dropped when the run was opened)."""
        path = self.dir / "evaluations.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def evaluate_run(run: Run, benchmark, segment: str) -> dict:
    """Q on the benchmark's queries, K on its references, exhaustive L2 search, ISC2021 metrics."""
    metrics = evaluate_model(run.models(), benchmark).metrics
    row = dict(method=run.cfg.method, segment=segment, **metrics.as_dict())
    with open(run.dir / "evaluations.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    log.info("%s %s: µAP %.4f  R@P90 %.4f  recall@1 %.4f", run.cfg.method, segment, metrics.micro_ap,
             metrics.recall_at_p90, metrics.recall_at_1)
    return row
