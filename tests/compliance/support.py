"""The inventory bridge and the probes the compliance modules share.

``load_inventory`` asks pyinfra itself for the hosts (``pyinfra INVENTORY debug-inventory --json``),
so whatever an inventory file computes (group data, host data, connection settings) is what the
suite sees. Each host becomes a :class:`Node`: its groups, its data merged over the bundle's
role defaults (exactly how pyinfra resolves ``data_defaults``), and a testinfra host reached over
paramiko with the inventory's SSH user, port, key and known-hosts file.

The probes run inside the managed hosts (bash, openssl, redis-cli are on every Debian host the
bundle manages), so "reachable from another host" means exactly that, never from the control node.
"""

from __future__ import annotations

import getpass
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import testinfra

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the bundle's modules (deploys.*) hold the defaults and paths
    sys.path.insert(0, str(REPO_ROOT))

from deploys import common  # noqa: E402

ROLE_MODULES = ("base", "chrony", "firewall", "apparmor", "keys", "redis", "sessiond", "gateway")
# The bundle's long-running services, by the inventory group whose hosts run them (an image may
# carry a package, such as nginx, on hosts where the bundle does not configure or start it).
SERVICE_UNITS: Mapping[str, tuple[str, ...]] = {
    common.GROUP_GATEWAYS: ("nginx.service",),
    common.GROUP_SESSION_NODES: ("ostiary-sessiond.service",),
    common.GROUP_REDIS_NODES: tuple(f"ostiary-redis@{name}.service" for name in common.REDIS_INSTANCES),
}
ALL_HOSTS = "all"
PROBE_TIMEOUT = 3  # seconds for one TCP connect or TLS handshake between hosts


class InventoryError(RuntimeError):
    """The inventory cannot be read or a host cannot be reached: every check of it fails."""


def role_defaults() -> dict[str, Any]:
    """Every role's DEFAULTS, merged: the values a host has unless its inventory data says otherwise."""
    merged: dict[str, Any] = {}
    for name in ROLE_MODULES:
        module = importlib.import_module(f"deploys.{name}")
        merged.update(getattr(module, "DEFAULTS", {}))
    return merged


@dataclass
class Node:
    """One inventory host as the checks see it."""

    name: str
    groups: frozenset[str] = field(repr=False)
    data: dict[str, Any] = field(repr=False)
    _host: Any = field(default=None, repr=False)
    _unreachable: InventoryError | None = field(default=None, repr=False)

    def in_group(self, group: str) -> bool:
        return group == ALL_HOSTS or group in self.groups

    @property
    def address(self) -> str:
        """The host's address on the private network (what peers and the firewall use)."""
        return str(self.data.get(common.PRIVATE_ADDRESS_KEY) or self.data.get("ssh_hostname") or self.name)

    @property
    def host(self) -> Any:
        """The testinfra host, connected on first use (a host that could not be reached fails fast)."""
        if self._unreachable is not None:
            raise self._unreachable
        if self._host is None:
            try:
                self._host = connect(self)
            except InventoryError as exc:
                self._unreachable = exc
                raise
        return self._host

    def run(self, command: str, timeout: int = 60) -> Any:
        """Run a shell command (bounded by ``timeout`` inside the host); returns testinfra's result."""
        wrapped = f"timeout --kill-after=5 {int(timeout)} sh -c {shlex.quote(command)}"
        return self.host.run(wrapped)

    def check(self, command: str, timeout: int = 60) -> str:
        """Run a command that must succeed; its stdout."""
        result = self.run(command, timeout)
        if result.rc != 0:
            raise AssertionError(
                f"{self.name}: `{command}` exited {result.rc}: {(result.stderr or result.stdout).strip()[:400]}"
            )
        return str(result.stdout)


