"""QK Iteration: the training loop over phases Q1, K1, Q2, K2, Q3 … and the SimCLR/MoCo comparisons.

Letters: B batch, N training images (= bank rows), D backbone dim, G gist256 dim, E descriptor dim.

A Q phase freezes K's backbone, bulk-evaluates it over the original training images into a bank, and trains
Q's backbone and head and K's head against all N rows every step. A K phase freezes Q's backbone on one fixed
augmented query per image and trains K fully and Q's head. SimCLR/MoCo runs use the same segments (equal steps)
so that every method is evaluated at the same step counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from qkcopy import checkpoint as ckpt
from qkcopy.config import TrainConfig, lr_at, phase_steps, segment_names
from qkcopy.data.families import excluded_ops
from qkcopy.data.training import BANK_STREAM, PhaseBatches, TrainImages, query_seed
from qkcopy.distributed import ShardedBatches, shard_range
from qkcopy.model.descriptor import init_heads_from_pca, param_fingerprint
from qkcopy.qk.bank import Bank, BankHeader, BankShard, StaleBankError, auto_chunk_rows, write_bank
from qkcopy.seeds import derive_seed
from qkcopy.training.optim import make_optimizer, set_lr
from qkcopy.training.run import Run, evaluate_run

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


def _loader(run: Run, batches: torch.utils.data.Sampler, pairs: bool = False) -> torch.utils.data.DataLoader:
    dataset = TrainImages(run.paths, run.cfg.model.image_size, run.cfg.data.strength, pairs=pairs,
                          exclude=excluded_ops(run.cfg.data.holdout_families),
                          broad=run.cfg.data.synthesis == "broad", weights=run.cfg.data.op_weights)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=run.cfg.data.workers,
                                       pin_memory=run.device.type == "cuda")


def build_bank(run: Run, phase: int, side: str) -> Bank:
    """The frozen side's bank for a phase: reused from disk when it still matches, else rebuilt."""
    frozen, bank_side = (run.k, "K") if side == "Q" else (run.q, "Q")
    bank_seed = derive_seed(BANK_STREAM, run.cfg.seed, phase) if bank_side == "Q" else None
    recipe = f"{run.data_hash}/{run.cfg.model.image_size}/{run.gist256.fingerprint}/{bank_side}/{bank_seed}/" \
             f"{run.cfg.data.strength}" + "".join(f"/-{f}" for f in run.cfg.data.holdout_families) + \
             ("/broad" if run.cfg.data.synthesis == "broad" else "")
    data_hash = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    model_hash = param_fingerprint(frozen.backbone)
    path = run.dir / "banks" / f"phase{phase}-{bank_side}.bank"
    try:
        return Bank.open(path, model_hash=model_hash, data_hash=data_hash)
    except FileNotFoundError:
        pass
    except StaleBankError as err:
        log.warning("%s", err)
    n, dist = len(run.paths), run.dist
    bs = 2 * (run.cfg.data.grad_cache_chunk or run.cfg.data.batch_size)  # a cached batch's sub-batch bounds memory
    # this rank's part of the bulk pass: whole batches of the one-process pass (rows j·bs … (j+1)·bs − 1), so
    # every row is computed in the same batch, hence to the same bits, whatever the number of ranks
    first, last = shard_range((n + bs - 1) // bs, dist.rank, dist.world)
    loader = _loader(run, [[(i, query_seed(bank_seed, phase, 0, i) if bank_seed is not None else None)
                            for i in range(j * bs, min(n, (j + 1) * bs))] for j in range(first, last)])
    header = BankHeader(n_rows=n, feature_dim=run.feature_dim, gist_dim=run.gist_dim, model_hash=model_hash,
                        data_hash=data_hash, side=bank_side)
    frozen.eval()

    def rows():  # (index (b,), rows (b, D + G) fp16) per batch, written to the file as they come
        with torch.no_grad():
            for index, pixels, gist_pixels in tqdm(loader, desc=f"bank {bank_side} (phase {phase + 1})",
                                                   unit="batch", leave=False, disable=not run.is_main):
                pixels, gist_pixels = pixels.to(run.device), gist_pixels.to(run.device)
                with run.autocast():
                    feat = frozen.features(pixels)  # (b, D)
                yield index, torch.cat([feat.float(), run.gist256(gist_pixels)], 1).half()

    write_bank(path, header, rows(), dist)  # every rank streams its own rows into the one file
    return Bank.open(path, model_hash=model_hash, data_hash=data_hash)


def init_heads(run: Run) -> None:
    """model.head_init "pca": both heads start as g + λ·P(f̂ − μ) (model.init_heads_from_pca), fitted on the
    frozen K backbone's features of at most data.pca_images training images (rows of the first Q bank, which
    a QK run reuses), and the starting point is saved as checkpoints/init."""
    bank = build_bank(run, 0, "Q")
    n = len(bank)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(run.cfg.seed))[:run.cfg.data.pca_images]
    feat, g256 = bank.split(bank.take(pick.sort().values))  # (S, D), (S, G) float32
    lam = init_heads_from_pca([run.q.head, run.k.head], feat, g256, run.cfg.model.head_init_weight)
    log.info("heads initialised from a PCA of %d bank rows: descriptor = gist256 + %.4f · P(f - mu)", len(pick), lam)
    if run.is_main:
        ckpt.save_checkpoint(run.dir / "checkpoints" / "init", {"q": run.q, "k": run.k},
                             dict(phase=0, next_step=0, method=run.cfg.method, phase_done=False))
    run.dist.barrier()


