"""The service's contract, fuzzed: schemathesis against a real `qkcopy serve` process on 127.0.0.1, all four
phases (examples, coverage, fuzzing, stateful), every check, a fixed seed, a time budget. Zero failures, zero
errors, no traceback in the server's log. What the run leaves out, and why, is in tests/serve/schemathesis.toml
(the image and JSON strategies the schema cannot state are in tests/serve/fuzz_hooks.py). `make fuzz` runs
the same with a longer budget (QKCOPY_FUZZ_SECONDS)."""

import glob
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from served import start_server
from testkit import free_port

from qkcopy.collection import Collection

pytest.importorskip("schemathesis")
HERE = Path(__file__).parent
SECONDS = int(os.environ.get("QKCOPY_FUZZ_SECONDS", "50"))
CHECKS = {"not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
          "positive_data_acceptance", "missing_required_header", "unsupported_method", "allow_header_conformance",
          "use_after_free", "ensure_resource_availability", "ignored_auth", "object_level_authorization"}


def schemathesis(url: str, key: str, reports: Path, seconds: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(HERE), "SCHEMATHESIS_HOOKS": "fuzz_hooks", "NO_COLOR": "1"}
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(HERE / "schemathesis.toml"), "run",
               f"{url}/openapi.json", "-H", f"Authorization: Bearer {key}", "--seed", "42",
               "--phases", "examples,coverage,fuzzing,stateful", "--max-time", str(seconds), "--workers", "1",
               "--request-timeout", "30", "--report", "json,ndjson", "--report-dir", str(reports), "--no-color"]
    reports.mkdir(parents=True, exist_ok=True)  # and its cache (.schemathesis/) goes next to it, not into the checkout
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 120, cwd=reports)


def checks_run(ndjson: Path) -> dict[str, int]:
    """How many times each check ran, from the run's event stream."""
    counts: dict[str, int] = {}
    with open(ndjson) as events:
        for line in events:
            event = json.loads(line)
            for cases in event.get("ScenarioFinished", {}).get("recorder", {}).get("checks", {}).values():
                for check in cases:
                    counts[check["name"]] = counts.get(check["name"], 0) + 1
    return counts


@pytest.mark.slow
def test_schemathesis_finds_nothing_against_the_real_server(collection_dir, keys, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")
    server = start_server(collection_dir, port, log)
    try:
        run = schemathesis(url, keys["read+write"], tmp_path / "reports", SECONDS)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log.close()
    (report,) = glob.glob(str(tmp_path / "reports" / "json-*.json"))
    (events,) = glob.glob(str(tmp_path / "reports" / "ndjson-*.ndjson"))
    summary = json.loads(Path(report).read_text())
    assert run.returncode == 0 and summary["failures"] == [] and summary["errors"] == [], run.stdout[-6000:]
    assert summary["operations"]["tested"] == summary["operations"]["total"] == 11
    assert all(summary["phases"][p]["status"] == "success" for p in ("coverage", "fuzzing", "stateful"))
    assert summary["test_cases"]["generated"] >= 300, summary["test_cases"]
    ran = checks_run(Path(events))
    assert CHECKS <= set(ran) and min(ran[c] for c in CHECKS) > 0, ran
    served = (tmp_path / "server.log").read_text(errors="replace")
    assert "Traceback" not in served and '" 500 ' not in served, served[-3000:]
    with Collection.open(collection_dir) as coll:
        assert coll.check()["consistent"]
    print(f"schemathesis: {summary['test_cases']['generated']} cases in {summary['running_time']:.0f} s, "
          f"{served.count('HTTP/1.1')} requests, checks {ran}")
