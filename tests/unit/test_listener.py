"""The listening socket's options, which every accepted connection inherits (node.server.tune_listener)."""

from __future__ import annotations

import socket

import pytest

from node.server import tune_listener


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
def test_accepted_sockets_inherit_the_send_buffer_cap_and_the_user_timeout() -> None:
    with socket.socket() as listener, socket.socket() as default_listener:
        tune_listener(listener, user_timeout=7.5, send_buffer=65536)
        for sock in (listener, default_listener):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        with socket.create_connection(listener.getsockname()), socket.create_connection(default_listener.getsockname()):
            accepted, _ = listener.accept()
            untuned, _ = default_listener.accept()
            with accepted, untuned:
                # Linux doubles SO_SNDBUF for its bookkeeping.
                assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 65536
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 7500
                assert untuned.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0
