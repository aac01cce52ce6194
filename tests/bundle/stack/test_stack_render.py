"""Every stack-role template, rendered for the single-host and the split profile, read by its program.

nginx -t, apparmor_parser -Q -K (compile without loading), systemd-analyze verify and security
(offline), and the daemon's own config loader. Also: who receives which key, and that the group
data files a user edits match the roles' defaults.
"""

from __future__ import annotations

import runpy
import sys
import tomllib
from pathlib import Path

import pytest
from stack_support import (
    PROFILES,
    REPO,
    exposure,
    facts,
    make_nginx_dirs,
    run,
    stack_data,
    write_files,
    write_key_files,
)

from deploys import apparmor, common, gateway, keys, sessiond
from ostiary.config import load_settings
from ostiary.keystore import ControlKeyStore

MAX_DAEMON_EXPOSURE = 2.0


def _hosts(profile: str, group: str) -> list[tuple[str, list[str], str]]:
    return [h for h in PROFILES[profile] if group in h[1]]


# ----------------------------------------------------------------------------- gateway / nginx


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_nginx_config_is_valid(profile: str, prefix: Path, keystore: ControlKeyStore) -> None:
    for name, groups, address in _hosts(profile, common.GROUP_GATEWAYS):
        data = stack_data(prefix, private_address=address)
        host_facts = facts(profile, groups)
        write_key_files(keys.key_files(data, host_facts, keystore, name))
        rendered = gateway.render_files(data, host_facts)
        write_files(dict(rendered))
        make_nginx_dirs(prefix)
        conf = prefix / "etc/nginx/nginx.conf"
        result = run(["nginx", "-t", "-c", str(conf)])
        assert result.returncode == 0, result.stderr
        # No warning either (a hash size nginx had to adjust, a directive it ignores, ...).
        assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr
        text = conf.read_text()
        assert "ssl_protocols TLSv1.3;" in text
        assert "ssl_session_tickets off;" in text
        assert "server_tokens off;" in text
        assert "auth_request /_ostiary/validate;" in text
        # Our CA names no OCSP responder, so stapling stays off.
        assert "ssl_stapling" not in text
        params = (prefix / "etc/nginx/ostiary-sessiond.conf").read_text()
        if common.GROUP_SESSION_NODES in groups:
            assert f"unix:{prefix}{common.SESSIOND_SOCKET}" in text
            assert "proxy_ssl_certificate" not in params
        else:
            assert f"10.20.0.21:{common.SESSIOND_PORT}" in text
            assert "proxy_ssl_verify on;" in params and "proxy_ssl_certificate " in params


def test_access_log_never_holds_a_token(prefix: Path) -> None:
    conf = gateway.render_files(stack_data(prefix), facts("single", PROFILES["single"][0][1]))
    text = conf[f"{prefix}{gateway.NGINX_CONF}"]
    log_format = text[text.index("log_format") : text.index("access_log")]
    for leak in ("$request ", "$request\"", "$args", "$query_string", "$http_authorization", "$http_cookie",
                 "$request_uri"):  # fmt: skip
        assert leak not in log_format, leak


def test_nginx_sizing_follows_cpus(prefix: Path) -> None:
    data = stack_data(prefix)
    for cpus in (1, 4, 16):
        ctx = gateway.context(data, {**facts("single", PROFILES["single"][0][1]), "cpus": cpus})
        assert ctx["worker_processes"] == cpus
        assert ctx["worker_rlimit_nofile"] == 2 * ctx["worker_connections"]
        assert ctx["limit_nofile"] >= cpus * ctx["worker_rlimit_nofile"]


def test_ocsp_stapling_only_with_a_responder(prefix: Path) -> None:
    ctx_facts = {**facts("single", PROFILES["single"][0][1]), "ocsp_responder": True}
    text = gateway.render_files(stack_data(prefix), ctx_facts)[f"{prefix}{gateway.NGINX_CONF}"]
    assert "ssl_stapling on;" in text and "ssl_stapling_verify on;" in text


# ----------------------------------------------------------------------------- apparmor


@pytest.mark.parametrize("complain", [False, True], ids=["enforce", "complain"])
@pytest.mark.parametrize("clock_check", ["timedatectl", "chrony", "none"])
def test_apparmor_profiles_compile(prefix: Path, complain: bool, clock_check: str) -> None:
    data = stack_data(prefix, apparmor_complain=complain, sessiond_clock_check=clock_check)
    rendered = apparmor.render_files(data, {})
    assert len(rendered) == len(apparmor.PROFILES)
    write_files(dict(rendered))
    for path, content in rendered.items():
        result = run(["apparmor_parser", "-Q", "-K", path])
        assert result.returncode == 0, f"{path}: {result.stderr}"
        assert ("complain" in content.split("{", 1)[0]) is complain
        # Least privilege: no shell.
        assert "deny /{usr/,}bin/{,ba,da,z}sh x," in content


