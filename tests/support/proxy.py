"""A TCP proxy on loopback that can freeze: connections stay open, no byte gets through (a hung server)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class FreezableProxy:
    """Relays 127.0.0.1:<port> to a server; :meth:`freeze` stops relaying without closing anything."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.frozen = threading.Event()
        self.stopping = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FreezableProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        pair = {client: server, server: client}
        while not self.stopping.is_set():
            if self.frozen.is_set():
                self.stopping.wait(0.05)
                continue
            readable, _, _ = select.select(list(pair), [], [], 0.1)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for s in pair:
                        with contextlib.suppress(OSError):
                            s.close()
                    return
                while self.frozen.is_set() and not self.stopping.is_set():  # held back until the thaw
                    self.stopping.wait(0.05)
                pair[sock].sendall(data)
