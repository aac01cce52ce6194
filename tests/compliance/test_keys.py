"""Keys role on every host: who owns which secret, whether keys and certificates belong together.

Which files a host holds follows from its groups (the same rule the keys role applies). Private
keys never leave their host: their public halves are derived there with openssl and compared.
"""

from __future__ import annotations

import datetime
import json
import shlex
from collections.abc import Callable

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from deploys import common

from .support import Node, https_request

pytestmark = pytest.mark.role("all")

MIN_DAYS_LEFT = 14
JWKS_FILE = f"{common.ETC_DIR}/jwks.json"


def secret_files(node: Node) -> dict[str, str]:
    """Path -> owner of every private key or password this host must hold (all mode 0600)."""
    files: dict[str, str] = {}
    gateway = node.in_group(common.GROUP_GATEWAYS)
    session = node.in_group(common.GROUP_SESSION_NODES)
    redis = node.in_group(common.GROUP_REDIS_NODES)
    if gateway:
        files[common.GATEWAY_KEY] = "root"
        if not session:
            files[common.GATEWAY_CLIENT_KEY] = "root"
    if session:
        files[common.SESSIOND_REDIS_PASSWORD_FILE] = common.SESSIOND_USER
        if not redis:
            files[common.SESSIOND_REDIS_CLIENT_KEY] = common.SESSIOND_USER
        if not gateway:
            files[common.SESSIOND_SERVER_KEY] = common.SESSIOND_USER
    if redis:
        files[common.REDIS_SERVER_KEY] = common.REDIS_USER
    return files


def certificate_pairs(node: Node) -> dict[str, str]:
    """Certificate -> its private key, for this host's roles."""
    pairs = {
        common.GATEWAY_CERT: common.GATEWAY_KEY,
        common.GATEWAY_CLIENT_CERT: common.GATEWAY_CLIENT_KEY,
        common.SESSIOND_REDIS_CLIENT_CERT: common.SESSIOND_REDIS_CLIENT_KEY,
        common.SESSIOND_SERVER_CERT: common.SESSIOND_SERVER_KEY,
        common.REDIS_SERVER_CERT: common.REDIS_SERVER_KEY,
    }
    wanted = secret_files(node)
    return {cert: key for cert, key in pairs.items() if key in wanted}


def jwt_private_keys(node: Node) -> list[str]:
    return node.check(f"ls {common.KEYS_DIR}/*.key 2>/dev/null || true").split()


@pytest.mark.control("OST-KEY-01")
def test_secret_files_owner_and_mode(node: Node, evidence: Callable[[str], None]) -> None:
    wanted = secret_files(node)
    if node.in_group(common.GROUP_SESSION_NODES):
        keys = jwt_private_keys(node)
        assert keys, f"no JWT private key in {common.KEYS_DIR}"
        wanted.update({k: common.SESSIOND_USER for k in keys})
        keys_dir = node.host.file(common.KEYS_DIR)
        assert keys_dir.is_directory and keys_dir.user == common.SESSIOND_USER and keys_dir.mode == 0o700, (
            f"{common.KEYS_DIR}: {keys_dir.user} {oct(keys_dir.mode)}"
        )
    problems = []
    for path, owner in sorted(wanted.items()):
        f = node.host.file(path)
        if not f.exists:
            problems.append(f"{path} missing")
        elif (f.user, f.mode) != (owner, 0o600):
            problems.append(f"{path} {f.user} {oct(f.mode)} (want {owner} 0o600)")
    stray = node.check(f"find {common.ETC_DIR} -name '*.key' -perm /077 2>/dev/null || true").split()
    problems += [f"{path} readable by group/other" for path in stray]
    assert not problems, "; ".join(problems)
    evidence(f"{len(wanted)} secrets 0600 with their service's owner" + (f"; {common.KEYS_DIR} 0700" if
             node.in_group(common.GROUP_SESSION_NODES) else ""))  # fmt: skip


