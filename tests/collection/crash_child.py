"""A writer killed by the crash-safety test: adds, removes and snapshots in a loop, printing each
acknowledgement only after its transaction committed. Usage: crash_child.py COLLECTION SEED"""

import sys

import numpy as np

from qkcopy.collection import Collection, NewRef

E = 256


def main(root: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    coll = Collection.open(root)
    coll.index()
    step = 0
    while True:
        step += 1
        refs = [NewRef(f"s{seed}-{step}-{j}.jpg", f"{seed}-{step}-{j}", "b%d" % (step % 3), {"step": step},
                       rng.normal(size=E).astype(np.float32)) for j in range(int(rng.integers(1, 4)))]
        print("add", *[a.id for a in coll.add(refs)], flush=True)
        if step % 7 == 0:
            victims = [int(i) for i in rng.choice(coll.store.all_ids(), 2, replace=False)]
            print("removing", *victims, flush=True)  # may commit and die before the ack below
            print("remove", *coll.remove(victims), flush=True)
        if step % 25 == 0:
            print("snapshot", coll.snapshot(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