def load_inventory(path: str) -> list[Node]:
    """``pyinfra PATH debug-inventory --json`` -> nodes with their data merged over the role defaults."""
    if not Path(path).is_file():  # pyinfra would read a missing file as a host name
        raise InventoryError(f"no inventory file {path}")
    pyinfra = Path(sys.executable).with_name("pyinfra")
    argv = [str(pyinfra) if pyinfra.exists() else "pyinfra", path, "debug-inventory", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise InventoryError(f"pyinfra could not read the inventory {path}: {done.stderr.strip()[-1000:]}")
    try:
        hosts = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise InventoryError(f"pyinfra debug-inventory --json printed no JSON: {done.stdout[:300]!r}") from exc
    if not hosts:
        raise InventoryError(f"the inventory {path} has no hosts")
    defaults = role_defaults()
    nodes = []
    for entry in hosts:
        data = {**defaults, **dict(entry.get("data") or {})}
        nodes.append(Node(str(entry["name"]), frozenset(entry.get("groups") or ()), data))
    return nodes


def _host_key_policy(setting: Any) -> paramiko.MissingHostKeyPolicy:
    # pyinfra's ssh_strict_host_key_checking: "yes" rejects unknown hosts, "no" and the default
    # "accept-new" accept them (a changed key of a known host is always refused by paramiko).
    if str(setting).lower() in ("yes", "true"):
        return paramiko.RejectPolicy()
    return paramiko.AutoAddPolicy()


def connect(node: Node) -> Any:
    """A testinfra host over paramiko with the inventory's connection settings."""
    data = node.data
    hostname = str(data.get("ssh_hostname") or node.name)
    port = int(data.get("ssh_port") or 22)
    user = str(data.get("ssh_user") or getpass.getuser())
    key = data.get("ssh_key")
    sudo = bool(data.get("_sudo")) and user != "root"
    host = testinfra.get_host(f"paramiko://{user}@{hostname}:{port}", sudo=sudo)
    client = paramiko.SSHClient()
    known_hosts = data.get("ssh_known_hosts_file")
    if known_hosts:
        client.load_host_keys(os.path.expanduser(str(known_hosts)))
    else:
        client.load_system_host_keys()
    client.set_missing_host_key_policy(_host_key_policy(data.get("ssh_strict_host_key_checking", "accept-new")))
    try:
        client.connect(
            hostname,
            port=port,
            username=user,
            key_filename=os.path.expanduser(str(key)) if key else None,
            passphrase=data.get("ssh_key_password"),
            password=data.get("ssh_password"),
            timeout=15,
            allow_agent=not key,
            look_for_keys=not key,
        )
    except (paramiko.SSHException, OSError) as exc:
        raise InventoryError(f"{node.name}: cannot connect over SSH to {user}@{hostname}:{port}: {exc}") from exc
    # testinfra's backend keeps its client in a cached property: hand it ours (known hosts checked).
    host.backend.__dict__["client"] = client
    return host


# ------------------------------------------------------------------------------ probes between hosts


def tcp_probe(source: Node, address: str, ports: Iterable[int]) -> dict[int, str]:
    """From ``source``: each port of ``address`` is "open", "refused" (RST) or "filtered" (no answer)."""
    port_list = " ".join(str(p) for p in sorted(set(ports)))
    script = (
        f"for p in {port_list}; do ("
        f'timeout {PROBE_TIMEOUT} bash -c "exec 3<>/dev/tcp/{address}/$p" 2>/dev/null; rc=$?; '
        'if [ $rc = 0 ]; then echo "$p open"; elif [ $rc = 124 ]; then echo "$p filtered"; '
        'else echo "$p refused"; fi) & done; wait'
    )
    out = source.check(f"bash -c {shlex.quote(script)}", timeout=PROBE_TIMEOUT * 4)
    states: dict[int, str] = {}
    for line in out.splitlines():
        port, _, state = line.partition(" ")
        if port.isdigit():
            states[int(port)] = state
    return states


@dataclass(frozen=True)
class TlsResult:
    ok: bool
    protocol: str
    cipher: str
    output: str


def tls_handshake(source: Node, address: str, port: int, server_name: str, *options: str) -> TlsResult:
    """An ``openssl s_client`` handshake from ``source``; ``options`` pick versions or suites."""
    opts = " ".join(shlex.quote(o) for o in options)
    command = (
        f"echo | openssl s_client -connect {address}:{port} -servername {shlex.quote(server_name)} {opts} -brief 2>&1"
    )
    result = source.run(command, timeout=PROBE_TIMEOUT * 4)
    output = str(result.stdout)
    protocol = re.search(r"Protocol version:\s*(\S+)", output)
    cipher = re.search(r"Ciphersuite:\s*(\S+)", output)
    ok = result.rc == 0 and protocol is not None
    return TlsResult(ok, protocol.group(1) if protocol else "", cipher.group(1) if cipher else "", output)


def peer_certificate(source: Node, address: str, port: int, server_name: str) -> bytes:
    """The leaf certificate (PEM) the server at ``address:port`` presents to ``source``."""
    out = source.check(
        f"echo | openssl s_client -connect {address}:{port} -servername {shlex.quote(server_name)} 2>/dev/null"
        " | openssl x509",
        timeout=PROBE_TIMEOUT * 4,
    )
    return out.encode()


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names; the last value wins
    body: str


def parse_http(raw: str) -> HttpResponse:
    head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status_line = next((line for line in lines if line.startswith("HTTP/")), "")
    match = re.match(r"HTTP/\S+\s+(\d{3})", status_line)
    if not match:
        raise AssertionError(f"no HTTP response: {raw[:300]!r}")
    headers = {}
    for line in lines[lines.index(status_line) + 1 :]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return HttpResponse(int(match.group(1)), headers, body)


def https_request(
    source: Node,
    address: str,
    port: int,
    server_name: str,
    path: str = "/",
    headers: Mapping[str, str] | None = None,
) -> HttpResponse:
    """One HTTP/1.1 GET over TLS from ``source`` (openssl as the client: present on every host)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {server_name}", "User-Agent: ostiary-compliance", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request = "\\r\\n".join(lines) + "\\r\\n\\r\\n"
    command = (
        f"printf '%b' {shlex.quote(request)} | openssl s_client -quiet -ign_eof -connect {address}:{port} "
        f"-servername {shlex.quote(server_name)} 2>/dev/null"
    )
    out = source.check(command, timeout=PROBE_TIMEOUT * 5)
    return parse_http(out)


def other_node(nodes: list[Node], target: Node, prefer_not_in: str | None = None) -> Node:
    """A host other than ``target`` to probe from (the target itself in a single-host inventory)."""
    others = [n for n in nodes if n.name != target.name]
    if prefer_not_in:
        outside = [n for n in others if prefer_not_in not in n.groups]
        others = outside or others
    return others[0] if others else target


# ------------------------------------------------------------------------------ small readers


def service_state(node: Node, unit: str) -> tuple[str, str]:
    """(ActiveState, UnitFileState) of a unit."""
    out = node.run(f"systemctl show -p ActiveState -p UnitFileState --value {shlex.quote(unit)}").stdout
    values = [line.strip() for line in str(out).splitlines()]
    values += ["", ""]
    return values[0], values[1]


def main_pid(node: Node, unit: str) -> int:
    return int(node.check(f"systemctl show -p MainPID --value {shlex.quote(unit)}").strip() or 0)


def sysctl_values(node: Node, keys: Iterable[str]) -> dict[str, str]:
    names = " ".join(shlex.quote(k) for k in keys)
    out = node.run(f"sysctl -e {names}").stdout
    values = {}
    for line in str(out).splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = " ".join(value.split())
    return values
