"""Deterministic failure injection into a training run's checkpoints (issue 17).

A real `qkcopy train --benchmark` process (the shipped preset's data settings at tiny sizes) dies like
`kill -9` (`checkpoint_faults.py`: os._exit, no cleanup) at one chosen event — inside each checkpoint file's
write (a torn file), before each rename of each swap, before and after each evaluation row — then
`qkcopy train --resume` runs to the end (each in a process forked from a driver that imported torch once).
Every event of the first phase's end is tried, and every rename of the last one's. Every run must end with the straight run's weights bit for bit, the
folder listing init/K1/Q1/latest and no dot-entries, and one evaluation row per segment.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

TINY = ["model.weights=null", "model.image_size=32", "model.test_size=null", "model.hidden=32",
        "model.descriptor_dim=8", "data.batch_size=4", "data.workers=0", "data.pca_images=24",
        "schedule.steps_per_phase=2", "schedule.phases=[Q,K]", "schedule.checkpoint_every=100", "device=cpu"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
DRIVER = Path(__file__).with_name("checkpoint_faults.py")
SEGMENTS = ["init", "Q1", "K1"]


def job(run: Path, bench: Path, target: int, resume: bool = False) -> dict:
    argv = ["train", "--benchmark", str(bench), "--out", str(run), *(["--resume"] if resume else []), *TINY]
    name = f"{run.name}-{'resume' if resume else target}"
    return dict(argv=argv, target=target, events=str(run.parent / f"{name}.events"),
                log=str(run.parent / f"{name}.log"))


def run_jobs(jobs: list[dict], folder: Path) -> list[int]:
    """The jobs' exit codes (137: died at its target event)."""
    plan = folder / "plan.json"
    plan.write_text(json.dumps(dict(jobs=jobs)))
    done = subprocess.run([sys.executable, str(DRIVER), str(plan)], env=ENV, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(plan.with_suffix(".result").read_text())


def weights(run: Path) -> dict:
    return {name: load_file(run / "checkpoints" / name / "weights.safetensors")
            for name in ("Q1", "K1", "latest")}


def segments(run: Path) -> list[str]:
    return [json.loads(line)["segment"] for line in (run / "evaluations.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tiny_benchmark, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    straight = job(run, tiny_benchmark, 0)
    assert run_jobs([straight], run.parent) == [0], Path(straight["log"]).read_text()[-3000:]
    return run, Path(straight["events"]).read_text().splitlines()


def test_the_events_cover_every_write_swap_and_evaluation(straight):
    run, events = straight
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["K1", "Q1", "init", "latest"]
    assert segments(run) == SEGMENTS
    for name in ("Q1", "K1"):  # the tag is written and swapped in before `latest`, then the row
        tag, latest, row = (events.index(e) for e in (f"swap .{name}.tmp -> {name}", f"write latest/state.json",
                                                       f"evaluate {name}"))
        assert events.index(f"write {name}/weights.safetensors") < tag < row
    last = len(events) - 1 - events[::-1].index("swap .latest.tmp -> latest")
    assert events.index("swap .K1.tmp -> K1") < last < events.index("evaluate K1")
    assert "swap latest -> .latest.old" in events and "write latest/optimizer.safetensors" in events


@pytest.mark.slow
def test_a_kill_at_every_checkpoint_event_resumes_to_the_same_run(straight, tiny_benchmark, tmp_path):
    run0, events = straight
    want = weights(run0)
    # every event of the first phase's end (the init checkpoint's are covered by the restart rule), and every
    # rename of the last phase's end (`latest` replaced: its old copy set aside, then the new one swapped in)
    first, row = events.index("write Q1/weights.safetensors"), events.index("evaluated Q1")
    targets = [i + 1 for i, e in enumerate(events) if first <= i <= row or (i > row and e.startswith("swap"))]
    jobs = []
    for target in targets:
        jobs += [job(tmp_path / f"kill{target}", tiny_benchmark, target),
                 job(tmp_path / f"kill{target}", tiny_benchmark, 0, resume=True)]
    codes = run_jobs(jobs, tmp_path)
    for i, target in enumerate(targets):
        killed, resumed, run = jobs[2 * i], jobs[2 * i + 1], tmp_path / f"kill{target}"
        assert codes[2 * i] == 137, (events[target - 1], Path(killed["log"]).read_text()[-3000:])
        assert Path(killed["events"]).read_text().splitlines()[-1] == events[target - 1]
        log = Path(resumed["log"]).read_text()
        assert codes[2 * i + 1] == 0 and "Traceback" not in log, (events[target - 1], log[-3000:])
        ckpts = run / "checkpoints"
        assert sorted(p.name for p in ckpts.iterdir()) == ["K1", "Q1", "init", "latest"], events[target - 1]
        assert not [p for p in run.rglob(".*")], events[target - 1]  # no leftover of any swap
        assert segments(run) == SEGMENTS, events[target - 1]
        got = weights(run)
        for name in want:
            assert all(np.array_equal(got[name][k].numpy(), want[name][k].numpy()) for k in want[name]), \
                (events[target - 1], name)
