"""AppArmor role: enforce-mode profiles for the daemon, Redis and nginx; Debian's chronyd enforced.

The three profiles are written for this bundle (least privilege: their config, keys, data, logs
and sockets; no shell, no other binaries) and attached by name from each unit (AppArmorProfile=).
``apparmor_complain`` switches every one of them, chronyd's included, to complain mode for a
rollout. A profile is reloaded with ``apparmor_parser -r`` only when its file changed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Final

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server

from deploys import common
from deploys.render import render

PROFILE_DIR: Final = "/etc/apparmor.d"
PROFILES: Final = ("ostiary-sessiond", "ostiary-redis", "ostiary-nginx")
CHRONYD_PROFILE: Final = "usr.sbin.chronyd"  # shipped by Debian's chrony package

DEFAULTS: dict[str, Any] = {
    "apparmor_complain": False,
    "apparmor_enforce_chronyd": True,
}

SETTINGS_DOC: dict[str, str] = {
    "apparmor_complain": "Load every Ostiary profile (and chronyd's) in complain mode: violations "
    "are logged, not blocked. For a rollout; enforce is the default.",
    "apparmor_enforce_chronyd": "Enforce Debian's chronyd profile (removes it from the disable and "
    "force-complain lists).",
}


def profile_path(data: Any, profile: str) -> str:
    return common.host_path(data, f"{PROFILE_DIR}/{profile}")


def context(data: Any, facts: Mapping[str, Any]) -> dict[str, Any]:
    """Template context: the mode flags and every path a confined service may touch (prefixed).

    ``facts`` is unused today (the profiles do not depend on the host's size); it keeps the
    signature every role shares.
    """
    del facts
    path = common.host_path
    flags = "attach_disconnected, complain" if data.apparmor_complain else "attach_disconnected"
    return {
        "flags": flags,
        "venv": path(data, common.VENV_DIR),
        "etc_dir": path(data, common.ETC_DIR),
        "run_dir": path(data, common.RUN_DIR),
        "redis_run_dir": path(data, common.REDIS_RUN_DIR),
        "redis_conf_dir": path(data, common.REDIS_CONF_DIR),
        "redis_data_root": path(data, common.REDIS_DATA_ROOT),
        "tls_dir": path(data, common.TLS_DIR),
        "tls_ca": path(data, common.TLS_CA_CERT),
        "redis_cert": path(data, common.REDIS_SERVER_CERT),
        "redis_key": path(data, common.REDIS_SERVER_KEY),
        "gateway_cert": path(data, common.GATEWAY_CERT),
        "gateway_key": path(data, common.GATEWAY_KEY),
        "gateway_client_cert": path(data, common.GATEWAY_CLIENT_CERT),
        "gateway_client_key": path(data, common.GATEWAY_CLIENT_KEY),
        "sessiond_socket": path(data, common.SESSIOND_SOCKET),
        "nginx_conf_dir": path(data, "/etc/nginx"),
        "nginx_pid": path(data, "/run/nginx.pid"),
        "nginx_log_dir": path(data, "/var/log/nginx"),
        "nginx_temp_dir": path(data, "/var/lib/nginx"),
        # The daemon's clock check decides which helper program its profile may run.
        "clock_check": str(getattr(data, "sessiond_clock_check", "timedatectl")),
    }


def render_files(data: Any, facts: Mapping[str, Any]) -> dict[str, str]:
    """Every managed profile: path on the host (prefixed) -> rendered content."""
    ctx = context(data, facts)
    return {profile_path(data, name): render(f"apparmor/{name}.j2", **ctx) for name in PROFILES}


@deploy("Ostiary apparmor", data_defaults=DEFAULTS)
def apparmor() -> None:
    """Install and load the profiles; reload each only when it changed."""
    data = host.data
    rendered = render_files(data, {})
    mode_flag = " --complain" if data.apparmor_complain else ""

    apt.packages(name="AppArmor userspace", packages=["apparmor"])
    for name in PROFILES:
        path = profile_path(data, name)
        op = files.put(
            name=f"AppArmor profile {name}",
            src=io.StringIO(rendered[path]),
            dest=path,
            user="root",
            group="root",
            mode="0644",
        )
        server.shell(
            name=f"Load AppArmor profile {name}",
            commands=[f"apparmor_parser -r -W {path}"],
            _if=op.did_change,
        )

    if data.apparmor_enforce_chronyd:
        chronyd = profile_path(data, CHRONYD_PROFILE)
        unlisted = [
            files.file(
                name=f"chronyd profile not in {folder}/",
                path=common.host_path(data, f"{PROFILE_DIR}/{folder}/{CHRONYD_PROFILE}"),
                present=False,
            )
            for folder in ("disable", "force-complain")
        ]
        switch = files.put(
            name="Record the chronyd profile mode",
            src=io.StringIO(f"{'complain' if data.apparmor_complain else 'enforce'}\n"),
            dest=common.host_path(data, "/etc/ostiary/apparmor-chronyd.mode"),
            mode="0644",
        )
        server.shell(
            name="Load Debian's chronyd profile",
            commands=[f"apparmor_parser -r -W{mode_flag} {chronyd}"],
            _if=lambda: any(op.did_change() for op in (*unlisted, switch)),
        )
