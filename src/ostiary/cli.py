"""The ``ostiary`` command line: serve, keys, sessions, doctor, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__


def _passphrase(env: str) -> bytes | None:
    value = os.environ.get(env)
    return value.encode() if value else None


def cmd_serve(args: argparse.Namespace) -> int:
    import tempfile

    from .config import ConfigError, load_settings

    try:
        workers = load_settings(args.config).server.workers
    except ConfigError as exc:
        print(f"ostiary serve: refusing to start: {exc}", file=sys.stderr)
        return 2
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Must be set before prometheus_client is imported: each worker writes its own files.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ostiary-metrics-")
    from .sessiond.server import serve

    return serve(args.config)


def cmd_keys(args: argparse.Namespace) -> int:
    from . import keys

    try:
        if args.keys_command == "generate":
            meta = keys.generate(args.dir, args.alg, args.bits, _passphrase(args.passphrase_env))
            print(meta.kid)
            print(f"generated {meta.alg} key {meta.kid} in state {meta.state}", file=sys.stderr)
        elif args.keys_command == "rotate":
            active, retired = keys.rotate(args.dir, args.max_token_lifetime)
            print(f"active: {active.kid}")
            if retired:
                print(f"retired: {retired.kid} (verifies until {retired.verify_until})")
            print("send SIGHUP to running daemons to load the change", file=sys.stderr)
        elif args.keys_command == "jwks":
            print(json.dumps(keys.public_jwks(args.dir), indent=2))
        elif args.keys_command == "list":
            for meta in sorted(keys._read_metas(args.dir), key=lambda m: m.created_at):
                print(f"{meta.kid}  {meta.alg:6}  {meta.state}")
    except keys.KeyFileError as exc:
        print(f"ostiary keys: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    from .adminclient import AdminClient

    client = AdminClient(args.admin)
    try:
        if args.sessions_command == "issue":
            body: dict[str, object] = {"sub": args.sub}
            if args.mode:
                body["mode"] = args.mode
            if args.ttl:
                body["ttl"] = args.ttl
            if args.bind_cidr:
                body["bind_cidr"] = args.bind_cidr
            if args.claims:
                body["claims"] = json.loads(args.claims)
            status, data = client.issue(body)
        elif args.sessions_command == "revoke":
            status, data = client.revoke(args.session_id)
        elif args.sessions_command == "revoke-subject":
            status, data = client.revoke_subject(args.sub)
        else:
            status, data = client.list(args.sub)
    except (OSError, ValueError) as exc:
        print(f"ostiary sessions: cannot reach the admin API at {args.admin}: {exc}", file=sys.stderr)
        return 2
    if data is not None:
        print(json.dumps(data, indent=2))
    if status >= 400:
        print(f"ostiary sessions: HTTP {status}", file=sys.stderr)
        return 1
    if status == 204:
        print("done", file=sys.stderr)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    code: int = run_doctor(args.config)
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    code: int = demo_main(args.rest)
    return code


def cmd_lab(args: argparse.Namespace) -> int:
    from .lab.cli import main as lab_main

    code: int = lab_main(args.rest)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ostiary", description="Hardened API session layer")
    parser.add_argument("--version", action="version", version=f"ostiary {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the session daemon in the foreground")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keys", help="manage JWT signing keys in a key directory")
    ks = p.add_subparsers(dest="keys_command", required=True)
    g = ks.add_parser("generate", help="write a new key and print its kid")
    g.add_argument("--dir", type=Path, required=True)
    g.add_argument("--alg", choices=["ES256", "RS256", "EdDSA", "HS256"], default="ES256")
    g.add_argument("--bits", type=int, choices=[2048, 3072, 4096], default=2048)
    g.add_argument("--passphrase-env", default="OSTIARY_KEYS_PASSPHRASE",
                   help="encrypt the private key with the passphrase in this variable, if set")  # fmt: skip
    r = ks.add_parser("rotate", help="next -> active, active -> retired")
    r.add_argument("--dir", type=Path, required=True)
    r.add_argument("--max-token-lifetime", type=int, default=43200 + 300,
                   help="seconds the retired key keeps verifying (longest token lifetime + skew)")  # fmt: skip
    j = ks.add_parser("jwks", help="print the public JWKS")
    j.add_argument("--dir", type=Path, required=True)
    li = ks.add_parser("list", help="list keys and their states")
    li.add_argument("--dir", type=Path, required=True)
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("sessions", help="talk to a running daemon's admin API")
    p.add_argument("--admin", default=os.environ.get("OSTIARY_ADMIN", "unix:/run/ostiary/admin.sock"),
                   help="admin API address: unix:/path or HOST:PORT (env OSTIARY_ADMIN)")  # fmt: skip
    ss = p.add_subparsers(dest="sessions_command", required=True)
    i = ss.add_parser("issue")
    i.add_argument("sub")
    i.add_argument("--mode", choices=["jwt", "opaque"])
    i.add_argument("--ttl", type=int)
    i.add_argument("--bind-cidr")
    i.add_argument("--claims", help="extra claims as a JSON object")
    rv = ss.add_parser("revoke")
    rv.add_argument("session_id")
    rs = ss.add_parser("revoke-subject")
    rs.add_argument("sub")
    ls = ss.add_parser("list")
    ls.add_argument("sub")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("doctor", help="run the troubleshooting matrix; non-zero exit on any failure")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("demo", help="local hardened Redis pair + daemon: issue, validate, revoke")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("lab", help="the qemu VM lab: up | apply | check | down | status")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_lab)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
