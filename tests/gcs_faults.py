"""Faults of a GCS server for tests, on 127.0.0.1 only: a slow or vanishing TCP proxy in
front of the fake GCS server, and a server that forbids every request (HTTP 403)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from urllib.parse import urlparse


class Proxy:
    """A TCP proxy to the GCS server at ``upstream`` (``http://127.0.0.1:PORT``): each
    chunk a client sends waits ``delay`` seconds; :meth:`go_away` closes the listening
    socket and every open connection, as a server that is gone (clients then get
    connection refused)."""

    def __init__(self, upstream: str, delay: float = 0.0):
        u = urlparse(upstream)
        self.upstream = (u.hostname, u.port)
        self.delay = delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                return
            with self.lock:
                self.conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server, self.delay),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, 0.0), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def go_away(self) -> None:
        self.sock.close()
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass


class _Forbid(http.server.BaseHTTPRequestHandler):
    def _deny(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = json.dumps({"error": {"code": 403, "message": "tester@example.com does not have "
                                     "storage.objects.get access to the Google Cloud Storage "
                                     "object.", "errors": [{"reason": "forbidden"}]}}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _deny

    def log_message(self, *args) -> None:
        pass


class Forbidding:
    """A GCS API that answers every request with 403 Forbidden; a context manager."""

    def __enter__(self) -> "Forbidding":
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forbid)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def client_env(env: dict, url: str) -> dict:
    """``env`` with the GCS clients (gcsfs, tensorstore) pointed at ``url``."""
    return {**env, "STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url}
