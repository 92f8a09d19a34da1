"""Build a 1M synthetic collection + 200 real references for profiling the service (run once)."""
import sys
from pathlib import Path

from qkcopy.collection import Collection
from qkcopy.collection.describe import Describer, add_files
from qkcopy.data.images import scan_images
from qkcopy.model.trained import load_trained
from qkcopy.perf import serve as bench
from qkcopy.serve.auth import create_key

# python setup.py WORKDIR/coll MODEL_RUN N
root, model, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
trained = load_trained(model, "cpu")
print(bench.bench_store(n, root, trained.fingerprint), flush=True)
photos = scan_images(Path("/work/shared/data/photos/eval"))
with Collection.open(root) as coll:
    coll.store.set_settings(dict(model=str(Path(model).resolve())))
    add_files(coll, Describer(trained), photos[:200], "real", {})
    key = create_key(coll.store, "bench", ["read", "write"])
(root.parent / "key.txt").write_text(key)
Path(root.parent / "query.jpg").write_bytes(bench.jpeg_512(photos[0]))
print("ready", flush=True)
