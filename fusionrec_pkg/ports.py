"""Free TCP ports on 127.0.0.1: rendezvous ports of local process groups, Ray's ports. One definition."""

from __future__ import annotations

import contextlib
import socket


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (the OS picks it, so concurrent sessions do not collide)."""
    return free_ports(1)[0]


def free_ports(n: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """`n` distinct TCP ports free right now on 127.0.0.1 and not in `exclude`.

    All sockets stay bound until every port is picked: closing each before asking for the next lets the OS
    hand out the same port twice (seen: Ray refused a node whose metrics and agent ports were equal).
    """
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < n:
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in exclude:
                ports.append(port)
        return ports
