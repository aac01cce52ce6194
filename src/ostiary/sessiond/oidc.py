"""Identity-provider exchange: verify an OIDC ID token against its issuer's JWKS."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt as pyjwt

from ..config import OidcSettings
from .service import BadRequest

MAX_JWKS_BYTES = 256 * 1024


class JwksSource:
    """The issuer's keys from a local file or a URL, cached for ``jwks_cache_ttl`` seconds."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._keys: dict[str, Any] = {}
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    def _load_sync(self) -> dict[str, Any]:
        if self.settings.jwks_file:
            raw = Path(self.settings.jwks_file).read_bytes()[:MAX_JWKS_BYTES]
        else:
            if not self.settings.jwks_url.startswith(("https://", "http://")):
                raise ValueError("oidc.jwks_url must be an http(s) URL")
            request = urllib.request.Request(self.settings.jwks_url, headers={"Accept": "application/json"})  # noqa: S310
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - configured URL
                raw = response.read(MAX_JWKS_BYTES)
        data = json.loads(raw)
        keys = {}
        for jwk in pyjwt.PyJWKSet.from_dict(data).keys:
            if jwk.key_id and jwk.algorithm_name in self.settings.algorithms:
                keys[jwk.key_id] = jwk
        return keys

    async def key(self, kid: str) -> Any:
        async with self._lock:
            stale = time.monotonic() - self._fetched > self.settings.jwks_cache_ttl
            # An unknown kid refetches (the issuer may have rotated), but not more than once a second.
            if stale or (kid not in self._keys and time.monotonic() - self._fetched > 1.0):
                self._keys = await asyncio.to_thread(self._load_sync)
                self._fetched = time.monotonic()
        return self._keys.get(kid)


class OidcVerifier:
    def __init__(self, settings: OidcSettings, clock_skew: int) -> None:
        self.settings = settings
        self.clock_skew = clock_skew
        self.jwks = JwksSource(settings)

    async def verify(self, id_token: object) -> dict[str, Any]:
        if not isinstance(id_token, str) or not 10 < len(id_token) < 16384:
            raise BadRequest("invalid_id_token", "id_token must be a compact JWT string")
        try:
            header = pyjwt.get_unverified_header(id_token)
        except pyjwt.PyJWTError as exc:
            raise BadRequest("invalid_id_token", "id_token is not a JWT") from exc
        if any(name in header for name in ("jwk", "jku", "x5u", "x5c", "crit")):
            raise BadRequest("invalid_id_token", "id_token header may not carry or point to keys")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise BadRequest("invalid_id_token", "id_token has no kid")
        try:
            jwk = await self.jwks.key(kid)
        except (OSError, ValueError, pyjwt.PyJWTError) as exc:
            raise BadRequest("jwks_unavailable", f"the issuer's JWKS cannot be read: {exc}", status=503) from exc
        if jwk is None:
            raise BadRequest("invalid_id_token", "unknown kid for this issuer")
        try:
            claims: dict[str, Any] = pyjwt.decode(
                id_token, jwk.key, algorithms=[jwk.algorithm_name], audience=self.settings.audience,
                issuer=self.settings.issuer, leeway=self.clock_skew,
                options={"require": ["iss", "sub", "aud", "exp", "iat"]},
            )  # fmt: skip
        except pyjwt.PyJWTError as exc:
            raise BadRequest("invalid_id_token", f"id_token refused: {exc}", status=401) from exc
        return claims