def test_apparmor_parser_rejects_a_broken_profile(prefix: Path) -> None:
    # The check above can fail: a profile with a bad rule does not compile.
    path = apparmor.profile_path(stack_data(prefix), "ostiary-nginx")
    text = apparmor.render_files(stack_data(prefix), {})[path].replace("/usr/sbin/nginx mr,", "/usr/sbin/nginx mrq,")
    write_files({path: text})
    assert run(["apparmor_parser", "-Q", "-K", path]).returncode != 0


def test_debian_chronyd_profile_compiles() -> None:
    profile = Path("/etc/apparmor.d") / apparmor.CHRONYD_PROFILE
    assert profile.exists(), "Debian's chrony package ships this profile"
    result = run(["apparmor_parser", "-Q", "-K", str(profile)])
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- sessiond


def _render_sessiond(profile: str, prefix: Path) -> tuple[dict[str, str], list[str]]:
    _, groups, address = _hosts(profile, common.GROUP_SESSION_NODES)[0]
    data = stack_data(prefix, private_address=address)
    return sessiond.render_files(data, facts(profile, groups)), groups


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_sessiond_unit_verifies_and_scores(profile: str, prefix: Path) -> None:
    rendered, _ = _render_sessiond(profile, prefix)
    write_files(dict(rendered))
    # The unit's ExecStart points into the prefix; give it the real console script.
    venv_bin = prefix / common.VENV_DIR.lstrip("/") / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "ostiary").symlink_to(Path(sys.executable).parent / "ostiary")
    unit = f"{prefix}{sessiond.UNIT_FILE}"
    verify = run(["systemd-analyze", "verify", unit])
    assert verify.returncode == 0, verify.stderr
    security = run(["systemd-analyze", "security", "--offline=true", unit])
    score = exposure(security.stdout)
    print(f"\n{profile}: {sessiond.UNIT} exposure {score}")
    assert score <= MAX_DAEMON_EXPOSURE, security.stdout


def test_nginx_dropin_lowers_exposure(prefix: Path) -> None:
    stock = Path("/lib/systemd/system/nginx.service")
    assert stock.exists(), "nginx from Debian ships this unit"
    rendered = gateway.render_files(stack_data(prefix), facts("single", PROFILES["single"][0][1]))
    dropin = rendered[f"{prefix}{gateway.UNIT_OVERRIDE}"]
    units = prefix / "units"
    units.mkdir()
    (units / "nginx.service").write_text(stock.read_text())
    # A drop-in's [Service] lines act as if appended to the unit.
    (units / "nginx-ostiary.service").write_text(stock.read_text() + "\n" + dropin)
    before = exposure(run(["systemd-analyze", "security", "--offline=true", str(units / "nginx.service")]).stdout)
    after = exposure(
        run(["systemd-analyze", "security", "--offline=true", str(units / "nginx-ostiary.service")]).stdout
    )
    print(f"\nnginx.service exposure: Debian {before}, with the gateway drop-in {after}")
    assert after < before - 3.0, (before, after)


def test_single_host_daemon_config_loads(prefix: Path) -> None:
    rendered, _ = _render_sessiond("single", prefix)
    config = Path(f"{prefix}{sessiond.CONFIG_FILE}")
    write_files(dict(rendered))
    settings = load_settings(config)
    assert settings.server.listen == f"unix:{prefix}{common.SESSIOND_SOCKET}"
    assert settings.store.sessions_url == f"unix://{prefix}{common.redis_socket('sessions')}?db=0"
    assert settings.store.revocations_url == f"unix://{prefix}{common.redis_socket('revocations')}?db=0"
    assert settings.store.username == "sessiond"
    assert settings.server.workers == 4


def test_split_daemon_config(prefix: Path) -> None:
    rendered, _ = _render_sessiond("split", prefix)
    config = tomllib.loads(rendered[f"{prefix}{sessiond.CONFIG_FILE}"])
    store = config["store"]
    assert store["sessions_url"] == f"rediss://10.20.0.31:{common.SESSION_STORE_TLS_PORT}/0"
    assert store["revocations_url"] == f"rediss://10.20.0.31:{common.REVOCATION_STORE_TLS_PORT}/0"
    assert store["tls_cert_file"] == f"{prefix}{common.SESSIOND_REDIS_CLIENT_CERT}"
    assert config["server"]["listen"] == f"10.20.0.21:{common.SESSIOND_PORT}"
    assert config["server"]["tls_client_ca_file"] == f"{prefix}{common.TLS_CA_CERT}"
    unit = rendered[f"{prefix}{sessiond.UNIT_FILE}"]
    assert "IPAddressAllow=localhost 10.20.0.11 10.20.0.31" in unit


