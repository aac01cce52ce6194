"""Gateway role on gateways, probed from another host over the private network (openssl as client)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from deploys import common

from .support import Node, https_request, other_node, peer_certificate, service_state, tls_handshake

pytestmark = pytest.mark.role(common.GROUP_GATEWAYS)

HSTS_MIN = 63072000  # two years (Mozilla modern)
MAX_CERT_DAYS = 90


def _server_name(node: Node) -> str:
    names = list(node.data.get("gateway_server_names") or [node.name])
    return str(names[0])


def _port(node: Node) -> int:
    return int(node.data.get("gateway_https_port") or common.GATEWAY_HTTPS_PORT)


def _prober(nodes: list[Node], node: Node) -> Node:
    return other_node(nodes, node, prefer_not_in=common.GROUP_GATEWAYS)


@pytest.mark.control("OST-GW-07")
def test_nginx_running(node: Node, evidence: Callable[[str], None]) -> None:
    active, enabled = service_state(node, "nginx.service")
    assert (active, enabled) == ("active", "enabled"), f"nginx.service is {active}/{enabled}"
    evidence("nginx.service active/enabled")


@pytest.mark.control("OST-GW-01")
def test_tls13_handshake(node: Node, nodes: list[Node], evidence: Callable[[str], None]) -> None:
    source = _prober(nodes, node)
    result = tls_handshake(source, node.address, _port(node), _server_name(node), "-tls1_3")
    assert result.ok and result.protocol == "TLSv1.3", (
        f"TLS 1.3 handshake from {source.name} failed: {result.output[-400:]}"
    )
    evidence(f"from {source.name}: {result.protocol} {result.cipher}")


@pytest.mark.control("OST-GW-02")
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_1", "-tls1"])
def test_old_tls_refused(node: Node, nodes: list[Node], version: str, evidence: Callable[[str], None]) -> None:
    source = _prober(nodes, node)
    # The client's own minimum must not hide the server's answer: allow old versions on our side.
    result = tls_handshake(
        source, node.address, _port(node), _server_name(node), version, "-cipher", "DEFAULT@SECLEVEL=0"
    )
    assert not result.ok, f"{version} handshake accepted from {source.name}: {result.protocol} {result.cipher}"
    reason = re.search(
        r"(alert [a-z ]+|no protocols available|unsupported protocol|wrong version number)", result.output
    )
    evidence(f"{version} from {source.name} refused ({reason.group(1) if reason else 'handshake failed'})")


@pytest.mark.control("OST-GW-03")
def test_cipher_suites(node: Node, nodes: list[Node], evidence: Callable[[str], None]) -> None:
    source = _prober(nodes, node)
    configured = str(node.data.get("gateway_tls_ciphersuites") or "").split(":")
    assert configured and configured != [""], "gateway_tls_ciphersuites is empty"
    all_suites = ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"]
    seen = []
    for suite in all_suites:
        result = tls_handshake(source, node.address, _port(node), _server_name(node), "-tls1_3", "-ciphersuites", suite)
        if suite in configured:
            assert result.ok and result.cipher == suite, f"{suite} (configured) refused: {result.output[-300:]}"
            seen.append(f"{suite} ok")
        else:
            assert not result.ok, f"{suite} accepted although not in gateway_tls_ciphersuites"
            seen.append(f"{suite} refused")
    evidence("; ".join(seen))


@pytest.mark.control("OST-GW-04")
def test_certificate(node: Node, nodes: list[Node], evidence: Callable[[str], None]) -> None:
    source = _prober(nodes, node)
    cert = x509.load_pem_x509_certificate(peer_certificate(source, node.address, _port(node), _server_name(node)))
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey), f"certificate key is {type(key).__name__}, not ECDSA"
    assert key.curve.name == "secp256r1", f"curve {key.curve.name}, not P-256"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    # Whole days, as Mozilla's profile counts them: issuers back-date notBefore by minutes for skew.
    assert lifetime.days <= MAX_CERT_DAYS, f"certificate valid for {lifetime} (more than {MAX_CERT_DAYS} days)"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert _server_name(node) in sans, f"{_server_name(node)} not in the certificate's names {sans}"
    evidence(f"ECDSA P-256, {lifetime.days} days, SANs {sans}, expires {cert.not_valid_after_utc:%Y-%m-%d}")


@pytest.mark.control("OST-GW-05")
def test_security_headers(node: Node, nodes: list[Node], evidence: Callable[[str], None]) -> None:
    source = _prober(nodes, node)
    response = https_request(source, node.address, _port(node), _server_name(node), "/")
    headers = response.headers
    hsts = headers.get("strict-transport-security", "")
    match = re.search(r"max-age=(\d+)", hsts)
    assert match and int(match.group(1)) >= HSTS_MIN, f"HSTS {hsts!r} (want max-age >= {HSTS_MIN})"
    assert headers.get("x-content-type-options") == "nosniff", (
        f"X-Content-Type-Options {headers.get('x-content-type-options')!r}"
    )
    csp = headers.get("content-security-policy", "")
    assert "frame-ancestors" in csp, f"Content-Security-Policy without frame-ancestors: {csp!r}"
    assert headers.get("referrer-policy"), "no Referrer-Policy"
    server = headers.get("server", "")
    assert not re.search(r"\d", server), f"Server header shows a version: {server!r}"
    evidence(f"HSTS {hsts}; CSP {csp}; Server {server!r} (status {response.status})")


@pytest.mark.control("OST-GW-06")
def test_requests_without_valid_token_refused(node: Node, nodes: list[Node], evidence: Callable[[str], None]) -> None:
    source = _prober(nodes, node)
    port, name = _port(node), _server_name(node)
    cases = {
        "no token": ({}, "MISSING_TOKEN"),
        "basic auth": ({"Authorization": "Basic dXNlcjpwYXNz"}, "MALFORMED"),
        "forged JWT": ({"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl"}, None),
    }
    seen = []
    for label, (headers, fault) in cases.items():
        response = https_request(source, node.address, port, name, "/compliance-probe", headers)
        assert response.status == 401, f"{label}: HTTP {response.status} {response.body[:200]!r}"
        got = response.headers.get("x-session-fault", "")
        if fault:
            assert got == fault, f"{label}: X-Session-Fault {got!r}, want {fault}"
        else:  # answered by the daemon, behind auth_request: any of its refusal codes
            assert got and got not in ("MISSING_TOKEN", "SESSIOND_UNAVAILABLE"), f"{label}: X-Session-Fault {got!r}"
        assert "placeholder upstream" not in response.body, f"{label}: protected content served"
        seen.append(f"{label} -> 401 {got}")
    evidence(f"from {source.name}: " + "; ".join(seen))
