"""agent.steps._creating: one agent process (or thread) at a time checks for and creates a
network on a node; the parallel applies of a wave all find the project network missing."""

import threading
import time

from agent.context import Context
from agent.fake import FakeEngine
from agent.steps import _creating


def test_creations_of_one_network_never_overlap(tmp_path):
    engine = FakeEngine()
    inside, peak, lock = [0], [0], threading.Lock()

    def create():
        ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path))  # one per agent process
        with _creating(ctx, "network-shop_default"):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak[0] == 1
    assert list((tmp_path / "engines" / "FAKE-ENGINE-1" / "creating").iterdir())  # 0600 lock files kept