def bank_shard(run: Run, bank: Bank) -> BankShard:
    """This rank's part of a phase's bank, with the chunk size from the config or from free memory."""
    chunk_rows = run.cfg.bank_chunk_rows or auto_chunk_rows(run.device, run.cfg.data.batch_size,
                                                            bank.header.width, run.cfg.model.hidden,
                                                            run.cfg.model.descriptor_dim)
    return bank.shard(run.dist.rank, run.dist.world, chunk_rows, run.device)


def _step(run: Run, side: str, batch, bank: BankShard | None):
    index = batch[0].to(run.device)
    tensors = [t.to(run.device, non_blocking=True) for t in batch[1:]]
    g256 = [run.gist256(t) for t in tensors[1::2]]  # gist256 of each image in the item, (B, G)
    return run.method.loss(run, side, tensors, g256, index, bank)


def _log_step(run: Run, record: dict) -> None:
    with open(run.dir / "train_log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if run.tensorboard is not None:
        for key in ("loss", "loss_pos", "loss_neg", "lr", "d2_pos_mean", "d2_neg_mean"):
            run.tensorboard.add_scalar(key, record[key], record["global_step"])


class StopRequested(Exception):
    """Raised inside the loop when the requested number of steps is reached (after a checkpoint)."""


def run_segment(run: Run, phase: int, start: int, stop_after_steps: int | None = None) -> None:
    """Train segment `phase` (a QK phase, or an equal-length stretch of a comparison method) from `start`."""
    cfg, side, name = run.cfg, run.cfg.schedule.phases[phase], segment_names(run.cfg)[phase]
    total = phase_steps(cfg.schedule, len(run.paths), cfg.data.batch_size)
    method = run.method
    bank = bank_shard(run, build_bank(run, phase, side)) if method.uses_bank else None
    params = method.trainable(run, side)
    optimizer = make_optimizer(params, cfg.optim)
    if start > 0:
        ckpt.load_optimizer(run.latest, optimizer)
    batches = PhaseBatches(len(run.paths), cfg.data.batch_size, total, cfg.seed, phase, method.queries(side),
                           start)
    loader = _loader(run, ShardedBatches(batches, run.dist), pairs=method.pairs)
    run.q.train(), run.k.train()
    bar = tqdm(loader, desc=f"{cfg.method} {name}", total=total, initial=start, unit="step",
               disable=not run.is_main)
    for step, batch in enumerate(bar, start=start):
        lr = lr_at(step, total, cfg.optim)
        set_lr(optimizer, lr)
        t0 = time.perf_counter()
        result = _step(run, side, batch, bank)
        loss = result.loss.total
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"{name} step {step}: loss is {loss.item()}; stopped. The last good "
                                   f"checkpoint {run.latest} is intact; lower optim.lr or check the data.")
        optimizer.zero_grad(set_to_none=True)
        method.backward(result)  # loss.backward(), through the method's gradient cache (data.grad_cache_chunk)
        run.dist.all_reduce_mean_grads(params)  # exact single-process gradients of the global batch
        grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        grad_norm = torch.stack(grads).norm().item() if grads else 0.0
        optimizer.step()
        if not all(torch.isfinite(p).all() for group in optimizer.param_groups for p in group["params"]):
            raise TrainingDiverged(f"{name} step {step}: the update made weights NaN or inf; stopped. The last "
                                   f"good checkpoint {run.latest} is intact; lower optim.lr.")
        method.after_step(run)
        record = dict(segment=name, phase=phase, step=step, global_step=run.global_step(phase, step), lr=lr,
                      loss=loss.item(), loss_pos=result.loss.pos.item(), loss_neg=result.loss.neg.item(),
                      d2_pos_mean=result.d2_pos.mean().item(), d2_neg_min=result.d2_neg.min().item(),
                      d2_neg_mean=result.d2_neg.mean().item(), d2_neg_max=result.d2_neg.max().item(),
                      grad_norm=grad_norm, seconds=time.perf_counter() - t0)
        if result.negatives is not None:  # which (batch item, bank row) pairs were mined: a reproducibility check
            record["negatives"] = hashlib.sha256(result.negatives.cpu().numpy().tobytes()).hexdigest()[:16]
        if run.is_main:
            _log_step(run, record)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        stop = stop_after_steps is not None and record["global_step"] + 1 >= stop_after_steps
        if step + 1 < total and (stop or (step + 1) % cfg.schedule.checkpoint_every == 0):
            run.save(phase, step + 1, optimizer)
        if stop and step + 1 < total:
            raise StopRequested
    run.save(phase, total, optimizer, tag=name)
    if stop_after_steps is not None and run.global_step(phase, total) >= stop_after_steps:
        raise StopRequested


