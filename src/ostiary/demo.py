"""``ostiary demo``: the main job until the VM lab exists.

Starts a local hardened Redis pair and the session daemon, issues a JWT and an opaque session
through the admin API, validates them over real HTTP as nginx would, revokes one and shows the
refusal, then stops everything. Exit status 0 only if every step behaved as expected.
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .localstack import Daemon, LocalStack, StackError

ALGORITHMS = ("ES256", "RS256", "EdDSA", "HS256")


@dataclass
class Step:
    title: str
    ok: bool
    detail: str
    ms: float


class Demo:
    """Runs steps in order, timing each and printing one line per step as it happens."""

    def __init__(self, printer: Callable[[str], None] = print) -> None:
        self.steps: list[Step] = []
        self._print = printer

    def say(self, text: str) -> None:
        self._print(text)

    def record(self, title: str, ok: bool, detail: str, ms: float) -> bool:
        self.steps.append(Step(title, ok, detail, ms))
        mark = "ok  " if ok else "FAIL"
        self._print(f"[{len(self.steps):2d}] {mark} {title:<44} {ms:8.2f} ms  {detail}")
        return ok

    def expect(
        self,
        title: str,
        call: Callable[[], httpx.Response],
        status: int,
        fault: str | None = None,
    ) -> httpx.Response | None:
        """Run one HTTP call and check its status (and X-Session-Fault for refusals)."""
        started = time.perf_counter()
        try:
            response = call()
        except (httpx.HTTPError, OSError) as exc:
            self.record(title, False, f"no answer: {exc}", (time.perf_counter() - started) * 1000)
            return None
        ms = (time.perf_counter() - started) * 1000
        got_fault = response.headers.get("X-Session-Fault")
        ok = response.status_code == status and got_fault == fault
        detail = f"HTTP {response.status_code}"
        if got_fault:
            detail += f" X-Session-Fault: {got_fault}"
        if not ok:
            detail += f" (expected {status}{' ' + fault if fault else ''}): {response.text[:200]}"
        self.record(title, ok, detail, ms)
        return response

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)


def _tamper(token: str) -> str:
    """Change one character in the middle of the signature: well-formed, but forged."""
    head, payload, sig = token.split(".")
    i = len(sig) // 2
    swapped = "B" if sig[i] == "A" else "A"
    return f"{head}.{payload}.{sig[:i]}{swapped}{sig[i + 1 :]}"


def _issue(demo: Demo, daemon: Daemon, title: str, body: dict[str, Any]) -> dict[str, Any] | None:
    response = demo.expect(title, lambda: daemon.admin("POST", "/v1/sessions", json=body), 201)
    if response is None or response.status_code != 201:
        return None
    issued: dict[str, Any] = response.json()
    demo.say(f"       session_id={issued['session_id']} expires_at={issued['expires_at']} "
             f"token={issued['token'][:24]}... ({len(issued['token'])} chars)")  # fmt: skip
    return issued


def _session_headers(response: httpx.Response | None) -> str:
    if response is None:
        return ""
    names = ("X-Session-Subject", "X-Session-Id", "X-Session-Expires")
    return " ".join(f"{n}={response.headers[n]}" for n in names if n in response.headers)


def run(demo: Demo, algorithm: str) -> None:
    demo.say("ostiary demo: a local hardened Redis pair and the session daemon, real HTTP on 127.0.0.1")
    started = time.perf_counter()
    with LocalStack(algorithm=algorithm) as stack:
        sessions, revocations = stack.stores()
        ms = (time.perf_counter() - started) * 1000
        demo.record(f"generated {algorithm} signing key", bool(stack.kid), f"kid={stack.kid}", 0.0)
        for store in (sessions, revocations):
            admin = store.admin_client()
            try:
                cfg = admin.config_get("maxmemory-policy") | admin.config_get("appendfsync")
                default_refused = _default_user_refused(store.port)
            finally:
                admin.close()
            demo.record(
                f"redis {store.name} store on 127.0.0.1:{store.port}",
                default_refused,
                f"policy={cfg['maxmemory-policy']} appendfsync={cfg['appendfsync']} "
                f"acl: default user off, sessiond limited to ost:*",
                ms,
            )

        started = time.perf_counter()
        daemon = stack.daemon()
        demo.record("daemon answers GET /healthz", True, f"{daemon.base_url}, admin on {daemon.admin_socket}",
                    (time.perf_counter() - started) * 1000)  # fmt: skip
        demo.expect("GET /readyz (stores, keys)", lambda: daemon.get("/readyz"), 200)

        jwt_session = _issue(demo, daemon, "issue JWT session for alice", {"sub": "alice", "claims": {}})
        opaque_session = _issue(demo, daemon, "issue opaque session for bob",
                                {"sub": "bob", "claims": {}, "mode": "opaque"})  # fmt: skip
        if jwt_session is None or opaque_session is None:
            return
        jwt_token, opaque_token = jwt_session["token"], opaque_session["token"]

        response = demo.expect("validate JWT (cache miss)", lambda: daemon.validate(jwt_token), 200)
        demo.say(f"       {_session_headers(response)}")
        demo.expect("validate JWT again (cache hit)", lambda: daemon.validate(jwt_token), 200)
        response = demo.expect("validate opaque token", lambda: daemon.validate(opaque_token), 200)
        demo.say(f"       {_session_headers(response)}")
        demo.expect("request without a token", lambda: daemon.validate(None), 401, "MISSING_TOKEN")
        demo.expect("JWT with a forged signature", lambda: daemon.validate(_tamper(jwt_token)), 403, "SIG_MISMATCH")

        demo.expect(
            "revoke alice's session (admin API)",
            lambda: daemon.admin("DELETE", f"/v1/sessions/{jwt_session['session_id']}"),
            204,
        )
        demo.expect("validate the revoked JWT", lambda: daemon.validate(jwt_token), 403, "REVOKED")
        demo.expect("bob's opaque session is unaffected", lambda: daemon.validate(opaque_token), 200)

        started = time.perf_counter()
        code = daemon.stop()
        demo.record("daemon stopped (SIGTERM, drained)", code == 0, f"exit status {code}",
                    (time.perf_counter() - started) * 1000)  # fmt: skip
    demo.say("       Redis pair stopped, work directory removed")


def _default_user_refused(port: int) -> bool:
    """The unauthenticated default user must not be able to run anything: PING gets NOAUTH."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(256)
    except OSError:
        return False
    return reply.startswith(b"-NOAUTH")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ostiary demo", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="ES256", help="signing algorithm of the key")
    args = parser.parse_args(argv)
    demo = Demo()
    try:
        run(demo, args.algorithm)
    except StackError as exc:
        demo.record("local stack", False, str(exc)[:2000], 0.0)
    failed = [s for s in demo.steps if not s.ok]
    if demo.passed:
        print(f"demo: all {len(demo.steps)} steps behaved as expected")
        return 0
    print(f"demo: {len(failed)} of {len(demo.steps)} steps did not behave as expected")
    return 1
