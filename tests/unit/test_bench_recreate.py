"""bench/recreate.py's parsing of `orch up --json` events into per-batch figures."""

from bench.recreate import _batch_overheads


def ev(t, kind, node, **data):
    if kind in ("batch", "step"):
        return dict(data, event=kind, t=t, node=node) if kind == "step" else dict(data, event="batch", t=t)
    return dict(data, event="agent", type=kind, t=t, node=node)


def test_each_batch_is_timed_from_its_event_to_its_step_done_less_the_containers_own_time():
    events = [
        ev(1.0, "batch", "", batch=1, replicas=[{"node": "prod-1", "replica": 1}]),
        ev(1.2, "container.create", "prod-1", batch=1),
        ev(2.7, "container.healthy", "prod-1"),
        ev(3.0, "step", "prod-1", status="done"),
        ev(3.1, "batch", "", batch=2, replicas=[{"node": "prod-2", "replica": 2}]),
        ev(3.3, "container.create", "prod-2", batch=2),
        ev(4.9, "container.healthy", "prod-2"),
        ev(5.0, "step", "prod-2", status="done"),
    ]
    got = _batch_overheads(events)
    assert [tuple(round(x, 2) for x in b) for b in got] == [(2.0, 1.5, 0.2, 0.3), (1.9, 1.6, 0.2, 0.1)]


def test_a_batch_without_its_events_is_left_out():
    events = [ev(1.0, "batch", "", batch=1, replicas=[{"node": "n1", "replica": 1}]),
              ev(3.0, "step", "n1", status="done")]
    assert _batch_overheads(events) == []
