"""``ostiary doctor``: the troubleshooting matrix. Each failing check prints its fault code and remedy."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from .clock import clock_status
from .config import ConfigError, Settings, load_settings
from .faults import TokenFault
from .keys import KeyFileError, _load_one, _read_metas
from .sessiond.obs import Metrics
from .sessiond.server import STARTUP_STORE_TIMEOUT
from .sessiond.store import Stores

ENTROPY_MINIMUM = 256
CERT_MIN_DAYS = 14
LATENCY_SAMPLES = 200


@dataclass(frozen=True)
class Check:
    code: str
    ok: bool
    detail: str
    remedy: str = ""


REMEDIES = {
    "CONFIG_INVALID": "fix the named setting in the config file or its OSTIARY_* override",
    "CLOCK_UNSYNCED": "start chrony (systemctl enable --now chrony), check its sources with "
    "`chronyc sources -v` and that UDP 123 to them is allowed",
    "CLOCK_SKEW_STORE": "synchronise this host and the Redis host to the same NTP sources",
    "ENTROPY_LOW": "the kernel's entropy pool is low: check the RNG source (virtio-rng in VMs, haveged is not needed "
    "on kernels >= 5.6)",
    "STORE_UNREACHABLE": "start the Redis instance; check store URL, ACL user/password file, TLS files and firewall",
    "STORE_LATENCY": "store P99 above the budget: check Redis LATENCY DOCTOR, CPU steal, network path and AOF fsync",
    "STORE_EVICTION": "set `maxmemory-policy noeviction` on the revocation store and restart it",
    "KEY_PERMISSIONS": "chmod 0600 the private key file and chown it to the daemon's user",
    "KEY_MISMATCH": "the private key does not match its published public key or kid: redistribute the key pair "
    "from the control node (SIG_MISMATCH)",
    "KEY_MISSING": "generate keys with `ostiary keys generate --dir DIR` and keep exactly one active",
    "TLS_CERT_EXPIRY": "renew the certificate (the bundle renews at < 30 days); "
    f"it must be valid >= {CERT_MIN_DAYS} days",
}


def check_clock(settings: Settings) -> Check:
    status = clock_status(settings.clock)
    return Check("CLOCK_UNSYNCED", status.synchronised, status.detail)


def check_entropy() -> Check:
    try:
        value = int(Path("/proc/sys/kernel/random/entropy_avail").read_text())
    except (OSError, ValueError) as exc:
        return Check("ENTROPY_LOW", False, f"cannot read entropy_avail: {exc}")
    return Check("ENTROPY_LOW", value >= ENTROPY_MINIMUM, f"entropy_avail = {value} (minimum {ENTROPY_MINIMUM})")


def check_keys(settings: Settings) -> list[Check]:
    directory = Path(settings.keys.dir)
    try:
        metas = _read_metas(directory) if directory.is_dir() else []
    except KeyFileError as exc:
        return [Check("KEY_MISSING", False, str(exc))]
    actives = [m for m in metas if m.state == "active"]
    checks = [Check("KEY_MISSING", len(actives) == 1, f"{len(metas)} key(s) in {directory}, {len(actives)} active")]
    passphrase = os.environ.get(settings.keys.passphrase_env)
    for meta in metas:
        key_path = directory / f"{meta.kid}.key"
        if not key_path.exists():
            checks.append(Check("KEY_MISSING", False, f"{key_path.name} missing"))
            continue
        mode = stat.S_IMODE(key_path.stat().st_mode)
        checks.append(Check("KEY_PERMISSIONS", not mode & 0o077, f"{key_path.name} mode {mode:04o}"))
        if mode & 0o077:
            continue
        try:
            _load_one(directory, meta, passphrase.encode() if passphrase else None)
            checks.append(Check("KEY_MISMATCH", True, f"{meta.kid[:12]}… ({meta.alg}, {meta.state}) matches"))
        except KeyFileError as exc:
            checks.append(Check("KEY_MISMATCH", False, str(exc)))
    return checks


def check_certificates(settings: Settings) -> list[Check]:
    checks = []
    now = dt.datetime.now(dt.UTC)
    for label, path in (("store CA", settings.store.tls_ca_file), ("store client cert", settings.store.tls_cert_file)):
        if not path:
            continue
        try:
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            checks.append(Check("TLS_CERT_EXPIRY", False, f"{label} {path}: unreadable ({exc})"))
            continue
        days = (cert.not_valid_after_utc - now).total_seconds() / 86400
        checks.append(Check("TLS_CERT_EXPIRY", days >= CERT_MIN_DAYS, f"{label} expires in {days:.1f} days"))
    return checks


async def check_stores(settings: Settings) -> list[Check]:
    stores = Stores(settings.store, Metrics())
    checks = []
    budget = settings.store.latency_budget_ms
    try:
        for store in ("sessions", "revocations"):
            try:
                # The first ping opens the connection (TLS included): not a latency sample.
                await stores.ping(store, STARTUP_STORE_TIMEOUT)
            except TokenFault as exc:
                checks.append(Check("STORE_UNREACHABLE", False, f"{store} store: {exc.code}: {exc.detail}"))
                continue
            checks.append(Check("STORE_UNREACHABLE", True, f"{store} store answers"))
            samples = []
            for _ in range(LATENCY_SAMPLES):
                started = time.perf_counter()
                await stores.ping(store)
                samples.append((time.perf_counter() - started) * 1000)
            p99 = statistics.quantiles(samples, n=100)[98]
            checks.append(Check("STORE_LATENCY", p99 <= budget,
                                f"{store} store PING P99 {p99:.3f} ms (budget {budget} ms)"))  # fmt: skip
            server = await stores.server_time(store)
            skew = server - time.time()
            checks.append(Check("CLOCK_SKEW_STORE", abs(skew) <= settings.clock.max_offset,
                                f"{store} store clock {skew:+.3f} s from ours (max {settings.clock.max_offset} s)"))
            if store == "revocations":
                policy = await stores.eviction_policy(store)
                checks.append(Check("STORE_EVICTION", policy == "noeviction", f"revocation store policy {policy}"))
    except TokenFault as exc:
        checks.append(Check("STORE_UNREACHABLE", False, f"{exc.code}: {exc.detail}"))
    finally:
        await stores.close()
    return checks


def run_checks(settings: Settings) -> list[Check]:
    checks = [check_clock(settings), check_entropy()]
    checks += asyncio.run(check_stores(settings))
    checks += check_keys(settings)
    checks += check_certificates(settings)
    return checks


def run_doctor(config: Path) -> int:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        checks = [Check("CONFIG_INVALID", False, str(exc))]
    else:
        checks = [Check("CONFIG_INVALID", True, f"{config} is valid"), *run_checks(settings)]
    failed = 0
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        print(f"{mark} {check.code:18} {check.detail}")
        if not check.ok:
            failed += 1
            print(f"     remedy: {REMEDIES.get(check.code, 'see docs/runbooks.md')}")
    print(f"\n{len(checks) - failed} passed, {failed} failed", file=sys.stderr if failed == 0 else sys.stdout)
    return 1 if failed else 0
