"""A free TCP port for a local rendezvous (MASTER_PORT of spawned or locally submitted ranks)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a port that is free on ``host`` now (another process could take it before it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
