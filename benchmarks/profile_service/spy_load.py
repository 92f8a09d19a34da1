"""Start `qkcopy serve` on the collection prepared by setup.py, load it with CLIENTS concurrent clients for
SECONDS while py-spy records the server; print throughput and p50/p99.

    python spy_load.py CLIENTS SECONDS WORKDIR   (WORKDIR: setup.py's, holding coll/, key.txt, query.jpg)
"""
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

here = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).parent
coll, key, query = here / "coll", (here / "key.txt").read_text().strip(), (here / "query.jpg").read_bytes()
clients, seconds = int(sys.argv[1]), float(sys.argv[2])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
url = f"http://127.0.0.1:{port}"
py = str(Path(sys.executable))
proc = subprocess.Popen([py, "-m", "qkcopy", "serve", str(coll), "--port", str(port), "--device", "cpu", "--threads",
                         "1", "--queue", "256", "--snapshot-interval", "3600"],
                        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
t0 = time.perf_counter()
while True:
    try:
        if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        time.sleep(0.5)
print(f"start {time.perf_counter() - t0:.1f} s", flush=True)
headers = {"Authorization": f"Bearer {key}"}
files = {"images": ("q.jpg", query, "image/jpeg")}
with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
    for _ in range(10):
        c.post("/v1/match", files=files).raise_for_status()
spy = subprocess.Popen([str(Path(py).parent / "py-spy"), "record", "--pid", str(proc.pid), "--duration", str(int(seconds)),
                        "--rate", "200", "--format", "raw", "--output", str(here / f"profile-{clients}.txt"), "--nonblocking"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
times, lock = [], threading.Lock()
deadline = time.perf_counter() + seconds


def client():
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            c.post("/v1/match", files=files).raise_for_status()
            with lock:
                times.append(time.perf_counter() - t)


threads = [threading.Thread(target=client) for _ in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
spy.wait()
proc.terminate()
proc.wait()
times.sort()
n = len(times)
print(f"clients {clients}: {n} requests in {seconds:.0f} s = {n / seconds:.1f}/s, p50 {1000 * times[n // 2]:.1f} ms, "
      f"p99 {1000 * times[min(n - 1, int(0.99 * n))]:.1f} ms", flush=True)
