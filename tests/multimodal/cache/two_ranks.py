"""Two 'processes' in one test: threads whose fake accelerators share a barrier (the feature cache's multi-process
paths without a launcher)."""

from __future__ import annotations


def on_two_ranks(work, timeout: float = 60) -> list:
    """Run `work(rank, accelerator)` for ranks 0 and 1 as two 'processes' (threads whose accelerators share one
    barrier); returns the errors raised (a raising rank aborts the barrier so the other does not wait)."""
    import threading

    barrier = threading.Barrier(2)

    class FakeAccelerator:
        def __init__(self, rank):
            self.process_index, self.num_processes = rank, 2

        def wait_for_everyone(self):
            barrier.wait(timeout=timeout)

    errors = []

    def run(rank):
        try:
            work(rank, FakeAccelerator(rank))
        except Exception as err:  # noqa: BLE001 - reported to the caller
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=2 * timeout)
    return errors
