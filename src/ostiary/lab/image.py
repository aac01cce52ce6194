"""The lab's base image: a Debian 12 root file system built from Debian's own packages.

``mmdebstrap`` installs the packages into a directory, a few files make it bootable as a
qemu guest (fstab, networkd, a boot-time unit that reads each VM's identity from qemu's
firmware config), ``mkfs.ext4 -d`` turns the directory into a raw disk and the kernel and
initrd are copied out for direct boot. The result is cached under the user's cache directory,
keyed by a hash of everything that goes into it, so an unchanged recipe never rebuilds; a build
happens in a temporary directory that is renamed into place only once complete, so a crashed
build can never leave a half image that the next run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SUITE: Final = "bookworm"
DISK_SIZE: Final = "4G"
# Bumped by hand whenever the build steps below change in a way the package list does not show.
RECIPE_VERSION: Final = 5

# What a lab guest needs to boot, be reached over SSH and be managed by pyinfra.
BASE_PACKAGES: Final = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "openssh-sftp-server",
    "apparmor",
    "apparmor-utils",
    "iproute2",
    "python3",
    "sudo",
    "ca-certificates",
    "kmod",
    "procps",
    "curl",
    "netcat-openbsd",
    "iputils-ping",
)
# What the bundle (deploys/*.py) installs: pre-installed so the apply needs no download inside
# the guests and its apt operations are no-ops. Their stock services are disabled below.
BUNDLE_PACKAGES: Final = (
    "redis-server",
    "redis-tools",
    "nginx",
    "chrony",
    "iptables",
    "netfilter-persistent",
    "iptables-persistent",
    "lynis",
    "openssl",
    "python3-venv",
)
# Installed by the packages above with a service that must not run until the bundle configures it.
STOCK_SERVICES_OFF: Final = ("redis-server.service", "nginx.service", "chrony.service")
# Periodic jobs that would compete for the guests' single TCG vCPU (and take the dpkg lock
# in the middle of an apply): masked.
TIMERS_MASKED: Final = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "dpkg-db-backup.timer",
)
# Documentation and translations are not needed in a lab guest and slow down mkfs.
DPKG_EXCLUDES: Final = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)

# Runs on every boot before networking and sshd: reads this VM's name, data address, the lab's
# SSH key and the VM's own SSH host key from qemu's firmware config (-fw_cfg name=opt/ostiary/...),
# so one base image serves every VM and no lab secret is ever baked into the cached image.
GUEST_SCRIPT: Final = r"""#!/bin/sh
set -eu
modprobe qemu_fw_cfg 2>/dev/null || true
d=/sys/firmware/qemu_fw_cfg/by_name/opt/ostiary
[ -d "$d" ] || exit 0
get() { cat "$d/$1/raw" 2>/dev/null || true; }
name=$(get hostname)
if [ -n "$name" ]; then
    echo "$name" >/etc/hostname
    hostname "$name"
fi
mkdir -p /root/.ssh
chmod 700 /root/.ssh
get authorized_keys >/root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
key=$(get ssh_host_ed25519_key)
if [ -n "$key" ]; then
    umask 077
    get ssh_host_ed25519_key >/etc/ssh/ssh_host_ed25519_key
    get ssh_host_ed25519_key.pub >/etc/ssh/ssh_host_ed25519_key.pub
    chmod 644 /etc/ssh/ssh_host_ed25519_key.pub
    umask 022
fi
get hosts >/etc/hosts
get data.network >/etc/systemd/network/05-lab-data.network
chmod 644 /etc/systemd/network/05-lab-data.network /etc/hosts
"""

GUEST_UNIT: Final = """[Unit]
Description=Ostiary lab: this VM's identity from qemu's firmware config
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service
Before=network-pre.target systemd-networkd.service ssh.service sysinit.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/ostiary-lab-guest

