"""The lab's processes: three qemu guests, the VDE switch of their data network, the time source.

Everything a lab starts runs as a daemon whose PID is kept in the lab's state directory
(``.ostiary/lab/run/``), and is only ever stopped by that PID after checking that the process's
command line still names this state directory (a PID reused by an unrelated process is left
alone). A crashed run leaves PID files, sockets and overlays behind; ``Lab.up`` detects them,
stops what still runs and starts from a clean directory, so nothing blocks the next run.

Topology: every guest has a management NIC on qemu's user-mode network (SSH forwarded from a
free port P on 127.0.0.1 to the same port P in the guest, where sshd listens besides 22; the
host's time source is at 10.0.2.2 from inside) and a data NIC on the
VDE switch, with a static address on a subnet that exists only on that switch: no lab address
is ever configured on an interface of this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from . import image

DATA_SUBNET: Final = "10.77.0.0/24"
DATA_PREFIX: Final = "10.77.0."
MGMT_SUBNET: Final = "10.0.2.0/24"  # qemu's user-mode network; SSH arrives from 10.0.2.2
PASSPHRASE_ENV: Final = "OSTIARY_KEYSTORE_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
HOST_FROM_GUEST: Final = "10.0.2.2"  # the host's loopback as seen from a guest's user-mode NIC
NTP_PORT: Final = 123
VM_MEMORY_MB: Final = 1536
VM_CPUS: Final = 1
SSH_WAIT_SECONDS: Final = 420.0
STOP_WAIT_SECONDS: Final = 10.0


@dataclass(frozen=True)
class HostSpec:
    """One lab VM: its name, inventory groups and index (MAC and data address derive from it)."""

    name: str
    groups: tuple[str, ...]
    index: int
    forward_https: bool = False

    @property
    def private_address(self) -> str:
        return f"{DATA_PREFIX}{10 + self.index}"

    @property
    def mgmt_mac(self) -> str:
        return f"{image.MGMT_MAC_PREFIX}{self.index:02x}"

    @property
    def data_mac(self) -> str:
        return f"{image.DATA_MAC_PREFIX}{self.index:02x}"


TOPOLOGY: Final = (
    HostSpec("gw1", ("gateways",), 1, forward_https=True),
    HostSpec("sess1", ("session_nodes",), 2),
    HostSpec("kv1", ("redis_nodes",), 3),
)


@dataclass
class HostState:
    name: str
    groups: list[str]
    private_address: str
    ssh_port: int
    https_port: int | None
    pid_file: str
    overlay: str
    console: str


@dataclass
class LabState:
    """What ``up`` started; written to ``run/state.json`` and read by every later command."""

    root: str
    hosts: dict[str, HostState]
    time_port: int
    accel: str
    image_hash: str
    ssh_key: str
    known_hosts: str
    inventory: str
    phases: dict[str, float] = field(default_factory=dict)

    def host(self, name: str) -> HostState:
        return self.hosts[name]


Progress = Callable[[str], None]


def kvm_usable() -> bool:
    """KVM only where /dev/kvm opens and the CPU advertises hardware virtualisation.

    On a machine whose /dev/kvm opens but whose CPU shows neither vmx nor svm, a KVM guest hangs
    in early boot; TCG is slower but works everywhere.
    """
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"vmx", "svm"})
    return False


def accel_args() -> tuple[str, list[str]]:
    if kvm_usable():
        return "kvm", ["-accel", "kvm", "-cpu", "host"]
    return "tcg", ["-accel", "tcg,thread=multi", "-cpu", "max"]


def free_port(kind: int = socket.SOCK_STREAM, taken: set[int] | None = None) -> int:
    """A port that is free on 127.0.0.1 right now (and not already handed out in this run)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if taken is None or port not in taken:
            if taken is not None:
                taken.add(port)
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def time_source_port() -> int:
    """UDP 123 on 127.0.0.1 when free (guests then use the standard NTP port), else any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", NTP_PORT))
        except OSError:
            return free_port(socket.SOCK_DGRAM)
    return NTP_PORT


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def owned_pid(pid_file: Path, marker: str) -> int | None:
    """The PID in ``pid_file`` if that process runs and its command line contains ``marker``."""
    pid = _read_pid(pid_file)
    if pid is None or pid <= 1:
        return None
    return pid if marker in _cmdline(pid) else None


def stop_pid(pid: int, wait: float = STOP_WAIT_SECONDS) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``wait`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if gone(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if gone(pid):
            return
        time.sleep(0.1)


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class Lab:
    """The lab of one project checkout: its state directory and inventory file."""

    def __init__(self, root: Path, topology: tuple[HostSpec, ...] = TOPOLOGY) -> None:
        self.root = root.resolve()
        self.topology = topology
        self.state_dir = self.root / ".ostiary" / "lab"
        self.run_dir = self.state_dir / "run"
        self.log_dir = self.state_dir / "logs"
        self.inventory_path = self.root / "inventories" / "lab.py"

    # --- state -------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    def load_state(self) -> LabState | None:
        try:
            raw = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        hosts = {name: HostState(**value) for name, value in raw.pop("hosts").items()}
        return LabState(hosts=hosts, **raw)

    def _save_state(self, state: LabState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state_file)

    def processes(self) -> dict[str, int]:
        """Every lab process that runs now, by role name (PID files checked against /proc)."""
        found: dict[str, int] = {}
        marker = str(self.run_dir)
        if not self.run_dir.is_dir():
            return found
        for pid_file in sorted(self.run_dir.glob("*.pid")):
            pid = owned_pid(pid_file, marker)
            if pid is not None:
                found[pid_file.stem] = pid
        return found

    def is_up(self) -> bool:
        state = self.load_state()
        if state is None:
            return False
        running = self.processes()
        wanted = {*state.hosts, "switch", "timesource"}
        return wanted <= set(running)

    def tool_env(self) -> dict[str, str]:
        """Environment for pyinfra and the compliance suite run against the lab.

        The lab's key store is encrypted with a passphrase of its own, generated once into the
        state directory (outside git, mode 0600), unless OSTIARY_KEYSTORE_PASSPHRASE is set.
        """
        env = dict(os.environ)
        if not env.get(PASSPHRASE_ENV):
            path = self.state_dir / "keystore.passphrase"
            if not path.exists():
                self.state_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_urlsafe(32))
            env[PASSPHRASE_ENV] = path.read_text().strip()
        return env

    # --- ssh ---------------------------------------------------------------------------------

    def ssh_argv(self, state: LabState, name: str) -> list[str]:
        host = state.host(name)
        return [
            "ssh",
            "-i", state.ssh_key,
            "-p", str(host.ssh_port),
            "-o", f"UserKnownHostsFile={state.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR",
            "-o", "ServerAliveInterval=15",
            "root@127.0.0.1",
        ]  # fmt: skip

    def ssh(
        self, name: str, command: str, timeout: float = 120.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command in a guest as root; returns the completed process."""
        state = self.require_state()
        proc = subprocess.run(
            [*self.ssh_argv(state, name), command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{name}: {command!r} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def _answers(self, name: str) -> bool:
        try:
            return self.ssh(name, "true", timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def require_state(self) -> LabState:
        state = self.load_state()
        if state is None:
            raise RuntimeError("the lab is not up (run `ostiary lab up`)")
        return state

    # --- time --------------------------------------------------------------------------------

    def step_clock(self, name: str, seconds: int) -> None:
        """Break time on purpose: step a guest's clock by ``seconds`` (chrony then slews it back
        slowly, or ``resync_clock`` steps it back at once)."""
        self.ssh(name, f"date -u -s @$(( $(date +%s) + {int(seconds)} )) >/dev/null", check=True)

    def resync_clock(self, name: str, timeout: int = 60) -> None:
        """Bring a guest's clock back to the lab time source and wait until chrony is in sync.

        chronyd is restarted rather than asked to step: after a jump beyond the bundle's
        ``maxchange`` it may have given up (that is the point of the setting), and a fresh start
        may step the clock in its first updates (``makestep``).
        """
        tries = max(1, timeout // 2)
        self.ssh(
            name,
            f"systemctl restart chrony && chronyc -n waitsync {tries} 0.5 0 2 >/dev/null",
            timeout=timeout + 30,
            check=True,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    def down(self, progress: Progress = print) -> list[str]:
        """Stop every lab process by PID and remove the run directory (overlays, sockets, keys)."""
        stopped: list[str] = []
        for role, pid in self.processes().items():
            stop_pid(pid)
            stopped.append(f"{role} (pid {pid})")
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.inventory_path.unlink(missing_ok=True)
        progress("down: stopped " + (", ".join(stopped) if stopped else "nothing (no lab process was running)"))
        return stopped

    def up(self, progress: Progress = print) -> LabState:
        """Build or reuse the image, start switch, time source and VMs, wait for SSH, write the inventory."""
        from . import inventory

        if self.is_up():
            state = self.require_state()
            if all(self._answers(name) for name in state.hosts):
                progress("up: the lab is already running; reusing it")
                return state
        # Leftovers of a crashed or half-finished run: stop what still runs, clear the directory.
        if self.run_dir.exists() or self.processes():
            progress("up: cleaning up the leftovers of an earlier run")
            self.down(progress=lambda _msg: None)
        self.run_dir.mkdir(parents=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        phases: dict[str, float] = {}

        def phase_done(name: str, t0: float) -> None:
            phases[name] = round(time.monotonic() - t0, 1)
            progress(f"[{time.monotonic() - started:6.1f} s] {name}: {phases[name]:.1f} s")

        try:
            t0 = time.monotonic()
            cached = image.cached_image()
            progress("image: " + ("reusing cached image" if cached else "building (not cached yet)"))
            base = cached or image.ensure_image(log=progress)
            phase_done("image" if base.built_now else "image (cached)", t0)

            t0 = time.monotonic()
            key, known_hosts = self._make_keys()
            taken: set[int] = set()
            time_port = time_source_port()
            self._start_switch()
            self._start_timesource(time_port)
            accel, accel_argv = accel_args()
            hosts: dict[str, HostState] = {}
            for spec in self.topology:
                hosts[spec.name] = self._start_vm(spec, base, accel_argv, taken)
            self._write_known_hosts(hosts, known_hosts)
            state = LabState(
                root=str(self.root),
                hosts=hosts,
                time_port=time_port,
                accel=accel,
                image_hash=base.recipe_hash,
                ssh_key=str(key),
                known_hosts=str(known_hosts),
                inventory=str(self.inventory_path),
                phases=phases,
            )
            self._save_state(state)
            phase_done(f"start ({accel}, {len(hosts)} VMs)", t0)

            t0 = time.monotonic()
            self._wait_for_ssh(state, progress, started)
            phase_done("boot (SSH answers)", t0)

            t0 = time.monotonic()
            self._wait_for_systemd(state, progress)
            phase_done("boot (systemd settled)", t0)

            inventory.write_inventory(self, state)
            progress(f"up: wrote {self.inventory_path.relative_to(self.root)}")
            state.phases = phases
            self._save_state(state)
            (self.log_dir / "up-phases.json").write_text(json.dumps(phases, indent=2) + "\n")
            return state
        except BaseException:
            progress("up: failed; stopping what was started (consoles kept in .ostiary/lab/logs/)")
            self.down(progress=lambda _msg: None)
            raise

    # --- pieces of up ------------------------------------------------------------------------

    def _make_keys(self) -> tuple[Path, Path]:
        key = self.run_dir / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ostiary-lab", "-f", str(key)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        return key, self.run_dir / "known_hosts"

    def _start_switch(self) -> None:
        sock = self.run_dir / "switch"
        pid_file = self.run_dir / "switch.pid"
        subprocess.run(
            ["vde_switch", "-d", "-s", str(sock), "-p", str(pid_file), "-m", "0700"],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        _wait_for(
            lambda: (sock / "ctl").exists() and owned_pid(pid_file, str(self.run_dir)) is not None, 10, "vde_switch"
        )

    def _start_timesource(self, port: int) -> None:
        """A host chronyd that serves this machine's clock to the guests and never adjusts it (-x)."""
        conf = self.run_dir / "timesource.conf"
        pid_file = self.run_dir / "timesource.pid"
        conf.write_text(
            "# Lab time source: serves the host clock to the guests, never touches it (-x).\n"
            f"port {port}\n"
            "bindaddress 127.0.0.1\n"
            "local stratum 1\n"
            "allow all\n"
            "cmdport 0\n"
            f"pidfile {pid_file}\n"
        )
        subprocess.run(
            ["chronyd", "-x", "-u", "root", "-f", str(conf)],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        _wait_for(lambda: owned_pid(pid_file, str(conf)) is not None, 10, "the time source (chronyd)")

    def _start_vm(self, spec: HostSpec, base: image.BaseImage, accel_argv: list[str], taken: set[int]) -> HostState:
        run = self.run_dir
        overlay = run / f"{spec.name}.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base.disk), "-F", "raw", str(overlay)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        host_key = run / f"{spec.name}_host_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{spec.name}", "-f", str(host_key)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        hosts_file = run / f"{spec.name}.hosts"
        hosts_file.write_text(
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
            + "".join(f"{other.private_address} {other.name}\n" for other in self.topology)
        )
        data_network = run / f"{spec.name}.data.network"
        data_network.write_text(
            f"[Match]\nMACAddress={spec.data_mac}\n\n"
            f"[Network]\nAddress={spec.private_address}/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        console = self.log_dir / f"{spec.name}.console"
        console.unlink(missing_ok=True)
        pid_file = run / f"{spec.name}.pid"
        machine_id = os.urandom(16).hex()
        append = (
            f"root=/dev/vda rw console=ttyS0 apparmor=1 security=apparmor systemd.machine_id={machine_id} "
            "net.ifnames=1 systemd.show_status=auto"
        )
        for attempt in range(3):
            ssh_port = free_port(taken=taken)
            https_port = free_port(taken=taken) if spec.forward_https else None
            # A real NAT case: pyinfra connects to ssh_port on 127.0.0.1, the guest's sshd receives
            # on 22, and the firewall role opens the port the deploy's connection arrived on.
            forwards = f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
            if https_port is not None:
                forwards += f",hostfwd=tcp:127.0.0.1:{https_port}-:443"
            argv = [
                "qemu-system-x86_64",
                "-name", f"{spec.name},process=ostiary-lab-{spec.name}",
                *accel_argv,
                "-smp", str(VM_CPUS),
                "-m", str(VM_MEMORY_MB),
                "-nodefaults",  # no CD-ROM, parallel port or VGA: less to probe in a slow TCG boot
                "-display", "none",
                "-monitor", "none",
                "-serial", f"file:{console}",
                "-kernel", str(base.kernel),
                "-initrd", str(base.initrd),
                "-append", append,
                "-drive", f"file={overlay},format=qcow2,if=virtio,cache=unsafe,discard=unmap",
                "-netdev", f"user,id=mgmt,{forwards}",
                "-device", f"virtio-net-pci,netdev=mgmt,mac={spec.mgmt_mac}",
                "-netdev", f"vde,id=data,sock={run / 'switch'}",
                "-device", f"virtio-net-pci,netdev=data,mac={spec.data_mac}",
                "-object", "rng-random,filename=/dev/urandom,id=rng0",
                "-device", "virtio-rng-pci,rng=rng0",
                "-rtc", "base=utc",
                "-fw_cfg", f"name=opt/ostiary/hostname,string={spec.name}",
                "-fw_cfg", f"name=opt/ostiary/authorized_keys,file={run / 'id_ed25519.pub'}",
                "-fw_cfg", f"name=opt/ostiary/ssh_host_ed25519_key,file={host_key}",
                "-fw_cfg", f"name=opt/ostiary/ssh_host_ed25519_key.pub,file={host_key}.pub",
                "-fw_cfg", f"name=opt/ostiary/hosts,file={hosts_file}",
                "-fw_cfg", f"name=opt/ostiary/data.network,file={data_network}",
                "-pidfile", str(pid_file),
                "-daemonize",
            ]  # fmt: skip
            (self.log_dir / f"{spec.name}.qemu-argv").write_text(shlex.join(argv) + "\n")
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                return HostState(
                    name=spec.name,
                    groups=list(spec.groups),
                    private_address=spec.private_address,
                    ssh_port=ssh_port,
                    https_port=https_port,
                    pid_file=str(pid_file),
                    overlay=str(overlay),
                    console=str(console),
                )
            if "hostfwd" not in proc.stderr or attempt == 2:  # only a port race is worth a retry
                raise RuntimeError(f"qemu for {spec.name} failed: {proc.stderr.strip()}")
        raise AssertionError("unreachable")

    def _write_known_hosts(self, hosts: dict[str, HostState], known_hosts: Path) -> None:
        lines = []
        for name, host in hosts.items():
            pub = (self.run_dir / f"{name}_host_ed25519.pub").read_text().split()
            lines.append(f"[127.0.0.1]:{host.ssh_port} {pub[0]} {pub[1]}\n")
        known_hosts.write_text("".join(lines))

    def _wait_for_ssh(self, state: LabState, progress: Progress, started: float) -> None:
        pending = set(state.hosts)
        deadline = time.monotonic() + SSH_WAIT_SECONDS
        while pending:
            for name in sorted(pending):
                if owned_pid(Path(state.host(name).pid_file), str(self.run_dir)) is None:
                    raise RuntimeError(f"{name}: qemu exited during boot; see {state.host(name).console}")
                if self._answers(name):
                    pending.discard(name)
                    progress(f"[{time.monotonic() - started:6.1f} s] boot: {name} answers SSH")
            if pending:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no SSH from {', '.join(sorted(pending))} after {SSH_WAIT_SECONDS:.0f} s")
                time.sleep(2)

    def _wait_for_systemd(self, state: LabState, progress: Progress) -> None:
        for name in state.hosts:
            proc = self.ssh(name, "timeout 240 systemctl is-system-running --wait", timeout=300)
            status = proc.stdout.strip() or proc.stderr.strip()
            if status != "running":
                failed = self.ssh(name, "systemctl --failed --no-legend --plain | cut -d' ' -f1").stdout.split()
                progress(f"boot: {name} is {status}; failed units: {', '.join(failed) or 'none'}")


def _wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {seconds:.0f} s")
        time.sleep(0.1)
