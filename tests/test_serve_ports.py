"""`cseg serve` claims its ports before Triton starts: a port a stopping server still holds is waited for, one another
process keeps is refused naming its flag (tritonserver alone logged the bind failure and PyTriton timed out minutes
later with its own traceback)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from cseg.errors import CsegError
from cseg.serve.server import claim_ports


def listener() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver binds
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_a_port_in_use_is_refused_naming_its_flag():
    sock, port = listener()
    with sock:
        began = time.monotonic()
        with pytest.raises(CsegError, match=rf"port {port} on 127.0.0.1 \(--grpc-port\) is in use"):
            claim_ports("127.0.0.1", {"--port": 0, "--grpc-port": port}, wait_s=0.5)
        assert 0.5 <= time.monotonic() - began < 5


def test_a_port_freed_while_waiting_is_taken():
    sock, port = listener()
    threading.Timer(0.5, sock.close).start()  # a server that is still stopping
    began = time.monotonic()
    claim_ports("127.0.0.1", {"--grpc-port": port}, wait_s=10)
    assert 0.4 <= time.monotonic() - began < 5


def test_a_closed_connection_does_not_hold_the_port():
    """A connection the server closed stays in TIME_WAIT for a minute; tritonserver binds with SO_REUSEADDR, so the
    port is free for it, and must be for the check."""
    sock, port = listener()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = sock.accept()
    accepted.close()  # the server side closes first: its end goes to TIME_WAIT
    client.close()
    sock.close()
    claim_ports("127.0.0.1", {"--port": port}, wait_s=0)
