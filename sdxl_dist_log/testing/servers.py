"""Servers that are out of reach in the two ways a W&B server can be, as real local sockets.

- :class:`SilentServer` accepts every connection, reads what it is sent and never answers (a hung proxy or server);
- :func:`closed_port` is a port nothing listens on (connection refused).
"""

from __future__ import annotations

import socket
import threading

from sdxl_dist_log.launch.ports import free_port


class SilentServer:
    """Accepts every connection, reads its first bytes and never answers; keeps what it read, in order.

    Attributes:
        port: the local port it listens on (127.0.0.1).
        received: the first bytes (up to 64 KiB) read from each connection, in the order they came.
    """

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(128)
        self.port: int = self._socket.getsockname()[1]
        self.received: list[bytes] = []
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="silent-server", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:  # closed
                return
            self._open.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except OSError:
            return
        with self._lock:
            self.received.append(data)

    def received_after(self, marker: bytes) -> list[bytes]:
        """What reached the server after the first connection whose bytes start with ``marker`` (empty without one).

        A client sends ``marker`` on a connection of its own at a point of interest (e.g. once ``finish()`` has
        returned), so this is what it sent from then on.
        """
        with self._lock:
            marks = [i for i, data in enumerate(self.received) if data.startswith(marker)]
            return self.received[marks[0] + 1:] if marks else []

    def close(self) -> None:
        """Stop listening and close every connection it holds."""
        self._socket.close()
        for conn in self._open:
            conn.close()


def closed_port() -> int:
    """A local port nothing listens on: a connection to it is refused (a free one, bound by nobody)."""
    return free_port()


__all__ = ["SilentServer", "closed_port"]
