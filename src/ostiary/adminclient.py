"""A small client for the daemon's admin API over its unix socket or TCP (http.client does the HTTP)."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import quote


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class AdminClient:
    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        if self.address.startswith("unix:"):
            return _UnixConnection(self.address[5:], self.timeout)
        host, _, port = self.address.removeprefix("http://").rpartition(":")
        return http.client.HTTPConnection(host.strip("[]"), int(port), timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = self._connection()
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            is_json = response.getheader("content-type", "").startswith("application/json")
            data = json.loads(raw) if raw and is_json else None
            return response.status, data
        finally:
            conn.close()

    def issue(self, body: dict[str, Any]) -> tuple[int, Any]:
        return self.request("POST", "/v1/sessions", body)

    def revoke(self, session_id: str) -> tuple[int, Any]:
        return self.request("DELETE", f"/v1/sessions/{quote(session_id, safe='')}")

    def revoke_subject(self, sub: str) -> tuple[int, Any]:
        return self.request("POST", f"/v1/subjects/{quote(sub, safe='')}/revoke")

    def list(self, sub: str) -> tuple[int, Any]:
        return self.request("GET", f"/v1/subjects/{quote(sub, safe='')}/sessions")
