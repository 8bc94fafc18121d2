"""SSHNode keeps its agent sessions under sshd's MaxSessions: a wave wider than that
waits for free sessions instead of having channels refused."""

import threading
import time

from orchestrator.io import nodes as N


class _Channel:
    closed = False

    def exit_status_ready(self):
        return False

    def close(self):
        self.closed = True

    def shutdown_write(self):
        pass


class _Session:
    pid = 1

    def __init__(self):
        self.channel = _Channel()


class _Conn:
    name = "n1"

    def close(self):
        pass


def test_a_wave_wider_than_max_sessions_waits_for_free_sessions(monkeypatch):
    opened = []
    monkeypatch.setattr(N, "open_agent", lambda *a, **k: opened.append(_Session()) or opened[-1])
    node = N.SSHNode(_Conn(), None, _Session())
    busy, peak, lock = [0], [0], threading.Lock()

    def apply():
        with node.session():
            with lock:
                busy[0] += 1
                peak[0] = max(peak[0], busy[0])
            time.sleep(0.02)
            with lock:
                busy[0] -= 1

    threads = [threading.Thread(target=apply) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert peak[0] == N.MAX_SESSIONS
    assert len(opened) == N.MAX_SESSIONS - 1  # the first session is the connect's


def test_a_failed_open_gives_its_slot_back(monkeypatch):
    def refuse(*a, **k):
        raise OSError("refused")

    monkeypatch.setattr(N, "open_agent", refuse)
    node = N.SSHNode(_Conn(), None, _Session())
    node.max_sessions = 2
    with node.session():  # the first one, free
        for _ in range(3):  # each failure frees its slot, so the next may try again
            try:
                with node.session():
                    pass
            except OSError:
                pass
        assert node._slots == 1


def test_prewarm_stays_under_the_bound(monkeypatch):
    monkeypatch.setattr(N, "open_agent", lambda *a, **k: _Session())
    node = N.SSHNode(_Conn(), None, _Session())
    node.prewarm(50)
    for t in node._warming:
        t.join(5)
    assert len(node._all) == N.MAX_SESSIONS


def test_a_request_waits_for_a_session_prewarm_is_opening_rather_than_starting_another(monkeypatch):
    release, opened = threading.Event(), []

    def slow_open(*a, **k):  # an agent start on the node
        release.wait(5)
        opened.append(_Session())
        return opened[-1]

    monkeypatch.setattr(N, "open_agent", slow_open)
    node = N.SSHNode(_Conn(), None, _Session())
    node.prewarm(2)  # two applies at once are coming: one more session
    got = []

    def apply():
        with node.session() as s:
            got.append(s)
            time.sleep(0.2)  # both busy at once

    threads = [threading.Thread(target=apply) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    release.set()
    for t in threads:
        t.join(5)
    assert len(opened) == 1 and len(set(map(id, got))) == 2  # the connect's and prewarm's, no third


def test_a_failed_prewarm_lets_the_waiting_request_open_its_own(monkeypatch):
    calls = []

    def open_agent(*a, **k):
        calls.append(k)
        if len(calls) == 1:
            time.sleep(0.05)
            raise OSError("refused")  # the prewarm's
        return _Session()

    monkeypatch.setattr(N, "open_agent", open_agent)
    node = N.SSHNode(_Conn(), None, _Session())
    node.prewarm(2)
    with node.session():  # the connect's
        with node.session() as s:  # waits for the prewarm, which fails: opens its own
            assert s is not None
    assert len(calls) == 2 and node._pending == 0
