"""duration_s counted from the orch process's start (orchestrator.cli.clock)."""

import json
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


def _entry(*args, before=""):
    code = before + "from orchestrator.cli import entry; entry()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def test_the_console_script_ends_without_the_interpreters_teardown(tmp_path):
    # Freeing a hundred nodes' SSH objects one by one at teardown took 1.2 s after the
    # result was printed: the `orch` script ends once the exit handlers have run.
    before = ("import atexit, sys\n"
              "class Torn:\n    def __del__(self): sys.stderr.write('torn down\\n')\n"
              "keep = Torn()\n")
    cp = _entry("--version", before=before)
    assert cp.returncode == 0 and cp.stdout.startswith("orch ") and "torn down" not in cp.stderr
    # main(), as tests call it in-process, leaves the teardown alone
    plain = subprocess.run([sys.executable, "-c", before + "from orchestrator.cli import main; main()", "--version"],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0 and "torn down" in plain.stderr


def test_the_console_script_keeps_exit_codes_and_flushes_the_final_object(tmp_path):
    cp = _entry("up", "--env", "nope", "--json", "--environments", str(tmp_path))
    assert cp.returncode == 2
    assert json.loads(cp.stdout.strip().splitlines()[-1])["status"] == "failed"
    assert "no environment named 'nope'" in cp.stderr