def test_rendering_is_deterministic(prefix: Path) -> None:
    for profile in PROFILES:
        for _, groups, address in PROFILES[profile]:
            data = stack_data(prefix, private_address=address)
            host_facts = facts(profile, groups)
            for role in (gateway, sessiond, apparmor):
                if role is gateway and common.GROUP_GATEWAYS not in groups:
                    continue
                if role is sessiond and common.GROUP_SESSION_NODES not in groups:
                    continue
                assert role.render_files(data, host_facts) == role.render_files(data, host_facts)


# ----------------------------------------------------------------------------- keys


def _private(items: list[keys.KeyFile]) -> dict[str, keys.KeyFile]:
    return {i.path: i for i in items if i.mode == "0600"}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_private_keys_only_where_needed(profile: str, prefix: Path, keystore: ControlKeyStore) -> None:
    p = str(prefix)
    by_host = {}
    for name, groups, address in PROFILES[profile]:
        data = stack_data(prefix, private_address=address)
        by_host[name] = _private(keys.key_files(data, facts(profile, groups), keystore, name))
    if profile == "single":
        got = by_host["ostiary1"]
        assert p + common.GATEWAY_KEY in got and p + common.REDIS_SERVER_KEY in got
        assert p + common.SESSIOND_REDIS_PASSWORD_FILE in got
        # Co-located: no client certificates, no daemon TLS listener.
        for absent in (common.GATEWAY_CLIENT_KEY, common.SESSIOND_REDIS_CLIENT_KEY, common.SESSIOND_SERVER_KEY):
            assert p + absent not in got
    else:
        assert set(by_host["gw1"]) == {p + common.GATEWAY_KEY, p + common.GATEWAY_CLIENT_KEY}
        assert set(by_host["redis1"]) == {p + common.REDIS_SERVER_KEY}
        sess = set(by_host["sess1"])
        assert {p + common.SESSIOND_REDIS_CLIENT_KEY, p + common.SESSIOND_SERVER_KEY,
                p + common.SESSIOND_REDIS_PASSWORD_FILE} <= sess  # fmt: skip
        jwt_keys = {k for k in sess if k.startswith(p + common.KEYS_DIR)}
        assert jwt_keys and all(k.endswith(".key") for k in jwt_keys)
    owners = {i.owner for items in by_host.values() for i in items.values()}
    assert owners <= {"root", common.SESSIOND_USER, common.REDIS_USER}


def test_key_files_are_stable_and_readable(prefix: Path, keystore: ControlKeyStore) -> None:
    name, groups, address = PROFILES["split"][1]
    data = stack_data(prefix, private_address=address)
    first = keys.key_files(data, facts("split", groups), keystore, name)
    second = keys.key_files(data, facts("split", groups), keystore, name)
    assert first == second  # a second deploy uploads nothing new
    write_key_files(first)
    from ostiary.keys import load_keyring

    ring = load_keyring(Path(f"{prefix}{common.KEYS_DIR}"))
    assert ring.active.alg == "ES256"


# ----------------------------------------------------------------------------- inventory data


@pytest.mark.parametrize(("group_file", "role"), [("gateways", gateway), ("session_nodes", sessiond)])
def test_group_data_matches_role_defaults(group_file: str, role: object) -> None:
    values = runpy.run_path(str(REPO / "inventories/group_data" / f"{group_file}.py"))
    defaults = role.DEFAULTS  # type: ignore[attr-defined]
    assert {k: values[k] for k in defaults} == defaults


@pytest.mark.parametrize("role", [gateway, sessiond, apparmor, keys])
def test_settings_doc_complete(role: object) -> None:
    assert set(role.SETTINGS_DOC) == set(role.DEFAULTS)  # type: ignore[attr-defined]
    assert all(doc.strip() for doc in role.SETTINGS_DOC.values())  # type: ignore[attr-defined]


def test_example_inventories_shape() -> None:
    single = runpy.run_path(str(REPO / "inventories/single_host.py"))
    assert single["gateways"] == single["session_nodes"] == single["redis_nodes"]
    production = runpy.run_path(str(REPO / "inventories/production.py"))
    for group in (common.GROUP_GATEWAYS, common.GROUP_SESSION_NODES, common.GROUP_REDIS_NODES):
        assert production[group]
        for _, host_data in production[group]:
            assert host_data[common.PRIVATE_ADDRESS_KEY]


def test_peers_without_private_address_are_refused(prefix: Path) -> None:
    data = stack_data(prefix, private_address="10.20.0.21")
    host_facts = facts("split", [common.GROUP_SESSION_NODES])
    host_facts["peers"][common.GROUP_GATEWAYS] = ["gw1.example.internal"]  # a name, not an address
    with pytest.raises(ValueError, match="private_address"):
        sessiond.render_files(data, host_facts)