def train(cfg: TrainConfig, train_paths: Sequence[Path], run_dir: Path, benchmark=None,
          resume: bool = False, stop_after_steps: int | None = None) -> list[dict]:
    """Run every segment of the schedule, evaluating on `benchmark` (if given) after each; returns the rows.

    stop_after_steps: stop cleanly, with a checkpoint, once this many steps in total are done (time-boxing a
    long run); `resume=True` continues exactly where it stopped.
    """
    run = Run.open(cfg, train_paths, run_dir, resume)
    phase, start = run.resume_point()
    rows = run.read_evaluations()
    if (phase, start) == (0, 0) and cfg.model.head_init == "pca":
        init_heads(run)
        _evaluate(run, benchmark, "init", rows)
    done = segment_names(cfg)[phase - 1] if phase > 0 and start == 0 else None
    if done is not None and not any(row.get("segment") == done for row in rows):
        _evaluate(run, benchmark, done, rows)  # killed between the phase's checkpoint and its evaluation row
    for p in range(phase, len(cfg.schedule.phases)):
        try:
            run_segment(run, p, start if p == phase else 0, stop_after_steps)
        except StopRequested:
            log.info("stopped after %d steps as asked; continue with --resume", stop_after_steps)
            if run.resume_point()[1] == 0:
                _evaluate(run, benchmark, segment_names(cfg)[p], rows)
            return rows
        _evaluate(run, benchmark, segment_names(cfg)[p], rows)
    return rows


def _evaluate(run: Run, benchmark, segment: str, rows: list[dict]) -> None:
    """Evaluate on rank 0 (the others wait): Q on the queries, K on the references."""
    if benchmark is not None and run.is_main:
        rows.append(evaluate_run(run, benchmark, segment))
    run.dist.barrier()
