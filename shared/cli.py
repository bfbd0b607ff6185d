"""``teamdash``: the one command line of the project.

``teamdash up`` starts the whole stack; ``teamdash gateway|runner|collector`` runs one
service (what ``up`` and the compose stack start); ``teamdash token`` mints a dev JWT.
"""

from __future__ import annotations

import argparse
import sys

from shared.settings import ConfigError, Env


def _gateway(args: argparse.Namespace) -> int:
    from gateway.server import main
    from gateway.settings import GatewaySettings
    from shared.service import run

    settings = GatewaySettings.from_env(Env())
    if args.port is not None:
        settings = _replace(settings, port=args.port)
    run("gateway", settings.common, lambda stop: main(settings, stop))
    return 0


def _runner(args: argparse.Namespace) -> int:
    from agent_runner.service import main
    from agent_runner.settings import RunnerSettings
    from shared.service import run

    settings = RunnerSettings.from_env(Env())
    run("runner", settings.common, lambda stop: main(settings, stop))
    return 0


def _collector(args: argparse.Namespace) -> int:
    from metrics_collector.service import main
    from metrics_collector.settings import CollectorSettings
    from shared.service import run

    settings = CollectorSettings.from_env(Env())
    run("collector", settings.common, lambda stop: main(settings, stop))
    return 0


def _up(args: argparse.Namespace) -> int:
    from shared.stack import up

    return up(gateways=args.gateways, port=args.port)


def _token(args: argparse.Namespace) -> int:
    from shared.settings import CommonSettings
    from shared.tokens import ROLES, load_or_create_dev_secret, mint_token

    env = Env()
    secret = env.opt_str("TEAMDASH_JWT_SECRET") or load_or_create_dev_secret(
        CommonSettings.from_env(env).state_dir
    )
    for role in args.role:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    token = mint_token(secret, args.user, roles=tuple(args.role or ["admin"]), ttl_s=args.ttl)
    print(f"# user {args.user}, roles {','.join(args.role or ['admin'])}, valid {args.ttl}s", file=sys.stderr)
    print(token)
    return 0


def _replace(settings, **changes):  # type: ignore[no-untyped-def]
    import dataclasses

    return dataclasses.replace(settings, **changes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teamdash", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start Redis, gateway, agent runner and metrics collector")
    p.add_argument("--port", type=int, default=None, help="gateway port (default 3001)")
    p.add_argument("--gateways", type=int, default=1, help="gateway processes (default 1)")
    p.set_defaults(func=_up)

    p = sub.add_parser("gateway", help="run one WebSocket gateway")
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=_gateway)

    p = sub.add_parser("runner", help="run one agent runner")
    p.set_defaults(func=_runner)

    p = sub.add_parser("collector", help="run the metrics collector")
    p.set_defaults(func=_collector)

    p = sub.add_parser("token", help="mint a dev JWT (printed alone on the last line)")
    p.add_argument("--user", default="dev", help="user id (sub claim), default 'dev'")
    p.add_argument(
        "--role", action="append", default=[], help="viewer, operator or admin (repeatable; default admin)"
    )
    p.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (max 3600)")
    p.set_defaults(func=_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"teamdash: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
