"""Fault codes: what each refusal means, its HTTP status and the remedy an operator reads.

One table for the HTTP answers, the metrics labels, the logs and docs/runbooks.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Fault:
    code: str
    status: int
    meaning: str
    remedy: str


_TABLE: Final = (
    Fault("MISSING_TOKEN", 401, "no Authorization: Bearer header", "send the session token as a Bearer token"),
    Fault("MALFORMED", 401, "the token is not a well-formed JWT or opaque token",
          "issue a new session; check the client does not truncate or re-encode the token"),
    Fault("JWT_EXPIRED", 401, "exp (plus the allowed clock skew) has passed",
          "issue a new session; if tokens expire early, check the clocks (ostiary doctor: CLOCK_*)"),
    Fault("NOT_YET_VALID", 401, "nbf or iat lies further in the future than the clock skew allows",
          "check the issuer's and this host's clocks (ostiary doctor: CLOCK_UNSYNCED, CLOCK_SKEW_STORE)"),
    Fault("INVALID_ISSUER", 401, "iss is not exactly tokens.issuer",
          "tokens.issuer must match on issuer and validators"),
    Fault("INVALID_AUDIENCE", 401, "aud does not contain one of tokens.audience",
          "issue the token for this API's audience, or add the audience to tokens.audience"),
    Fault("UNKNOWN_KID", 401, "no loaded key has this kid",
          "distribute the signing key's public part (JWKS) to every validator, then SIGHUP; "
          "a retired key past verify_until is gone on purpose"),
    Fault("ALG_NOT_ALLOWED", 401, "the header's alg is not the one algorithm bound to the key",
          "nothing to fix on the server: the token was forged or built for another key"),
    Fault("SESSION_UNKNOWN", 401, "no session record for this opaque token (never issued, expired or evicted)",
          "log in again; frequent cases after load peaks mean the session store evicts (raise maxmemory)"),
    Fault("SESSION_IDLE_TIMEOUT", 401, "the opaque session was idle longer than tokens.idle_timeout", "log in again"),
    Fault("BINDING_MISMATCH", 401, "the request comes from outside the session's bind_cidr",
          "log in again from the new network, or issue sessions with a wider bind_cidr"),
    Fault("SIG_MISMATCH", 403, "the signature does not verify with the key named by kid",
          "if valid tokens fail: the distributed public key does not match the private key "
          "(ostiary doctor: KEY_MISMATCH); otherwise the token was tampered with"),
    Fault("REVOKED", 403, "the session or all of its subject's sessions were revoked", "log in again"),
    Fault("REDIS_CONN_REFUSED", 503, "a store cannot be reached; fail-closed",
          "start or fix the Redis instance (ostiary doctor: STORE_UNREACHABLE); check ACL user and TLS files"),
    Fault("SESSION_STORE_LATENCY", 503, "a store answered slower than store.timeout; fail-closed",
          "check Redis latency (LATENCY DOCTOR, ostiary doctor: STORE_LATENCY), network and CPU load"),
)  # fmt: skip

FAULTS: Final[dict[str, Fault]] = {f.code: f for f in _TABLE}


class TokenFault(Exception):
    """A validation refusal carrying its fault code."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(detail or code)
        self.fault = FAULTS[code]
        self.detail = detail

    @property
    def code(self) -> str:
        return self.fault.code

    @property
    def status(self) -> int:
        return self.fault.status
