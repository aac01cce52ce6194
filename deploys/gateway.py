"""Gateway role: nginx terminating TLS 1.3 and asking the session daemon about every request.

Protected locations go through ``auth_request`` to the daemon's ``/v1/validate`` over a keep-alive
upstream: the daemon's unix socket when it runs on the same host, mutual TLS to the session nodes
otherwise. A malformed or missing ``Authorization`` header is refused by nginx before the daemon is
asked; a daemon that answers 503 or cannot be reached gives the client 503, never the content.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.hardware import Cpus
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from deploys import common
from deploys.render import render

NGINX_CONF: Final = "/etc/nginx/nginx.conf"
PROXY_PARAMS: Final = "/etc/nginx/ostiary-proxy.conf"
SESSIOND_PARAMS: Final = "/etc/nginx/ostiary-sessiond.conf"
UNIT_OVERRIDE: Final = "/etc/systemd/system/nginx.service.d/ostiary.conf"
SESSIOND_TLS_NAME: Final = "sessiond"  # the name the gateway expects in a session node's certificate
FD_PER_CONNECTION: Final = 2  # a proxied request holds the client and the upstream socket

DEFAULTS: dict[str, Any] = {
    "gateway_server_names": ["api.example.internal"],
    "gateway_listen_addresses": ["0.0.0.0", "[::]"],
    "gateway_https_port": common.GATEWAY_HTTPS_PORT,
    "gateway_upstream": "http://127.0.0.1:8080",
    "gateway_placeholder_port": 8080,
    "gateway_tls_ciphersuites": "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
    "gateway_tls_curves": "X25519:prime256v1:secp384r1",
    "gateway_cert_days": 90,
    "gateway_hsts_max_age": 63072000,
    "gateway_content_security_policy": "default-src 'none'; frame-ancestors 'none'",
    "gateway_referrer_policy": "no-referrer",
    "gateway_resolver": "127.0.0.1",
    "gateway_worker_processes": 0,
    "gateway_worker_connections": 4096,
    "gateway_request_rate": "50r/s",
    "gateway_request_burst": 100,
    "gateway_issue_location": "/login",
    "gateway_issue_rate": "5r/s",
    "gateway_issue_burst": 10,
    "gateway_connections_per_ip": 100,
    "gateway_client_max_body_size": "1m",
    "gateway_large_header_buffer": "8k",
    "gateway_max_token_length": 4096,
    "gateway_client_timeout": 10,
    "gateway_keepalive_timeout": 15,
    "gateway_app_timeout": 30,
    "gateway_app_connect_timeout": 2,
    "gateway_app_keepalive": 16,
    "gateway_sessiond_timeout": 2,
    "gateway_sessiond_connect_timeout": 1,
    "gateway_sessiond_keepalive": 32,
    "gateway_forward_authorization": False,
    "gateway_publish_jwks": True,
    "gateway_nginx_user": common.NGINX_USER,
    "gateway_apparmor_profile": "ostiary-nginx",
    "sessiond_port": common.SESSIOND_PORT,
    "sessiond_server_tls": True,
}

SETTINGS_DOC: dict[str, str] = {
    "gateway_server_names": "Host names the gateway answers to; also the SANs of its certificate.",
    "gateway_listen_addresses": "Addresses nginx listens on for HTTPS (IPv6 in brackets).",
    "gateway_https_port": "HTTPS port of the gateway (the firewall opens the same port).",
    "gateway_upstream": "The protected application, as scheme://host:port; the default is the "
    "built-in placeholder on 127.0.0.1.",
    "gateway_placeholder_port": "Loopback port of the placeholder application (served only while "
    "gateway_upstream points at it).",
    "gateway_tls_ciphersuites": "TLS 1.3 cipher suites (OpenSSL Ciphersuites syntax, colon separated).",
    "gateway_tls_curves": "Key-exchange groups offered (Mozilla modern: X25519, P-256, P-384).",
    "gateway_cert_days": "Lifetime of the gateway certificate issued by the internal CA (at most 90).",
    "gateway_hsts_max_age": "Strict-Transport-Security max-age in seconds (two years).",
    "gateway_content_security_policy": "Content-Security-Policy header sent on every response.",
    "gateway_referrer_policy": "Referrer-Policy header sent on every response.",
    "gateway_resolver": "DNS resolver nginx uses for OCSP stapling (only when the certificate names "
    "an OCSP responder).",
    "gateway_worker_processes": "nginx worker processes; 0 means one per CPU of the host.",
    "gateway_worker_connections": "Connections per nginx worker; worker_rlimit_nofile and LimitNOFILE follow from it.",
    "gateway_request_rate": "Per-client request rate on the whole gateway (nginx limit_req rate).",
    "gateway_request_burst": "Requests a client may exceed the rate by before getting 429.",
    "gateway_issue_location": "The application's login route that issues sessions (rate-limited "
    "harder, not behind auth_request).",
    "gateway_issue_rate": "Per-client request rate on the session issuance route.",
    "gateway_issue_burst": "Burst allowed on the session issuance route before 429.",
    "gateway_connections_per_ip": "Concurrent connections allowed per client address.",
    "gateway_client_max_body_size": "Largest request body accepted (nginx size syntax).",
    "gateway_large_header_buffer": "Size of each of the 4 buffers for long request headers; "
    "bounds the longest header line.",
    "gateway_max_token_length": "Longest bearer token nginx passes on; longer ones are MALFORMED.",
    "gateway_client_timeout": "Seconds a client may take to send headers or body, or to read.",
    "gateway_keepalive_timeout": "Seconds an idle client connection stays open.",
    "gateway_app_timeout": "Seconds the gateway waits on the application.",
    "gateway_app_connect_timeout": "Seconds to connect to the application.",
    "gateway_app_keepalive": "Idle keep-alive connections kept to the application per worker.",
    "gateway_sessiond_timeout": "Seconds the gateway waits for the daemon's answer (then 503).",
    "gateway_sessiond_connect_timeout": "Seconds to connect to the daemon (then the next session node, or 503).",
    "gateway_sessiond_keepalive": "Idle keep-alive connections kept to the daemon per worker.",
    "gateway_forward_authorization": "Pass the bearer token on to the application (default: only "
    "X-Session-Subject is passed).",
    "gateway_publish_jwks": "Serve the daemon's /.well-known/jwks.json through the gateway.",
    "gateway_nginx_user": "User of the nginx worker processes.",
    "gateway_apparmor_profile": "AppArmor profile named in nginx's unit drop-in; '' omits it.",
    "sessiond_port": "TCP port of the daemon's public API on a session node (mutual TLS from gateways on other hosts).",
    "sessiond_server_tls": "Talk to session nodes on other hosts over mutual TLS (must match the "
    "session nodes' setting of the same name).",
}


def has_ocsp_responder(cert_pem: bytes) -> bool:
    """OCSP stapling only makes sense when the certificate names a responder to ask."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return False
    return any(d.access_method == AuthorityInformationAccessOID.OCSP for d in aia)