def _public_der_from_pem(pem: str) -> bytes:
    key = serialization.load_pem_public_key(pem.encode())
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _jwks_keys(text: str, where: str) -> dict[str, bytes]:
    keys = {}
    for jwk in json.loads(text).get("keys", []):
        public = jwt.PyJWK(jwk).key
        keys[str(jwk["kid"])] = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    assert keys, f"{where}: no keys in the JWKS"
    return keys


@pytest.mark.control("OST-KEY-02")
@pytest.mark.role(common.GROUP_SESSION_NODES)
def test_jwt_keys_match_jwks(node: Node, nodes: list[Node], evidence: Callable[[str], None]) -> None:
    published = {"distributed JWKS": _jwks_keys(node.check(f"cat {JWKS_FILE}"), JWKS_FILE)}
    gateways = [n for n in nodes if n.in_group(common.GROUP_GATEWAYS)]
    if gateways and gateways[0].data.get("gateway_publish_jwks", True):
        gw = gateways[0]
        name = str((gw.data.get("gateway_server_names") or [gw.name])[0])
        response = https_request(node, gw.address, int(gw.data.get("gateway_https_port") or 443), name,
                                 "/.well-known/jwks.json")  # fmt: skip
        assert response.status == 200, f"JWKS through {gw.name}: HTTP {response.status}"
        published[f"JWKS served through {gw.name}"] = _jwks_keys(response.body, f"{gw.name} JWKS")
    checked = 0
    for key_path in jwt_private_keys(node):
        kid = key_path.rsplit("/", 1)[1].removesuffix(".key")
        meta = json.loads(node.check(f"cat {shlex.quote(key_path[:-4] + '.json')}"))
        if meta.get("alg") == "HS256":
            continue  # a shared secret is never published
        derived = _public_der_from_pem(node.check(f"openssl pkey -in {shlex.quote(key_path)} -pubout"))
        for where, keys in published.items():
            if meta.get("state") == "retired" and kid not in keys:
                continue  # past verify_until: dropped from the JWKS on purpose
            assert kid in keys, f"{kid} ({meta.get('state')}) is not in the {where}"
            assert keys[kid] == derived, f"{kid}: private key does not match the {where} (SIG_MISMATCH)"
        checked += 1
    assert checked, "no asymmetric JWT key to check"
    evidence(f"{checked} JWT key(s) match the " + " and the ".join(published))


@pytest.mark.control("OST-KEY-03")
def test_certificates_match_keys_and_chain(node: Node, evidence: Callable[[str], None]) -> None:
    problems, seen = [], []
    for cert, key in certificate_pairs(node).items():
        cert_pub = node.run(f"openssl x509 -in {cert} -noout -pubkey").stdout.strip()
        key_pub = node.run(f"openssl pkey -in {key} -pubout").stdout.strip()
        if not cert_pub or cert_pub != key_pub:
            problems.append(f"{cert} does not match {key}")
        verify = node.run(f"openssl verify -CAfile {common.TLS_CA_CERT} {cert}")
        if verify.rc != 0:
            problems.append(f"{cert} does not chain to {common.TLS_CA_CERT}: {verify.stdout.strip()[-160:]}")
        seen.append(cert.rsplit("/", 1)[1])
    assert not problems, "; ".join(problems)
    evidence(f"{', '.join(seen) or 'CA only'}: key pairs match, issued by the internal CA")


@pytest.mark.control("OST-KEY-04")
def test_certificates_not_expiring(node: Node, evidence: Callable[[str], None]) -> None:
    certs = [common.TLS_CA_CERT, *certificate_pairs(node)]
    lines = []
    now = datetime.datetime.now(datetime.UTC)
    for cert in certs:
        end = node.check(f"openssl x509 -in {cert} -noout -enddate").strip().removeprefix("notAfter=")
        expires = datetime.datetime.strptime(end, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=datetime.UTC)
        days = (expires - now).days
        assert days >= MIN_DAYS_LEFT, f"{cert} expires in {days} days ({end}): renewal has failed"
        lines.append(f"{cert.rsplit('/', 1)[1]} {days} d")
    evidence(", ".join(lines))
