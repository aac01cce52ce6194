"""The base role: sysctls against the running kernel, THP via systemd-tmpfiles, sshd via sshd itself.

sshd is proven twice: ``sshd -t``/``sshd -T`` on a full config that includes the rendered drop-in,
and a real sshd on a loopback port that pyinfra's SSH client (paramiko) must still log in to with
a key, while password login is refused.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paramiko
import pytest
from host_support import PROFILES, free_port, host_data, require_root, run, write_files

from deploys import base, common

pytestmark = pytest.mark.bundle

PROC_SYS = Path("/proc/sys")


def _rendered(prefix: Path, profile: str = "single", **overrides: Any) -> tuple[Any, dict[str, str]]:
    host = next(iter(PROFILES[profile]))
    data = host_data(base, profile, host, prefix, **overrides)
    return data, base.render_files(data, {})


def _sysctl_lines(text: str) -> dict[str, tuple[str, bool]]:
    """key -> (value, optional) from a sysctl.d file."""
    entries = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        optional = key.startswith("-")
        entries[key.lstrip("-")] = (value.strip(), optional)
    return entries


def _proc_path(key: str) -> Path:
    return PROC_SYS / key.replace(".", "/")


def test_every_sysctl_exists_or_is_documented_as_kernel_dependent(prefix: Path) -> None:
    data, files = _rendered(prefix)
    entries = _sysctl_lines(files[common.host_path(data, base.SYSCTL_FILE)])
    assert entries.keys() == base.sysctls(data).keys()
    for key, (_value, optional) in entries.items():
        assert optional == (key in base.KERNEL_CONFIG_DEPENDENT), key
        if not _proc_path(key).exists():
            assert key in base.KERNEL_CONFIG_DEPENDENT, f"{key} is not a sysctl of this kernel"
    assert entries["vm.overcommit_memory"][0] == "1"
    assert entries["net.ipv4.tcp_syncookies"][0] == "1"


def test_network_sysctls_apply_inside_a_namespace(prefix: Path, netns: str) -> None:
    """net.* keys are per network namespace: systemd-sysctl writes them there, not on this host."""
    data, files = _rendered(prefix)
    entries = _sysctl_lines(files[common.host_path(data, base.SYSCTL_FILE)])
    in_ns = run(["ip", "netns", "exec", netns, "sh", "-c", "find /proc/sys/net -type f"])
    per_ns = {p[len("/proc/sys/") :].replace("/", ".") for p in in_ns.stdout.split()}
    net_keys = {k: v for k, (v, _) in entries.items() if k in per_ns}
    # The global net keys (bpf_jit_harden) are the only ones a namespace does not see.
    assert set(k for k in entries if k.startswith("net.")) - set(net_keys) <= {"net.core.bpf_jit_harden"}
    conf = prefix / "net-only.conf"
    conf.write_text("".join(f"{k} = {v}\n" for k, v in net_keys.items()))
    applied = run(["ip", "netns", "exec", netns, "/lib/systemd/systemd-sysctl", str(conf)])
    assert applied.returncode == 0 and not applied.stderr, applied.stderr
    for key, value in net_keys.items():
        got = run(["ip", "netns", "exec", netns, "cat", str(_proc_path(key))])
        assert got.stdout.split() == value.split(), key


def test_thp_tmpfiles_writes_never(prefix: Path) -> None:
    data, files = _rendered(prefix)
    path = common.host_path(data, base.THP_TMPFILES)
    write_files({path: files[path]})
    thp = prefix / "sys/kernel/mm/transparent_hugepage"
    thp.mkdir(parents=True)
    (thp / "enabled").write_text("[always] madvise never\n")
    (thp / "defrag").write_text("[madvise] never\n")
    done = run(["systemd-tmpfiles", "--create", f"--root={prefix}", path])
    assert done.returncode == 0, done.stderr
    for name in ("enabled", "defrag"):
        assert (thp / name).read_text().startswith("never")
    _, without = _rendered(prefix, thp_disabled=False)
    assert path not in without


# ------------------------------------------------------------------------------ sshd


class SshdSetup(SimpleNamespace):
    config: Path
    port: int
    client_key: paramiko.Ed25519Key


def _sshd_setup(prefix: Path, **overrides: Any) -> SshdSetup:
    """A full sshd config: the rendered drop-in first, then a Debian-like main file for this test."""
    require_root()
    data, files = _rendered(prefix, **overrides)
    dropin = common.host_path(data, base.SSHD_DROPIN)
    write_files({dropin: files[dropin]})
    keys = prefix / "hostkeys"
    keys.mkdir()
    for kind in ("ed25519", "ecdsa", "rsa"):
        made = run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(keys / f"ssh_host_{kind}_key")])
        assert made.returncode == 0, made.stderr
    made = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(prefix / "client")])
    assert made.returncode == 0, made.stderr
    authorized = prefix / "authorized_keys"
    authorized.write_text((prefix / "client.pub").read_text())
    authorized.chmod(0o600)
    port = free_port()
    config = prefix / "sshd_config"
    config.write_text(
        f"Include {Path(dropin).parent}/*.conf\n"
        f"Port {port}\nListenAddress 127.0.0.1\n"
        + "".join(f"HostKey {keys}/ssh_host_{k}_key\n" for k in ("ed25519", "ecdsa", "rsa"))
        + f"PidFile {prefix}/sshd.pid\n"
        # test-only: keys live in a temp dir (StrictModes would refuse /tmp) and no PAM stack
        + f"AuthorizedKeysFile {authorized}\nStrictModes no\nUsePAM no\n"
        # Debian's stock values the drop-in must override
        + "PasswordAuthentication yes\nX11Forwarding yes\nPermitRootLogin yes\n"
        + "Subsystem sftp /usr/lib/openssh/sftp-server\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    key = paramiko.Ed25519Key.from_private_key_file(str(prefix / "client"))
    return SshdSetup(config=config, port=port, client_key=key)


def test_sshd_accepts_the_full_config(prefix: Path) -> None:
    setup = _sshd_setup(prefix)
    checked = run(["/usr/sbin/sshd", "-t", "-f", str(setup.config)])
    assert checked.returncode == 0, checked.stderr
    effective = run(["/usr/sbin/sshd", "-T", "-f", str(setup.config), "-C", "user=root,host=control,addr=192.0.2.10"])
    assert effective.returncode == 0, effective.stderr
    settings: dict[str, str] = {}
    for line in effective.stdout.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, value)
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["permitrootlogin"] == "without-password"
    assert settings["x11forwarding"] == "no"
    assert settings["authenticationmethods"] == "publickey"
    assert settings["tcpkeepalive"] == "no" and settings["compression"] == "no"
    assert settings["ciphers"] == ",".join(base.DEFAULTS["ssh_ciphers"])
    assert settings["macs"] == ",".join(base.DEFAULTS["ssh_macs"])


@pytest.fixture
def sshd(prefix: Path) -> Iterator[SshdSetup]:
    setup = _sshd_setup(prefix)
    log = prefix / "sshd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(setup.config)], stderr=out)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"sshd exited: {log.read_text()}")
            if run(["ss", "-Htln", f"sport = :{setup.port}"]).stdout.strip():
                break
            time.sleep(0.05)
        yield setup
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_pyinfra_client_still_logs_in_with_a_key_and_passwords_are_refused(sshd: SshdSetup) -> None:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            "127.0.0.1",
            port=sshd.port,
            username="root",
            pkey=sshd.client_key,
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
        )
        _, stdout, _ = client.exec_command("echo logged-in", timeout=10)
        assert stdout.read().strip() == b"logged-in"
        transport = client.get_transport()
        assert transport is not None
        assert transport.remote_cipher in base.DEFAULTS["ssh_ciphers"]
    finally:
        client.close()
    with paramiko.Transport(("127.0.0.1", sshd.port)) as transport:
        transport.connect()
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_password("root", "not-a-password")
        assert refused.value.allowed_types == ["publickey"]


# ------------------------------------------------------------------------------ lock-out guard

ED25519_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB1gtZqy3m6xVfCwvYz5k0x0oQ2mGH8zNw5Vn4S5b1nZ op@ctl"


def _guard(prefix: Path, user: str, keys: list[str], client: Any = "paramiko", **overrides: Any) -> list[str]:
    data, _ = _rendered(prefix, **overrides)
    algorithms = base.paramiko_algorithms() if client == "paramiko" else client
    return base.sshd_lockout_problems(data, user, keys, algorithms)


def test_guard_passes_for_a_modern_key_and_pyinfras_client(prefix: Path) -> None:
    assert _guard(prefix, "root", [ED25519_LINE]) == []
    assert _guard(prefix, "deploy", [f'from="192.0.2.0/24" {ED25519_LINE}']) == []
    assert _guard(prefix, "deploy", ["ssh-rsa AAAAB3Nza op@ctl"]) == [], "RSA keys sign with rsa-sha2-*"


def test_guard_refuses_each_lockout(prefix: Path) -> None:
    assert _guard(prefix, "root", [])  # no key: password login is about to go
    assert _guard(prefix, "root", ["ssh-dss AAAAB3NzaC1kc3M op@ctl"])  # DSA: not accepted
    assert _guard(prefix, "root", [ED25519_LINE], ssh_permit_root_login="no")
    assert _guard(prefix, "deploy", [ED25519_LINE], ssh_allow_users=["admin"])
    # paramiko has no chacha20 and no umac: a config offering only those locks pyinfra out
    assert _guard(prefix, "root", [ED25519_LINE], ssh_ciphers=["chacha20-poly1305@openssh.com"])
    assert _guard(prefix, "root", [ED25519_LINE], ssh_macs=["umac-128-etm@openssh.com"])
    assert _guard(prefix, "root", [ED25519_LINE], ssh_kex_algorithms=["sntrup761x25519-sha512@openssh.com"])
    assert _guard(prefix, "root", [ED25519_LINE], client=None, ssh_ciphers=["x"]) == []


# ------------------------------------------------------------------------------ host checks


def test_openssl_and_entropy_checks_read_this_host(prefix: Path) -> None:
    data, _ = _rendered(prefix)
    version = run(["openssl", "version"]).stdout
    assert base.openssl_problem(data, version) is None, version
    assert base.openssl_problem(data, "OpenSSL 1.1.1w  11 Sep 2023")
    assert base.openssl_problem(data, "sh: openssl: not found")
    entropy = Path("/proc/sys/kernel/random/entropy_avail").read_text()
    assert base.entropy_problem(data, entropy) is None, entropy
    assert base.entropy_problem(data, "12")


def test_journald_dropin_is_persistent(prefix: Path) -> None:
    data, files = _rendered(prefix)
    text = files[common.host_path(data, base.JOURNALD_DROPIN)]
    assert "Storage=persistent" in text.splitlines()
    assert f"SystemMaxUse={base.DEFAULTS['journald_system_max_use']}" in text.splitlines()


def test_disabled_protocols_cannot_be_loaded_per_modprobe(prefix: Path) -> None:
    """kmod's own modprobe reads the rendered file: each protocol resolves to /bin/false, others do not."""
    data, files = _rendered(prefix)
    conf = prefix / "protocols.conf"
    conf.write_text(files[common.host_path(data, base.MODPROBE_FILE)])
    for name in base.DEFAULTS["disabled_protocols"]:
        dry = run(["modprobe", "-C", str(conf), "--dry-run", "--verbose", name])
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.split() == ["install", "/bin/false"], dry.stdout
    conf.write_text(files[common.host_path(data, base.MODPROBE_FILE)].replace("install sctp", "# install sctp"))
    assert "/bin/false" not in run(["modprobe", "-C", str(conf), "--dry-run", "--verbose", "sctp"]).stdout


def test_turning_settings_off_drops_their_files(prefix: Path) -> None:
    data, files = _rendered(prefix, disabled_protocols=[], core_dumps_disabled=False)
    assert common.host_path(data, base.MODPROBE_FILE) not in files
    assert common.host_path(data, base.CORE_LIMITS_FILE) not in files
    data, files = _rendered(prefix)
    limits = files[common.host_path(data, base.CORE_LIMITS_FILE)]
    entries = [line.split() for line in limits.splitlines() if line and not line.startswith("#")]
    assert entries == [["*", "hard", "core", "0"], ["root", "hard", "core", "0"]]


def test_a_protocol_name_that_is_not_a_module_name_is_refused(prefix: Path) -> None:
    with pytest.raises(base.DeployError, match="not a kernel module name"):
        _rendered(prefix, disabled_protocols=["dccp", "sctp /bin/sh"])
