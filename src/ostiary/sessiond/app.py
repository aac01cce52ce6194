"""The two HTTP faces of the daemon as plain ASGI apps: the public API and the admin API.

Requests are parsed by the ASGI server (httptools); this module only routes, reads bounded JSON or
form bodies and writes answers. Every refusal carries a fault code or a JSON error, never a 500
with a traceback.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, unquote

from ..faults import TokenFault
from .cache import Validated
from .service import BadRequest, RequestContext, SessionService

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

MAX_BODY = 64 * 1024
MAX_AUTHORIZATION = 8192 + 7
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")


async def _send(send: Send, status: int, headers: Headers, body: bytes = b"") -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, obj: Any, extra: Headers | None = None) -> None:
    await _send(send, status, [_JSON, _NO_STORE, *(extra or [])], json.dumps(obj, separators=(",", ":")).encode())


async def _error(send: Send, status: int, error: str, detail: str, extra: Headers | None = None) -> None:
    await _json(send, status, {"error": error, "detail": detail}, extra)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client_disconnected", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequest("body_too_large", f"request bodies are limited to {MAX_BODY} bytes", 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _read_json(receive: Receive) -> dict[str, Any]:
    body = await _read_body(receive)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("invalid_json", "the body must be a JSON object") from exc
    if not isinstance(value, dict):
        raise BadRequest("invalid_json", "the body must be a JSON object")
    return value


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _context(scope: Scope) -> RequestContext:
    real_ip = _header(scope, b"x-real-ip")
    ip: str | None = None
    if real_ip:
        ip = real_ip.decode("latin-1").strip()[:64]
    elif scope.get("client"):
        ip = scope["client"][0]
    ua = _header(scope, b"user-agent")
    return RequestContext(ip=ip, user_agent=ua.decode("latin-1")[:1024] if ua is not None else None)


def _segments(scope: Scope) -> list[str]:
    raw = scope.get("raw_path") or scope["path"].encode()
    path = raw.split(b"?", 1)[0].decode("latin-1")
    return [unquote(s) for s in path.split("/")[1:]]


class PublicApp:
    def __init__(self, service: SessionService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if path == "/v1/validate":
                if method not in ("GET", "HEAD"):
                    raise BadRequest("method_not_allowed", "use GET", 405)
                await self.validate(scope, send)
            elif path == "/.well-known/jwks.json" and method == "GET":
                await _json(send, 200, self.service.keyring.jwks(), [(b"cache-control", b"max-age=60")])
            elif path == "/healthz" and method == "GET":
                await _json(send, 200, {"status": "alive"})
            elif path == "/readyz" and method == "GET":
                checks = await self.service_ready()
                await _json(send, 200 if all(c["ok"] for c in checks.values()) else 503, checks)
            elif path == "/metrics" and method == "GET":
                await _send(send, 200, [(b"content-type", b"text/plain; version=0.0.4")],
                            self.service.metrics.exposition())  # fmt: skip
            elif path == "/oauth2/introspect":
                await self.introspect(scope, receive, send)
            elif path == "/oauth2/revoke":
                await self.revoke(scope, receive, send)
            else:
                await _error(send, 404, "not_found", f"no endpoint {method} {path[:100]}")
        except BadRequest as exc:
            await _error(send, exc.status, exc.error, exc.detail)
        except TokenFault as exc:
            await _error(send, exc.status, exc.code, exc.fault.meaning, [(b"x-session-fault", exc.code.encode())])

    service_ready: Callable[[], Awaitable[dict[str, dict[str, Any]]]]

    async def validate(self, scope: Scope, send: Send) -> None:
        started = time.perf_counter()
        metrics = self.service.metrics
        mode = "unknown"
        try:
            token = _bearer(scope)
            mode = "jwt" if "." in token else "opaque"
            result = await self.service.validate(token, _context(scope))
        except TokenFault as exc:
            metrics.validations.labels("refused" if exc.status < 500 else "unavailable", exc.code).inc()
            metrics.validation_seconds.labels(mode).observe(time.perf_counter() - started)
            self.service.log.audit("refuse", fault=exc.code, detail=exc.detail[:200])
            headers: Headers = [(b"x-session-fault", exc.code.encode()), _NO_STORE]
            if exc.status == 401:
                headers.append((b"www-authenticate", b'Bearer error="invalid_token"'))
            await _send(send, exc.status, headers)
            return
        metrics.validations.labels("ok", "").inc()
        metrics.validation_seconds.labels(mode).observe(time.perf_counter() - started)
        await _send(send, 200, _session_headers(result))

    async def _client(self, scope: Scope) -> str:
        auth = _header(scope, b"authorization") or b""
        scheme, _, value = auth.partition(b" ")
        client_id = secret = None
        if scheme.lower() == b"basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
                cid, _, sec = decoded.partition(":")
                client_id, secret = unquote(cid), unquote(sec)
            except (binascii.Error, UnicodeDecodeError):
                client_id = None
        expected = self.service.settings.clients.get(client_id or "")
        if client_id is None or secret is None or expected is None or not hmac.compare_digest(
            expected.removeprefix("sha256:"), hashlib.sha256(secret.encode()).hexdigest()
        ):
            raise BadRequest("invalid_client", "client authentication failed", 401)
        return client_id

    async def _form_token(self, scope: Scope, receive: Receive) -> str:
        if scope["method"] != "POST":
            raise BadRequest("method_not_allowed", "use POST", 405)
        try:
            client_id = await self._client(scope)
        except BadRequest as exc:
            await _read_body(receive)
            raise exc
        body = await _read_body(receive)
        try:
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                                  max_num_fields=10))  # fmt: skip
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest("invalid_request", "the body must be application/x-www-form-urlencoded") from exc
        token = form.get("token")
        if not token:
            raise BadRequest("invalid_request", "the token parameter is required")
        self.service.log.audit("client_request", client=client_id, endpoint=scope["path"])
        return token

    async def introspect(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            token = await self._form_token(scope, receive)
        except BadRequest as exc:
            extra = [(b"www-authenticate", b'Basic realm="ostiary"')] if exc.status == 401 else []
            await _error(send, exc.status, exc.error, exc.detail, extra)
            return
        try:
            v = await self.service.validate(token, RequestContext(ip=None, user_agent=None))
        except TokenFault as exc:
            if exc.status >= 500:
                raise
            await _json(send, 200, {"active": False})
            return
        t = self.service.settings.tokens
        await _json(send, 200, {"active": True, "sub": v.sub, "sid": v.sid, "exp": v.expires_at,
                                "iat": int(v.issued_at), "iss": t.issuer, "aud": t.audience,
                                "token_type": "Bearer", "mode": v.mode})  # fmt: skip

    async def revoke(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            token = await self._form_token(scope, receive)
        except BadRequest as exc:
            extra = [(b"www-authenticate", b'Basic realm="ostiary"')] if exc.status == 401 else []
            await _error(send, exc.status, exc.error, exc.detail, extra)
            return
        try:
            v = await self.service.validate(token, RequestContext(ip=None, user_agent=None))
        except TokenFault as exc:
            if exc.status >= 500:
                raise
            await _send(send, 200, [_NO_STORE])  # RFC 7009: invalid tokens need no error
            return
        await self.service.revoke_session(v.sid, reason="oauth2_revoke")
        await _send(send, 200, [_NO_STORE])


def _bearer(scope: Scope) -> str:
    auth = _header(scope, b"authorization")
    if auth is None or not auth.strip():
        raise TokenFault("MISSING_TOKEN")
    if len(auth) > MAX_AUTHORIZATION:
        raise TokenFault("MALFORMED", "Authorization header too long")
    scheme, _, token = auth.partition(b" ")
    if scheme.lower() != b"bearer":
        raise TokenFault("MISSING_TOKEN", "not a Bearer token")
    token = token.strip()
    if not token or not token.isascii():
        raise TokenFault("MALFORMED", "empty or non-ASCII token")
    return token.decode("ascii")


def _session_headers(v: Validated) -> Headers:
    return [(b"x-session-subject", v.sub.encode("utf-8", "replace")), (b"x-session-id", v.sid.encode()),
            (b"x-session-expires", str(v.expires_at).encode()), _NO_STORE]  # fmt: skip


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class AdminApp:
    def __init__(self, service: SessionService, oidc: Any | None) -> None:
        self.service = service
        self.oidc = oidc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = scope["method"]
        seg = _segments(scope)
        try:
            if seg == ["v1", "sessions"] and method == "POST":
                issued = await self.service.issue(await _read_json(receive), _context(scope))
                await _json(send, 201, {"token": issued.token, "session_id": issued.session_id,
                                        "expires_at": issued.expires_at})  # fmt: skip
            elif seg == ["v1", "sessions", "oidc"] and method == "POST":
                await self.exchange(scope, receive, send)
            elif len(seg) == 3 and seg[:2] == ["v1", "sessions"] and method == "DELETE":
                await self.service.revoke_session(seg[2])
                await _send(send, 204, [])
            elif len(seg) == 4 and seg[:2] == ["v1", "subjects"] and seg[3] == "revoke" and method == "POST":
                await self.service.revoke_subject(seg[2])
                await _send(send, 204, [])
            elif len(seg) == 4 and seg[:2] == ["v1", "subjects"] and seg[3] == "sessions" and method == "GET":
                await _json(send, 200, await self.service.list_sessions(seg[2]))
            elif seg[:1] == ["v1"]:
                await _error(send, 404 if method in ("GET", "POST", "DELETE") else 405, "not_found",
                             f"no admin endpoint {method} {scope['path'][:100]}")  # fmt: skip
            else:
                await _error(send, 404, "not_found", "unknown path")
        except BadRequest as exc:
            await _error(send, exc.status, exc.error, exc.detail)
        except TokenFault as exc:
            await _error(send, exc.status, exc.code, exc.detail or exc.fault.meaning,
                         [(b"x-session-fault", exc.code.encode())])  # fmt: skip

    async def exchange(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_json(receive)
        if self.oidc is None:
            raise BadRequest("oidc_disabled", "identity-provider exchange is not configured (oidc.enabled)", 404)
        claims = await self.oidc.verify(body.get("id_token"))
        request: dict[str, Any] = {"sub": claims["sub"], "claims": {"idp": claims["iss"]}}
        for name in ("mode", "ttl", "bind_cidr", "user_agent"):
            if name in body:
                request[name] = body[name]
        issued = await self.service.issue(request, _context(scope))
        self.service.log.audit("oidc_exchange", issuer=claims["iss"], subject=self.service.log.hid(claims["sub"]))
        await _json(send, 201, {"token": issued.token, "session_id": issued.session_id,
                                "expires_at": issued.expires_at})  # fmt: skip
