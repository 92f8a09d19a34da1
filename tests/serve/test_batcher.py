"""The batcher records each batch's metrics before releasing its replies, and a metrics failure never holds
the replies or stops the worker."""

from qkcopy.serve.batcher import Batcher


def test_batch_metrics_come_before_the_replies_and_cannot_hold_them():
    seen = []

    def on_batch(size, waited, took):
        seen.append(size)
        if len(seen) == 1:
            raise RuntimeError("a metrics bug")

    batcher = Batcher(lambda jobs: [j * 2 for j in jobs], max_batch=4, max_wait_s=0.0, on_batch=on_batch).start()
    try:
        assert batcher.submit(3).result(timeout=10) == 6  # the first on_batch raised: the reply still came
        assert seen == [1]  # and it was recorded before the reply was released
        assert batcher.submit(4).result(timeout=10) == 8 and seen == [1, 1] and batcher.alive
    finally:
        batcher.stop()
