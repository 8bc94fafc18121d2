"""The lab's check that its servers' ports are free (orchestrator.lab.registry.port_holder)."""

import socket

from orchestrator.lab.registry import port_holder


def test_a_port_left_in_time_wait_by_a_lab_just_taken_down_is_free():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.listen()
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server closes first: its side of the connection waits in TIME_WAIT
    client.close()
    server.close()
    assert port_holder("127.0.0.1", port) is None


def test_a_port_someone_listens_on_is_held():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        assert port_holder("127.0.0.1", server.getsockname()[1]) is not None
    finally:
        server.close()
