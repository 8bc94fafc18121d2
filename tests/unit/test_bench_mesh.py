"""The mesh benchmark's pure parts (bench/mesh.py): its scripts' output parsed into request
times and rates, percentiles, the difference goal. No timing is measured or asserted here:
the benchmark itself runs on the lab (`python -m bench.run --only mesh`)."""

from __future__ import annotations

import pytest

from bench.common import Goal, Row
from bench.mesh import (
    COMPOSE,
    cpu_seconds,
    latency_script,
    percentile,
    request_times,
    transfer_rate,
    transfer_script,
)


def test_request_times_are_the_gaps_between_timestamps_in_ms():
    out = "100.000000\n100.001500\n100.004000\n100.004500\n"
    assert request_times(out, 3) == pytest.approx([1.5, 2.5, 0.5])


def test_request_times_refuse_failures_and_short_output():
    with pytest.raises(RuntimeError, match="1 of 2 requests failed"):
        request_times("1.0\nFAIL\n1.1\n1.2\n", 2)
    with pytest.raises(RuntimeError, match="expected 3 timestamps, got 2"):
        request_times("1.0\n1.1\n", 2)
    with pytest.raises(RuntimeError, match="not a timestamp"):
        request_times("1.0\nwget: bad address 'server'\n1.2\n", 2)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 95) == 95.0
    assert percentile(values, 50) == 50.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 95) == 3.0
    assert percentile([7.0], 0) == 7.0
    with pytest.raises(ValueError):
        percentile([], 95)


def test_transfer_rate_in_mb_per_s_only_for_a_whole_transfer():
    assert transfer_rate("2000000 10.0 12.0\n", expected=2_000_000) == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="delivered 1,000 of 2,000,000 bytes"):
        transfer_rate("1000 10.0 12.0", expected=2_000_000)
    with pytest.raises(RuntimeError, match="not `bytes start end`"):
        transfer_rate("nc: can't connect", expected=2_000_000)
    with pytest.raises(RuntimeError, match="no time"):
        transfer_rate("5 3.0 3.0", expected=5)


def test_cpu_seconds_reads_utime_and_stime_after_the_command_name():
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    stat = "4242 (wireguard-go (x)) S 1 4242 4242 0 -1 4194560 10 0 0 0 150 50 0 0 20 0 9 0 100"
    assert cpu_seconds(stat, 100) == pytest.approx(2.0)


def test_the_scripts_time_in_the_shell_and_ask_what_they_are_given():
    script = latency_script("http://server/small", n=7, warmup=2)
    assert "$EPOCHREALTIME" in script and "date" not in script  # no process started for the timing
    assert "-lt 7" in script and "-lt 2" in script and script.count("'http://server/small'") == 2
    assert transfer_script("10.250.0.31", 39087).startswith("t0=$EPOCHREALTIME; n=$(nc 10.250.0.31 39087 | wc -c)")


def test_the_project_places_the_server_and_a_client_on_each_node():
    assert COMPOSE.count('node.labels.zone == a') == 2 and COMPOSE.count('node.labels.zone == b') == 1
    assert '"39086:80"' in COMPOSE and "nc -ll -p 5001 -e dd" in COMPOSE


def test_a_difference_goal_compares_the_medians_difference():
    goal = Goal("<= +1 ms", 1.0, on="difference")
    assert goal.met(Row("x", "ms", samples=[3.0, 3.4, 9.0], baseline=[2.5, 2.6, 2.0])) is True  # 3.4 - 2.5
    assert goal.met(Row("x", "ms", samples=[4.0], baseline=[2.5])) is False
    assert goal.met(Row("x", "ms", samples=[4.0])) is None
    assert Row("x", "ms", samples=[4.0], baseline=[0.0]).difference() == 4.0