def worker_processes(data: Any, cpus: int) -> int:
    configured = int(data.gateway_worker_processes)
    return configured if configured > 0 else max(1, cpus)


def _sessiond_servers(data: Any, facts: Mapping[str, Any]) -> tuple[list[str], bool]:
    """The daemon(s) to ask and whether that is over mutual TLS (i.e. on another host)."""
    if common.GROUP_SESSION_NODES in facts["groups"]:
        return [f"unix:{common.host_path(data, common.SESSIOND_SOCKET)}"], False
    nodes = list(facts["peers"].get(common.GROUP_SESSION_NODES, []))
    if not nodes:
        raise ValueError("a gateway needs at least one host in the session_nodes group")
    port = int(data.sessiond_port)
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in nodes], bool(data.sessiond_server_tls)


def _app(data: Any) -> tuple[str, list[str], bool]:
    url = urlsplit(str(data.gateway_upstream))
    if url.scheme not in ("http", "https") or not url.netloc or url.path not in ("", "/"):
        raise ValueError(f"gateway_upstream must look like http://host:port, not {data.gateway_upstream!r}")
    placeholder = url.netloc == f"127.0.0.1:{int(data.gateway_placeholder_port)}"
    return url.scheme, [url.netloc], placeholder


def context(data: Any, facts: Mapping[str, Any]) -> dict[str, Any]:
    """Template context from host data and facts (``cpus``, ``groups``, ``peers``, ``ocsp_responder``)."""
    if int(data.gateway_cert_days) > 90:
        raise ValueError("gateway_cert_days must be at most 90 (Mozilla modern profile)")
    workers = worker_processes(data, int(facts["cpus"]))
    connections = int(data.gateway_worker_connections)
    sessiond_servers, sessiond_tls = _sessiond_servers(data, facts)
    app_scheme, app_servers, placeholder = _app(data)
    rlimit = connections * FD_PER_CONNECTION
    return {
        "nginx_user": str(data.gateway_nginx_user),
        "worker_processes": workers,
        "worker_connections": connections,
        "worker_rlimit_nofile": rlimit,
        "limit_nofile": rlimit * workers + 1024,  # all workers plus the master's own files
        "pid_file": common.host_path(data, "/run/nginx.pid"),
        "error_log": common.host_path(data, "/var/log/nginx/error.log"),
        "access_log": common.host_path(data, "/var/log/nginx/access.log"),
        "temp_dir": common.host_path(data, "/var/lib/nginx"),
        "proxy_params": common.host_path(data, PROXY_PARAMS),
        "sessiond_params": common.host_path(data, SESSIOND_PARAMS),
        "client_max_body_size": str(data.gateway_client_max_body_size),
        "large_header_buffer": str(data.gateway_large_header_buffer),
        "max_token_length": int(data.gateway_max_token_length),
        "client_timeout": int(data.gateway_client_timeout),
        "keepalive_timeout": int(data.gateway_keepalive_timeout),
        "request_rate": str(data.gateway_request_rate),
        "request_burst": int(data.gateway_request_burst),
        "issue_location": str(data.gateway_issue_location),
        "issue_rate": str(data.gateway_issue_rate),
        "issue_burst": int(data.gateway_issue_burst),
        "connections_per_ip": int(data.gateway_connections_per_ip),
        "tls_ciphersuites": str(data.gateway_tls_ciphersuites),
        "tls_curves": str(data.gateway_tls_curves),
        "ocsp_stapling": bool(facts.get("ocsp_responder", False)),
        "resolver": str(data.gateway_resolver),
        "hsts_max_age": int(data.gateway_hsts_max_age),
        "content_security_policy": str(data.gateway_content_security_policy),
        "referrer_policy": str(data.gateway_referrer_policy),
        "listen_addresses": list(data.gateway_listen_addresses),
        "https_port": int(data.gateway_https_port),
        "server_names": list(data.gateway_server_names),
        "cert": common.host_path(data, common.GATEWAY_CERT),
        "key": common.host_path(data, common.GATEWAY_KEY),
        "ca_cert": common.host_path(data, common.TLS_CA_CERT),
        "client_cert": common.host_path(data, common.GATEWAY_CLIENT_CERT),
        "client_key": common.host_path(data, common.GATEWAY_CLIENT_KEY),
        "sessiond_servers": sessiond_servers,
        "sessiond_tls": sessiond_tls,
        "sessiond_scheme": "https" if sessiond_tls else "http",
        "sessiond_tls_name": SESSIOND_TLS_NAME,
        "sessiond_keepalive": int(data.gateway_sessiond_keepalive),
        "sessiond_timeout": int(data.gateway_sessiond_timeout),
        "sessiond_connect_timeout": int(data.gateway_sessiond_connect_timeout),
        "sessiond_tries": len(sessiond_servers),
        "app_scheme": app_scheme,
        "app_servers": app_servers,
        "app_keepalive": int(data.gateway_app_keepalive),
        "app_timeout": int(data.gateway_app_timeout),
        "app_connect_timeout": int(data.gateway_app_connect_timeout),
        "placeholder_enabled": placeholder,
        "placeholder_port": int(data.gateway_placeholder_port),
        "forward_authorization": bool(data.gateway_forward_authorization),
        "publish_jwks": bool(data.gateway_publish_jwks),
        "apparmor_profile": str(data.gateway_apparmor_profile or ""),
    }


