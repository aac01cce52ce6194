"""The daemon's configuration: a TOML file, every key overridable by ``OSTIARY_<SECTION>__<KEY>``.

Invalid values are refused at start-up with a message naming the setting, never at request time.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

MAX_CLOCK_SKEW = 300  # seconds; RFC 8725 leaves it to us, the seed's drift budget is 300 s
MAX_CACHE_TTL = 5.0

Algorithm = Literal["ES256", "RS256", "EdDSA", "HS256"]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the setting and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_listen(value: str) -> str:
    if value.startswith("unix:"):
        if not value[5:].startswith("/"):
            raise ValueError("a unix listen address needs an absolute path: unix:/run/ostiary/x.sock")
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT or unix:/path, got {value!r}")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError as exc:
        if host != "localhost":
            raise ValueError(f"listen host must be an IP address, got {host!r}") from exc
    return value


class ServerSettings(_Section):
    listen: str = "127.0.0.1:8700"
    admin_listen: str = "unix:/run/ostiary/admin.sock"
    workers: int = Field(1, ge=1, le=256)
    socket_mode: str = "0660"
    drain_timeout: float = Field(10.0, ge=0, le=300)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""

    _listen = field_validator("listen", "admin_listen")(_check_listen)

    @field_validator("socket_mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        try:
            mode = int(value, 8)
        except ValueError as exc:
            raise ValueError(f"socket_mode must be octal like '0660', got {value!r}") from exc
        if mode & 0o007:
            raise ValueError("socket_mode must not give 'other' any access")
        return value

    @model_validator(mode="after")
    def _tls(self) -> ServerSettings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        if self.tls_cert_file and self.listen.startswith("unix:"):
            raise ValueError("TLS applies to a TCP listen address, not a unix socket")
        return self


class TokenSettings(_Section):
    issuer: str = "https://sessions.example.internal"
    audience: list[str] = Field(default_factory=lambda: ["api"], min_length=1)
    mode: Literal["jwt", "opaque"] = "jwt"
    algorithm: Algorithm = "ES256"
    ttl: int = Field(900, ge=1, le=86400 * 30)
    idle_timeout: int = Field(1800, ge=1)
    absolute_timeout: int = Field(43200, ge=1)
    clock_skew: int = Field(60, ge=0)

    @field_validator("clock_skew")
    @classmethod
    def _skew(cls, value: int) -> int:
        if value > MAX_CLOCK_SKEW:
            raise ValueError(f"clock_skew {value} s exceeds the hard maximum of {MAX_CLOCK_SKEW} s")
        return value

    @model_validator(mode="after")
    def _timeouts(self) -> TokenSettings:
        if self.idle_timeout > self.absolute_timeout:
            raise ValueError("idle_timeout must not exceed absolute_timeout")
        if self.ttl > self.absolute_timeout:
            raise ValueError("ttl must not exceed absolute_timeout: no session outlives it")
        return self


class KeySettings(_Section):
    dir: Path = Path("/etc/ostiary/keys")
    passphrase_env: str = "OSTIARY_KEYS_PASSPHRASE"  # noqa: S105 - a variable name


class StoreSettings(_Section):
    sessions_url: str = "redis://127.0.0.1:6379/0"
    revocations_url: str = "redis://127.0.0.1:6380/0"
    username: str = ""
    password_file: str = ""
    timeout: float = Field(0.25, gt=0, le=10)
    pool_size: int = Field(64, ge=1, le=10000)
    warm_connections: int = Field(4, ge=0, le=10000)
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    latency_budget_ms: float = Field(5.0, gt=0)

    @field_validator("sessions_url", "revocations_url")
    @classmethod
    def _url(cls, value: str) -> str:
        # Sentinel and Cluster (redis-py has both) are not wired up yet: refuse rather than misbehave.
        schemes = ("redis://", "rediss://", "unix://")
        if not value.startswith(schemes):
            raise ValueError(f"store URL must start with one of {', '.join(schemes)} (Sentinel and Cluster "
                             "are not supported yet)")
        tls_options = sorted(k for k, _ in parse_qsl(urlsplit(value).query) if k.lower().startswith("ssl"))
        if tls_options:
            raise ValueError(f"TLS options in the store URL ({', '.join(tls_options)}) are not used: set "
                             "store.tls_ca_file, store.tls_cert_file and store.tls_key_file instead")
        return value

    @model_validator(mode="after")
    def _warm_within_pool(self) -> StoreSettings:
        if self.warm_connections > self.pool_size:
            raise ValueError(f"warm_connections ({self.warm_connections}) must not exceed pool_size ({self.pool_size})")
        return self


class CacheSettings(_Section):
    ttl: float = Field(2.0, ge=0)
    max_entries: int = Field(100_000, ge=1)

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: float) -> float:
        if value > MAX_CACHE_TTL:
            raise ValueError(f"cache ttl {value} s exceeds the maximum of {MAX_CACHE_TTL} s")
        return value


class ClockSettings(_Section):
    check: Literal["chrony", "timedatectl", "none"] = "chrony"
    chronyc_socket: str = ""
    max_offset: float = Field(1.0, gt=0)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    salt_file: str = "/etc/ostiary/log-salt"


class OidcSettings(_Section):
    enabled: bool = False
    issuer: str = ""
    audience: str = ""
    jwks_url: str = ""
    jwks_file: str = ""
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])
    jwks_cache_ttl: int = Field(300, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> OidcSettings:
        if self.enabled:
            if not self.issuer or not self.audience:
                raise ValueError("oidc.enabled needs oidc.issuer and oidc.audience")
            if not (self.jwks_url or self.jwks_file):
                raise ValueError("oidc.enabled needs oidc.jwks_url or oidc.jwks_file")
            if any(a.upper().startswith("HS") or a == "none" for a in self.algorithms):
                raise ValueError("oidc.algorithms may list only asymmetric algorithms")
        return self


class Settings(BaseSettings):
    """The whole configuration; see docs/configuration.md for every key and its default."""

    model_config = SettingsConfigDict(
        env_prefix="OSTIARY_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerSettings = Field(default_factory=lambda: ServerSettings())
    tokens: TokenSettings = Field(default_factory=lambda: TokenSettings())
    keys: KeySettings = Field(default_factory=lambda: KeySettings())
    store: StoreSettings = Field(default_factory=lambda: StoreSettings())
    cache: CacheSettings = Field(default_factory=lambda: CacheSettings())
    clock: ClockSettings = Field(default_factory=lambda: ClockSettings())
    log: LogSettings = Field(default_factory=lambda: LogSettings())
    oidc: OidcSettings = Field(default_factory=lambda: OidcSettings())
    clients: dict[str, str] = Field(default_factory=dict)

    @field_validator("clients")
    @classmethod
    def _clients(cls, value: dict[str, str]) -> dict[str, str]:
        for client_id, digest in value.items():
            hexpart = digest.removeprefix("sha256:")
            if not digest.startswith("sha256:") or len(hexpart) != 64:
                raise ValueError(f"clients.{client_id} must be 'sha256:<64 hex digits>'")
            int(hexpart, 16)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings folds OSTIARY_* variables into the file's values itself (so a partial
        # section in the environment merges with the file instead of replacing it).
        return (init_settings,)


def _merge_env(data: dict[str, Any]) -> dict[str, Any]:
    """Fold OSTIARY_SECTION__KEY variables into the file's values so partial sections merge."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for name, raw in os.environ.items():
        if not name.startswith("OSTIARY_") or "__" not in name:
            continue
        section, _, key = name[len("OSTIARY_") :].lower().partition("__")
        if section not in Settings.model_fields or not key:
            continue
        value: Any = raw
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare string such as a URL
        merged.setdefault(section, {})[key] = value
    return merged


def load_settings(path: Path | None) -> Settings:
    """Read and validate the configuration; raise ConfigError with a readable message."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    try:
        return Settings.model_validate(_merge_env(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