[Install]
WantedBy=sysinit.target
"""

# The management NIC (qemu's user-mode network) takes DHCP from qemu. networkd uses the first
# file that matches a link: the data NIC is matched by its MAC in 05-lab-data.network (written
# at boot), so this catch-all only gets the management NIC.
MGMT_NETWORK: Final = """[Match]
Name=en*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
"""

SSHD_LAB: Final = """# Lab guests: root logs in with the lab's key only; no host key type other than the injected one.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
"""

MGMT_MAC_PREFIX: Final = "52:54:00:00:00:"
DATA_MAC_PREFIX: Final = "52:54:00:00:01:"


@dataclass(frozen=True)
class BaseImage:
    """A cached, complete base image: the raw disk plus the kernel and initrd to boot it."""

    directory: Path
    disk: Path
    kernel: Path
    initrd: Path
    recipe_hash: str
    built_now: bool
    seconds: float


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ostiary" / "images"


def recipe() -> dict[str, object]:
    """Everything the image depends on; its hash names the cache entry."""
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "disk_size": DISK_SIZE,
        "packages": sorted(BASE_PACKAGES + BUNDLE_PACKAGES),
        "services_off": list(STOCK_SERVICES_OFF),
        "timers_masked": list(TIMERS_MASKED),
        "dpkg_excludes": list(DPKG_EXCLUDES),
        "guest_script": GUEST_SCRIPT,
        "guest_unit": GUEST_UNIT,
        "mgmt_network": MGMT_NETWORK,
        "sshd": SSHD_LAB,
    }


def recipe_hash() -> str:
    blob = json.dumps(recipe(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in ("base.raw", "vmlinuz", "initrd.img", "recipe.json"))


def _image(directory: Path, digest: str, built_now: bool, seconds: float) -> BaseImage:
    return BaseImage(
        directory=directory,
        disk=directory / "base.raw",
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        recipe_hash=digest,
        built_now=built_now,
        seconds=seconds,
    )


def cached_image() -> BaseImage | None:
    """The image for the current recipe if a complete one is cached, else None."""
    digest = recipe_hash()
    directory = cache_root() / digest
    return _image(directory, digest, False, 0.0) if _complete(directory) else None


def ensure_image(log: Callable[[str], None] = print) -> BaseImage:
    """Return the cached base image, building it first if the recipe has none yet."""
    started = time.monotonic()
    found = cached_image()
    if found is not None:
        return found
    digest = recipe_hash()
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(root)
    final = root / digest
    if final.exists():  # incomplete leftover under the final name (should not happen: renamed last)
        shutil.rmtree(final)
    work = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=root))
    try:
        _build(work, log)
        (work / "recipe.json").write_text(json.dumps(recipe(), indent=2, sort_keys=True) + "\n")
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return _image(final, digest, True, time.monotonic() - started)


def _remove_stale_builds(root: Path) -> None:
    """Temporary build directories left by crashed runs; one lab build runs at a time."""
    for entry in root.glob(".build-*"):
        shutil.rmtree(entry, ignore_errors=True)


def _run(argv: list[str], log: Callable[[str], None], **kwargs: object) -> None:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"{argv[0]} failed with exit code {proc.returncode}:\n{tail}")


def _build(work: Path, log: Callable[[str], None]) -> None:
    rootfs = work / "rootfs"
    t0 = time.monotonic()
    log(f"image: mmdebstrap {SUITE} ({len(BASE_PACKAGES) + len(BUNDLE_PACKAGES)} packages)")
    argv = [
        "mmdebstrap",
        "--variant=apt",
        "--mode=root",
        "--format=directory",
        "--include=" + ",".join(BASE_PACKAGES + BUNDLE_PACKAGES),
        *(f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES),
        SUITE,
        str(rootfs),
    ]
    _run(argv, log)
    log(f"image: mmdebstrap done in {time.monotonic() - t0:.0f} s")
    _customize(rootfs)
    _run(["systemctl", f"--root={rootfs}", "disable", *STOCK_SERVICES_OFF], log)
    _run(["systemctl", f"--root={rootfs}", "mask", *TIMERS_MASKED], log)
    _run(
        ["systemctl", f"--root={rootfs}", "enable", "systemd-networkd.service", "ostiary-lab-guest.service"],
        log,
    )
    boot = rootfs / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if not kernels or not initrds:
        raise RuntimeError("image: no kernel or initrd under /boot of the new root file system")
    shutil.copy2(kernels[-1], work / "vmlinuz")
    shutil.copy2(initrds[-1], work / "initrd.img")
    t1 = time.monotonic()
    _run(["mkfs.ext4", "-q", "-F", "-L", "ostiary-root", "-d", str(rootfs), str(work / "base.raw"), DISK_SIZE], log)
    log(f"image: mkfs.ext4 -d done in {time.monotonic() - t1:.0f} s")
    shutil.rmtree(rootfs)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _customize(rootfs: Path) -> None:
    _write(rootfs / "etc/fstab", "/dev/vda / ext4 errors=remount-ro 0 1\n")
    _write(rootfs / "etc/hostname", "ostiary-lab\n")
    # A fixed machine-id: an empty one would make systemd treat the first boot as "first boot"
    # and run preset-all, which re-enables the stock services disabled below. Each VM gets its
    # own through the kernel command line (systemd.machine_id=).
    _write(rootfs / "etc/machine-id", hashlib.sha256(b"ostiary-lab").hexdigest()[:32] + "\n", 0o444)
    _write(rootfs / "usr/local/sbin/ostiary-lab-guest", GUEST_SCRIPT, 0o755)
    _write(rootfs / "etc/systemd/system/ostiary-lab-guest.service", GUEST_UNIT)
    _write(rootfs / "etc/systemd/network/10-lab-mgmt.network", MGMT_NETWORK)
    _write(rootfs / "etc/ssh/sshd_config.d/00-ostiary-lab.conf", SSHD_LAB)
    # No host key and no rules in the image: the host keys are injected per VM at boot; the
    # iptables-persistent postinst may have saved the build machine's rules, which a guest must
    # never load.
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for rules in ("rules.v4", "rules.v6"):
        (rootfs / "etc/iptables" / rules).unlink(missing_ok=True)
    # resolv.conf: qemu's user-mode DNS, in case a later step wants a name lookup.
    resolv = rootfs / "etc/resolv.conf"
    if resolv.is_symlink():
        resolv.unlink()
    _write(resolv, "nameserver 10.0.2.3\n")
