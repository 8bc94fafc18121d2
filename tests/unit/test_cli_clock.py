"""duration_s counted from the orch process's start (orchestrator.cli.clock)."""

import subprocess
import sys
import time

from orchestrator.cli import clock, output


def test_the_process_start_is_read_from_the_kernel():
    started = clock.process_started()
    assert started is not None and started <= time.monotonic()
    # A child that sleeps before it asks: its start lies that far back.
    code = "import time; time.sleep(0.3); from orchestrator.cli import clock; print(time.monotonic() - clock.process_started())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.28 <= age < 5


def test_a_final_objects_duration_covers_the_whole_process_once_marked(monkeypatch):
    try:
        clock.reset()
        assert output.normalize_final({"status": "ok", "duration_s": 0.5})["duration_s"] == 0.5  # not marked: as is
        monkeypatch.setattr(clock, "_started", time.monotonic() - 2.0)  # the process started 2 s ago
        got = output.normalize_final({"status": "ok", "duration_s": 0.5})["duration_s"]
        assert 2.0 <= got < 3
        assert clock.whole(7.0) == 7.0  # never less than the use case's own figure
        assert output.normalize_final({"status": "ok"}).get("duration_s") is None
    finally:
        clock.reset()
