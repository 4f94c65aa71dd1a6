"""Keep-alive HTTP/1.1 clients for the harness: Consul's API and a gateway probe (stdlib only, one connection each)."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any


class HttpError(RuntimeError):
    pass


class Client:
    """One persistent connection; reconnects once if the server closed it."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"base_url needs host and port: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                resp = self._conn.getresponse()
                data = resp.read()
            except (http.client.HTTPException, OSError) as exc:
                self.close()
                if attempt == 2:
                    raise HttpError(f"{method} {self.base_url}{path}: {exc}") from exc
                continue
            if resp.getheader("connection", "").lower() == "close":
                self.close()
            return resp.status, data
        raise AssertionError("unreachable")

    def status(self, path: str) -> int:
        return self.request("GET", path)[0]

    def get_json(self, path: str) -> Any:
        status, data = self.request("GET", path)
        if status != 200:
            raise HttpError(f"GET {self.base_url}{path} -> {status}: {data[:300]!r}")
        return json.loads(data)


class Consul(Client):
    def _put(self, path: str, body: bytes | None) -> None:
        status, data = self.request("PUT", path, body=body, headers={"Content-Type": "application/json"})
        if status != 200:
            raise HttpError(f"PUT {self.base_url}{path} -> {status}: {data[:300]!r}")

    def register(
        self,
        *,
        name: str,
        service_id: str,
        port: int,
        tags: list[str],
        address: str = "127.0.0.1",
        meta: dict[str, str] | None = None,
    ) -> None:
        """Agent registration with a passing TTL check, as a real service would register."""
        doc: dict[str, object] = {
            "Name": name,
            "ID": service_id,
            "Address": address,
            "Port": port,
            "Tags": tags,
            "Check": {"TTL": "1h", "Status": "passing"},
        }
        if meta:
            doc["Meta"] = meta
        self._put("/v1/agent/service/register", json.dumps(doc).encode())

    def maintenance(self, service_id: str, enable: bool) -> None:
        quoted = urllib.parse.quote(service_id, safe="")
        self._put(f"/v1/agent/service/maintenance/{quoted}?enable={'true' if enable else 'false'}&reason=bench", None)

    def deregister(self, service_id: str) -> None:
        self._put(f"/v1/agent/service/deregister/{urllib.parse.quote(service_id, safe='')}", None)

    def catalog_register(
        self, *, node: str, name: str, service_id: str, port: int, tags: list[str], address: str = "127.0.0.1"
    ) -> None:
        """Catalog registration (no agent-side check machinery): the cheap way to create thousands of instances."""
        doc = {
            "Node": node,
            "Address": address,
            "Service": {"ID": service_id, "Service": name, "Address": address, "Port": port, "Tags": tags},
        }
        self._put("/v1/catalog/register", json.dumps(doc).encode())

    def catalog_deregister(self, *, node: str, service_id: str) -> None:
        doc = {"Node": node, "ServiceID": service_id}
        self._put("/v1/catalog/deregister", json.dumps(doc).encode())

    def put_kv(self, key: str, value: bytes) -> None:
        self._put(f"/v1/kv/{urllib.parse.quote(key)}", value)
