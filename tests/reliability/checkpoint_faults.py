"""Run `qkcopy train` jobs, each dying like `kill -9` (os._exit, no cleanup) at one chosen checkpoint event.

    python checkpoint_faults.py PLAN.json

PLAN: {"jobs": [{"argv": [qkcopy arguments…], "events": FILE, "target": N, "log": FILE}, …]}. The jobs run one
after another, each in a process forked from this one (torch and qkcopy are imported once, before any thread
starts), and their exit codes are written to PLAN.json.result. Every event of a job is appended to its events
file as it happens; at event number `target` (1-based; 0: never) the job's process exits at once. Events, in
the order a phase's end produces them:
- `write NAME/FILE`: a checkpoint file (weights, optimizer, state.json) written into NAME's temporary folder,
  half of it (a torn file) before dying;
- `swap SRC -> DST`: one rename of `io.atomic_dir`'s swap, dying before it;
- `evaluate SEGMENT` / `evaluated SEGMENT`: before and after a segment's evaluation row is appended.
"""

import json
import os
import sys
from pathlib import Path

events_file, target, count = Path(os.devnull), 0, 0


def install() -> None:
    """Wrap the checkpoint writes, the swaps' renames and the evaluations with `event`."""

    def event(name: str, torn: Path | None = None) -> None:
        global count
        count += 1
        with open(events_file, "a") as f:
            f.write(name + "\n")
        if count == target:
            if torn is not None and torn.is_file():
                os.truncate(torn, torn.stat().st_size // 2)
            os._exit(137)

    def folder(path: Path) -> str:  # ".Q1.tmp-abc123" -> "Q1"
        name = path.name
        return name[1:name.rindex(".tmp-")] if ".tmp-" in name else name

    import pathlib

    import qkcopy.checkpoint as checkpoint
    import qkcopy.training.loop as loop

    real_replace, real_save, real_write_text = os.replace, checkpoint.save_file, pathlib.Path.write_text
    real_evaluate = loop.evaluate_run

    def replace(src, dst, *args, **kwargs):
        if Path(dst).parent.name == "checkpoints" or Path(src).parent.name == "checkpoints":
            event(f"swap {Path(src).name.split('-')[0]} -> {Path(dst).name.split('-')[0]}")
        return real_replace(src, dst, *args, **kwargs)

    def save_file(tensors, filename, *args, **kwargs):
        out = real_save(tensors, filename, *args, **kwargs)
        event(f"write {folder(Path(filename).parent)}/{Path(filename).name}", Path(filename))
        return out

    def write_text(self, data, *args, **kwargs):
        out = real_write_text(self, data, *args, **kwargs)
        if self.name == "state.json" and self.parent.parent.name == "checkpoints":
            event(f"write {folder(self.parent)}/state.json", self)
        return out

    def evaluate_run(run, benchmark, segment):
        event(f"evaluate {segment}")
        row = real_evaluate(run, benchmark, segment)
        event(f"evaluated {segment}")
        return row

    os.replace = replace
    checkpoint.save_file = save_file
    pathlib.Path.write_text = write_text
    loop.evaluate_run = evaluate_run


def main() -> None:
    global events_file, target, count
    plan_file = Path(sys.argv[1])
    plan = json.loads(plan_file.read_text())
    install()
    from qkcopy.cli import main as cli_main

    codes = []
    for job in plan["jobs"]:
        pid = os.fork()
        if pid == 0:
            events_file, target, count = Path(job["events"]), job["target"], 0
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1), os.dup2(fd, 2)
            try:
                code = cli_main(job["argv"])
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 99
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code or 0)
        codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    plan_file.with_suffix(".result").write_text(json.dumps(codes))


if __name__ == "__main__":
    main()