def render_files(data: Any, facts: Mapping[str, Any]) -> dict[str, str]:
    """Every managed file of the role: path on the host (prefixed) -> rendered content."""
    ctx = context(data, facts)
    return {
        common.host_path(data, NGINX_CONF): render("gateway/nginx.conf.j2", **ctx),
        common.host_path(data, PROXY_PARAMS): render("gateway/proxy_params.conf.j2", **ctx),
        common.host_path(data, SESSIOND_PARAMS): render("gateway/sessiond_params.conf.j2", **ctx),
        common.host_path(data, UNIT_OVERRIDE): render("gateway/nginx-override.conf.j2", **ctx),
    }


@deploy("Ostiary gateway", data_defaults=DEFAULTS)
def gateway() -> None:
    """nginx as the TLS 1.3 gateway; reloads only when its config or certificate changed."""
    from deploys.keys import gateway_certificate, host_topology

    data = host.data
    cert_pem, _ = gateway_certificate(data)
    facts = {
        "cpus": host.get_fact(Cpus) or 1,
        "ocsp_responder": has_ocsp_responder(cert_pem),
        **host_topology(),
    }
    rendered = render_files(data, facts)

    apt.packages(name="Install nginx from Debian", packages=["nginx"])
    # Debian ships the default site as a symlink into sites-available: remove the link.
    files.link(
        name="No Debian default site",
        path=common.host_path(data, "/etc/nginx/sites-enabled/default"),
        present=False,
    )
    if common.GROUP_SESSION_NODES in facts["groups"]:
        # The daemon's unix socket is mode 0660, group of the daemon.
        server.user(
            name="nginx may use the daemon's socket",
            user=str(data.gateway_nginx_user),
            groups=[common.SESSIOND_USER],
            append=True,
        )
    unit = common.host_path(data, UNIT_OVERRIDE)
    config_ops = []
    unit_op = None
    for path, content in sorted(rendered.items()):
        op = files.put(
            name=f"Gateway: {path}",
            src=io.StringIO(content),
            dest=path,
            user="root",
            group="root",
            mode="0644",
        )
        if path == unit:
            unit_op = op
        else:
            config_ops.append(op)
    assert unit_op is not None
    systemd.daemon_reload(name="Reload systemd: nginx drop-in changed", _if=unit_op.did_change)
    server.shell(
        name="Check the new nginx config",
        commands=[f"nginx -t -q -c {common.host_path(data, NGINX_CONF)}"],
        _if=any_changed(*config_ops),
    )
    systemd.service(
        name="Restart nginx: its unit changed",
        service="nginx.service",
        restarted=True,
        _if=unit_op.did_change,
    )
    systemd.service(
        name="Reload nginx: its config changed",
        service="nginx.service",
        reloaded=True,
        _if=any_changed(*config_ops),
    )
    systemd.service(name="nginx enabled and running", service="nginx.service", running=True, enabled=True)
