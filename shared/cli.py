"""``teamdash``: the one command line of the project.

``teamdash up`` starts the whole stack (``--lb``: behind HAProxy, as compose does);
``teamdash gateway|runner|collector`` runs one service (what ``up`` and the compose stack
start); ``teamdash health`` checks one (compose health checks); ``teamdash token`` mints a
dev JWT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from shared.settings import PREFIX, CommonSettings, ConfigError, Env, unknown_variables
from shared.topics import ALERT_CATEGORY_ORDER, ALERT_LEVEL_ORDER

if TYPE_CHECKING:
    from shared.client import DashboardClient, DashboardEvent, StateChange, Subscription
    from shared.protocol import (
        AgentInfo,
        AgentOutputPayload,
        MetricsUpdatePayload,
        SystemAlertMessage,
    )


#: Variables of the client commands (read here, not by a service's settings object).
CLIENT_VARIABLES = ("TEAMDASH_URL", "TEAMDASH_TOKEN")


def known_variables() -> frozenset[str]:
    """Every ``TEAMDASH_*`` variable that something reads: what each service's settings
    object asks for (each ``from_env`` run against an empty environment and a throwaway
    state folder, recording the names — no hand-kept list to forget a variable in), and the
    client commands' :data:`CLIENT_VARIABLES`. Every service counts, not only the one
    starting: ``teamdash up`` and compose's shared block give each service all of them."""
    import tempfile

    from agent_runner.settings import RunnerSettings
    from gateway.settings import GatewaySettings
    from metrics_collector.settings import CollectorSettings

    with tempfile.TemporaryDirectory(prefix="teamdash-known-") as tmp:
        probe = Env({"TEAMDASH_STATE_DIR": tmp, "HOME": tmp})
        for settings in (GatewaySettings, RunnerSettings, CollectorSettings):
            # The defaults are valid (tests/shared/test_settings.py); should one not be, the
            # names asked so far still count and the service starts anyway: the warning is
            # a help, not a gate.
            with contextlib.suppress(ConfigError):
                settings.from_env(probe)
    return frozenset(n for n in probe.asked if n.startswith(PREFIX)) | set(CLIENT_VARIABLES)


def _serve(
    service: str, common: CommonSettings, main: Callable[[asyncio.Event], Awaitable[None]]
) -> None:
    """Run a service; first, once, warn about every ``TEAMDASH_*`` variable nothing reads
    (a typo would otherwise silently leave the default in force)."""
    import logging

    from shared.service import run

    unknown = unknown_variables(os.environ, known_variables())

    async def warned(stop: asyncio.Event) -> None:
        log = logging.getLogger(f"{service}.config")
        for name, closest in unknown:
            hint = f"; did you mean {closest}?" if closest else ""
            log.warning("unknown variable %s is ignored%s", name, hint)
        await main(stop)

    run(service, common, warned)


def _gateway(args: argparse.Namespace) -> int:
    from gateway.server import main
    from gateway.settings import GatewaySettings

    settings = GatewaySettings.from_env(Env())
    if args.port is not None:
        settings = dataclasses.replace(settings, port=args.port)
    _serve("gateway", settings.common, lambda stop: main(settings, stop))
    return 0


#: In ``TEAMDASH_RUNNER_ID``, replaced by the host name (a container's own, in compose).
HOSTNAME_PLACEHOLDER = "{hostname}"


def service_env() -> Env:
    """The environment of a service command, with :data:`HOSTNAME_PLACEHOLDER` in
    ``TEAMDASH_RUNNER_ID`` replaced: compose sets ``runner-{hostname}`` once for every
    replica, so ``--scale agent-runner=3`` gives three ids (one per container, kept across
    that container's restarts) instead of three runners fencing each other on one."""
    value = os.environ.get("TEAMDASH_RUNNER_ID", "")
    if HOSTNAME_PLACEHOLDER not in value:
        return Env()
    import socket

    host = socket.gethostname().split(".")[0] or "runner"
    return Env({**os.environ, "TEAMDASH_RUNNER_ID": value.replace(HOSTNAME_PLACEHOLDER, host)})


def _runner(args: argparse.Namespace) -> int:
    from agent_runner.service import main
    from agent_runner.settings import RunnerSettings

    settings = RunnerSettings.from_env(service_env())
    _serve("runner", settings.common, lambda stop: main(settings, stop))
    return 0


def _collector(args: argparse.Namespace) -> int:
    from metrics_collector.service import main
    from metrics_collector.settings import CollectorSettings

    settings = CollectorSettings.from_env(Env())
    _serve("collector", settings.common, lambda stop: main(settings, stop))
    return 0


def _up(args: argparse.Namespace) -> int:
    from shared.stack import up, up_lb

    if args.lb:
        return up_lb(gateways=3 if args.gateways is None else args.gateways, port=args.port)
    return up(gateways=1 if args.gateways is None else args.gateways, port=args.port)


def _token(args: argparse.Namespace) -> int:
    """Mint a token the way the gateway checks them: HS256 with the shared secret, or with
    ``--private-key`` RS256/ES256 (from the key type, or ``TEAMDASH_JWT_ALGORITHM``), with
    the ``iss``/``aud`` claims of ``TEAMDASH_JWT_ISSUER``/``TEAMDASH_JWT_AUDIENCE``."""
    from pathlib import Path

    from shared.tokens import (
        ASYMMETRIC_ALGORITHMS,
        ROLES,
        KeyConfigError,
        jwt_secret,
        load_private_key,
        mint_token,
    )

    env = Env()
    for role in args.role:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if not 1 <= args.ttl <= 3600:
        raise ConfigError("--ttl must be 1 to 3600 seconds (the gateway refuses longer tokens)")
    configured = (env.opt_str("TEAMDASH_JWT_ALGORITHM") or "HS256").upper()
    key: Any
    if args.private_key is not None:
        try:
            pem = Path(args.private_key).read_bytes()
        except OSError as e:
            raise ConfigError(f"--private-key {args.private_key!r} cannot be read: {e}") from e
        wanted = configured if configured in ASYMMETRIC_ALGORITHMS else None
        try:
            key, algorithm = load_private_key(pem, wanted)
        except KeyConfigError as e:
            raise ConfigError(f"--private-key {args.private_key!r}: {e}") from e
    elif configured in ASYMMETRIC_ALGORITHMS:
        raise ConfigError(
            f"TEAMDASH_JWT_ALGORITHM={configured}: tokens are signed with the private key; "
            "pass --private-key FILE"
        )
    else:
        key, algorithm = jwt_secret(env, CommonSettings.from_env(env).state_dir), "HS256"
    roles = tuple(args.role or ["admin"])
    token = mint_token(
        key,
        args.user,
        roles=roles,
        ttl_s=args.ttl,
        algorithm=algorithm,
        issuer=env.opt_str("TEAMDASH_JWT_ISSUER"),
        audience=env.opt_str("TEAMDASH_JWT_AUDIENCE"),
    )
    print(
        f"# user {args.user}, roles {','.join(roles)}, {algorithm}, valid {args.ttl}s",
        file=sys.stderr,
    )
    print(token)
    return 0


def _health(args: argparse.Namespace) -> int:
    """Exit 0 when the service is healthy, 1 otherwise, with one line saying why (compose
    health checks). A gateway is asked for ``/readyz``; a runner or a collector is healthy
    when its heartbeat key in Redis is fresh (those keys expire after a few missed beats)."""
    import socket

    env = service_env()
    if args.service == "gateway":
        return _gateway_health(env, args.port)

    import orjson
    import redis
    from redis.exceptions import RedisError

    from shared.keys import Keys

    keys = Keys(CommonSettings.from_env(env).redis_prefix)
    host = socket.gethostname()
    client = redis.Redis.from_url(redis_url(env), socket_timeout=3, socket_connect_timeout=3)
    runner_id = env.opt_str("TEAMDASH_RUNNER_ID") if args.service == "runner" else None
    # With a runner id the key itself is this runner's; otherwise a heartbeat is this
    # host's when it names the host (in a container: the container's own hostname).
    same_host_only = not args.any and runner_id is None
    try:
        if args.service == "runner":
            if runner_id is not None and not args.any:
                ids = [runner_id]
            else:
                ids = [
                    m.decode() for m in client.zrange(keys.runners, 0, -1) if isinstance(m, bytes)
                ]
            beats = client.mget([keys.runner(i) for i in ids]) if ids else []
        else:
            names = list(client.scan_iter(match=keys.collector("*"), count=100))
            beats = client.mget(names) if names else []
    except RedisError as e:
        print(f"unhealthy: redis unreachable: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    mine = []
    for raw in beats:
        if raw is None:  # expired between the listing and the read: not fresh
            continue
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not same_host_only or doc.get("host") == host:
            mine.append(doc)
    if not mine:
        where = f"of runner {runner_id}" if runner_id and not args.any else "from any host"
        if same_host_only:
            where = f"from host {host}"
        print(f"unhealthy: no fresh {args.service} heartbeat {where} in Redis", file=sys.stderr)
        return 1
    found = ", ".join(str(d.get("runnerId") or d.get("id") or "?") for d in mine)
    print(f"ok: {args.service} heartbeat fresh ({found})")
    return 0


def redis_url(env: Env) -> str:
    """The Redis of the CLI's commands: ``REDIS_URL``, else the one of the ``teamdash up``
    running from this state folder (its ``up.json``), else the default (port 6379)."""
    from shared.stack import read_up_state

    common = CommonSettings.from_env(env)
    if env.opt_str("REDIS_URL") is None:
        state = read_up_state(common.state_dir)
        if state is not None:
            return state.redis_url
    return common.redis_url


def _gateway_health(env: Env, port: int | None) -> int:
    import http.client

    from shared.stack import read_up_state

    host = env.str("TEAMDASH_GATEWAY_HOST", "127.0.0.1")
    if host in ("0.0.0.0", "::", "*"):
        host = "127.0.0.1"
    if port is None and env.opt_str("TEAMDASH_GATEWAY_PORT") is None:
        # The port of the ``teamdash up`` of this state folder (e.g. ``up --port 4000``).
        state = read_up_state(CommonSettings.from_env(env).state_dir)
        port = state.gateway_port if state is not None else None
    port = port if port is not None else env.int("TEAMDASH_GATEWAY_PORT", 3001, min=1)
    conn: http.client.HTTPConnection
    if env.opt_str("TEAMDASH_TLS_CERT_FILE"):
        import ssl

        # The gateway serves wss:// itself: ask over TLS. Its certificate names the public
        # host, not the loopback address this check uses, so it is not verified here.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=4, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=4)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        body = response.read().decode(errors="replace").strip()
    except (OSError, http.client.HTTPException) as e:
        print(f"unhealthy: gateway at {host}:{port} unreachable: {e}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if response.status != 200:
        print(f"unhealthy: gateway /readyz answered {response.status}: {body}", file=sys.stderr)
        return 1
    print(f"ok: gateway {host}:{port} {body}")
    return 0


# ---------------------------------------------------------------------------
# Client commands: operators' views on a running stack, over the WebSocket protocol only
# (shared.client.DashboardClient; no Redis access). Progress and reconnection notices go to
# stderr, results to stdout. Exit codes: 0 ok, 1 error (the spec's code name is in the
# message), 2 usage.
# ---------------------------------------------------------------------------

DEFAULT_URL = "ws://127.0.0.1:3001/ws"
#: Seconds a client command keeps reconnecting before it gives up (``--give-up-after``).
DEFAULT_GIVE_UP_AFTER_S = 60.0
ALERT_LEVELS = ALERT_LEVEL_ORDER
ALERT_CATEGORIES = ALERT_CATEGORY_ORDER


#: What a client command runs: ``await body(client, args, progress)`` → exit code.
ClientBody = Callable[["DashboardClient", argparse.Namespace, "_Progress"], Awaitable[int]]


class _Progress:
    """Status lines on stderr (silenced by ``--quiet``), and the client's state changes."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"teamdash: {text}", file=sys.stderr, flush=True)

    def on_state(self, change: StateChange) -> None:
        state = change.state
        if state == "disconnected":
            self.say(
                f"connection lost ({change.code or 'no close code'} {change.reason or ''})".rstrip()
            )
        elif state == "reconnecting":
            self.say(f"reconnecting in {change.delay or 0:.1f}s (attempt {change.attempt})…")
        elif state == "reconnected" and change.status is not None:
            status = change.status
            if status.resumed:
                lost = (
                    "" if status.recovered else f", {status.missed} events were too old to replay"
                )
                self.say(
                    f"reconnected to gateway {status.gatewayId}: session resumed, "
                    f"{status.replayed} missed events replayed{lost}"
                )
            else:
                self.say(
                    f"reconnected to gateway {status.gatewayId}: the session could not be resumed; "
                    "subscribing again (events in between are lost)"
                )
        elif state == "failed":
            self.say(f"giving up: {change.error}")


def _client_token(args: argparse.Namespace) -> str | Callable[[], str]:
    """``--token``, else ``$TEAMDASH_TOKEN``, else a provider minting a fresh dev token (user
    ``--user``, role admin) from the local secret for every connection, like ``teamdash token``."""
    token = args.token or os.environ.get(CLIENT_VARIABLES[1])
    if token:
        return token
    from shared.tokens import jwt_secret, mint_token

    env = Env()
    secret = jwt_secret(env, CommonSettings.from_env(env).state_dir)
    user = args.user
    issuer, audience = env.opt_str("TEAMDASH_JWT_ISSUER"), env.opt_str("TEAMDASH_JWT_AUDIENCE")
    return lambda: mint_token(
        secret, user, roles=("admin",), ttl_s=3600, issuer=issuer, audience=audience
    )


def _client_command(body: ClientBody) -> Callable[[argparse.Namespace], int]:
    """An argparse ``func`` running ``await body(client, args, progress)`` on a connected client."""

    def run(args: argparse.Namespace) -> int:
        return asyncio.run(_with_client(args, body))

    return run


class _OutageLimit:
    """Ends a client command when the connection stays lost for ``limit_s`` (0 = never).

    The client itself reconnects forever, which is right for a dashboard; a command in a
    terminal or a script must instead say that the stack is gone and exit. The clock starts
    at the first ``disconnected`` and stops at ``reconnected``; when it runs out, the
    command's ``asyncio.timeout`` fires and :func:`_with_client` reports it."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.scope: asyncio.Timeout | None = None
        self._lost = False

    def on_state(self, change: StateChange) -> None:
        if self.scope is None or self.limit_s <= 0:
            return
        if change.state == "disconnected" and not self._lost:
            self._lost = True
            self.scope.reschedule(asyncio.get_running_loop().time() + self.limit_s)
        elif change.state == "reconnected":
            self._lost = False
            self.scope.reschedule(None)

    @property
    def expired(self) -> bool:
        return self.scope is not None and self.scope.expired()


async def _with_client(args: argparse.Namespace, body: ClientBody) -> int:
    from shared.client import ClientError, DashboardClient

    progress = _Progress(args.quiet)
    outage = _OutageLimit(args.give_up_after)

    def on_state(change: StateChange) -> None:
        progress.on_state(change)
        outage.on_state(change)

    token = _client_token(args)
    progress.say(f"connecting to {args.url}…")
    client = DashboardClient(args.url, token, client_id=f"cli-{os.getpid()}", on_state=on_state)
    try:
        async with client:
            progress.say(f"connected to gateway {client.gateway_id} as {client.user_id}")
            async with asyncio.timeout(None) as outage.scope:
                return int(await body(client, args, progress))
    except ClientError as e:
        print(f"teamdash: error: {e.code.name} ({int(e.code)}): {e.message}", file=sys.stderr)
        return 1
    except TimeoutError:
        if not outage.expired:
            raise
        print(
            f"teamdash: error: SERVICE_UNAVAILABLE (3002): no gateway at {args.url} answered "
            f"for {args.give_up_after:g}s; giving up (is the stack running?)",
            file=sys.stderr,
        )
        return 1


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000))


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_metrics(payload: MetricsUpdatePayload) -> str:
    """One line for a ``metrics:update`` payload (``teamdash metrics watch``)."""
    parts = []
    system = payload.system
    if system is not None:
        cpu, mem, disk, net = system.cpu, system.memory, system.disk, system.network
        parts.append(f"CPU {cpu.usage:5.1f}% of {cpu.cores} cores")
        parts.append(f"MEM {_bytes(mem.used)} / {_bytes(mem.total)} ({mem.percent:.1f}%)")
        parts.append(f"DISK {disk.percent:.1f}% of {_bytes(disk.total)}")
        if net.bytesInPerSec is not None and net.bytesOutPerSec is not None:
            parts.append(f"NET in {_bytes(net.bytesInPerSec)}/s out {_bytes(net.bytesOutPerSec)}/s")
        else:
            parts.append(f"NET in {_bytes(net.bytesIn)} out {_bytes(net.bytesOut)} total")
    if payload.agents is not None:
        agents = payload.agents
        cpu_sum = sum(a.cpu for a in agents)
        mem_sum = sum(a.memory for a in agents)
        parts.append(f"AGENTS {len(agents)} (cpu {cpu_sum:.1f}%, mem {_bytes(mem_sum)})")
    return " | ".join(parts)


def format_agent_event(event: DashboardEvent) -> str:
    """One line for an agent lifecycle event (``teamdash agents watch``)."""
    from shared.protocol import AgentCreatedMessage, AgentErrorMessage, AgentStatusMessage

    when = _clock(event.timestamp)
    if isinstance(event, AgentCreatedMessage):
        p = event.payload
        return f"{when}  {p.agentId}  created  name={p.name} pid={p.pid}"
    if isinstance(event, AgentStatusMessage):
        extra = ""
        d = event.payload.details
        if d is not None:
            fields = (
                ("pid", d.pid),
                ("exitCode", d.exitCode),
                ("signal", d.signal),
                ("reason", d.reason),
            )
            bits = [f"{k}={v}" for k, v in fields if v is not None]
            extra = "  " + " ".join(bits) if bits else ""
        return f"{when}  {event.payload.agentId}  {event.payload.status}{extra}"
    if isinstance(event, AgentErrorMessage):
        e = event.payload.error
        return f"{when}  {event.payload.agentId}  error  {e.code}: {e.message}"
    return f"{when}  {event.type}"


def format_alert(event: SystemAlertMessage) -> str:
    """One line for a ``system:alert`` (``teamdash logs watch``)."""
    p = event.payload
    return f"{_clock(event.timestamp)}  {p.level.upper():8} {p.category:11} {p.message}"


def format_agent_row(agent: AgentInfo) -> str:
    """One line for an agent of ``agent:list`` (``teamdash agents list``)."""
    uptime = f"{agent.uptime // 1000}s" if agent.uptime is not None else "-"
    pid = str(agent.pid) if agent.pid is not None else "-"
    return (
        f"{agent.agentId}  {agent.status:8} {agent.name}  model={agent.model} "
        f"owner={agent.owner} pid={pid} uptime={uptime} runner={agent.runner}"
    )


async def _agents_list(
    client: DashboardClient, args: argparse.Namespace, progress: _Progress
) -> int:
    after: str | None = None
    while True:
        page = await client.list_agents(
            status=args.status or None,
            owner=args.owner,
            include_ended=args.all,
            limit=args.page_size,
            after=after,
        )
        if after is None:
            progress.say(f"{page.total} agents (agents topic at offset {page.position.offset})")
        for agent in page.agents:
            print(
                agent.model_dump_json(exclude_none=True) if args.json else format_agent_row(agent)
            )
        if page.next is None:
            return 0
        after = page.next


async def _agents_watch(
    client: DashboardClient, args: argparse.Namespace, progress: _Progress
) -> int:
    sub = await client.subscribe_agent()
    progress.say("watching agent lifecycle events (Ctrl-C to stop)…")
    seen = 0
    async for event in sub:
        print(format_agent_event(event), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            break
    return 0


async def _agent_create(
    client: DashboardClient, args: argparse.Namespace, progress: _Progress
) -> int:
    if (args.memory is None) != (args.cpu is None):
        print(
            "teamdash: error: --memory and --cpu go together (the protocol needs both)",
            file=sys.stderr,
        )
        return 2
    progress.say(f"creating agent {args.name} (model {args.model}): waiting for a runner…")
    created = await client.create_agent(
        args.name,
        args.model,
        args.workspace,
        environment=dict(args.env) or None,
        memory_mb=args.memory,
        cpu=args.cpu,
    )
    progress.say(f"agent {args.name} started (pid {created.pid})")
    print(created.agent_id, flush=True)
    return 0


async def _agent_command(
    client: DashboardClient, args: argparse.Namespace, progress: _Progress
) -> int:
    progress.say(f"sending the command to agent {args.agent_id}…")
    await client.send_command(
        args.agent_id, args.text, timeout_ms=args.timeout_ms, interactive=args.interactive or None
    )
    progress.say("command delivered (follow its output with `teamdash agent tail`)")
    return 0


async def _agent_permission(
    client: DashboardClient, args: argparse.Namespace, progress: _Progress
) -> int:
    progress.say(f"answering permission request {args.request_id} of agent {args.agent_id}…")
    result = await client.answer_permission(
        args.agent_id, args.request_id, args.decision == "allow", args.message
    )
    done = "allowed" if args.decision == "allow" else "denied"
    progress.say(f"{result.get('tool', 'the tool')} {done} (its turn goes on)")
    return 0


def format_output(payload: AgentOutputPayload) -> str:
    """What ``teamdash agent tail`` prints for one output event: its readable text, and
    under a permission request or a question the command that answers it."""
    from shared.protocol import InputRequestEvent, PermissionRequestEvent

    event = payload.event
    if isinstance(event, PermissionRequestEvent):
        text = payload.data or f"[permission] {event.tool} {event.summary}: allow or deny?"
        answer = f"teamdash agent permission {payload.agentId} {event.requestId} allow|deny"
    elif isinstance(event, InputRequestEvent):
        # A plain line tool's question was printed already (data is empty then).
        text = payload.data
        answer = f"teamdash agent command {payload.agentId} REPLY"
    else:
        return payload.data
    return text.rstrip("\n") + f"\n  answer: {answer}\n"


async def _agent_control(
    client: DashboardClient, args: argparse.Namespace, progress: _Progress
) -> int:
    action = args.action
    progress.say(f"asking the runner to {action} agent {args.agent_id}…")
    if action == "pause":
        await client.pause(args.agent_id)
    elif action == "resume":
        await client.resume(args.agent_id)
    else:
        await client.terminate(args.agent_id, force=args.force)
    done = {"pause": "paused", "resume": "resumed", "terminate": "terminated"}[action]
    progress.say(f"agent {args.agent_id} {done}")
    return 0


def _show_event(event: DashboardEvent, agent_id: str, progress: _Progress) -> int | None:
    """Print one event of an agent's topic (``agent tail``, ``agent logs``): output to
    stdout or stderr, statuses and errors to stderr. The exit code when it is the agent's
    final status, else None."""
    from shared.protocol import AgentErrorMessage, AgentOutputMessage, AgentStatusMessage

    if isinstance(event, AgentOutputMessage):
        out = sys.stderr if event.payload.stream == "stderr" else sys.stdout
        out.write(format_output(event.payload))
        out.flush()
    elif isinstance(event, AgentStatusMessage):
        state = event.payload.status
        progress.say(f"agent {state}")
        d = event.payload.details
        # A final status is printed even with --quiet: a script learns why the agent
        # ended (``stopped (runner-stopped)`` when the stack stops).
        if state == "crashed":
            why = f" ({d.reason or ''} exit code {d.exitCode} signal {d.signal})" if d else ""
            print(f"teamdash: agent {agent_id} crashed{why}", file=sys.stderr)
            return 1
        if state == "stopped":
            why = f" ({d.reason})" if d is not None and d.reason else ""
            print(f"teamdash: agent {agent_id} stopped{why}", file=sys.stderr)
            return 0
    elif isinstance(event, AgentErrorMessage):
        e = event.payload.error
        print(f"teamdash: agent error {e.code}: {e.message}", file=sys.stderr, flush=True)
    return None


async def _follow(
    sub: Subscription, args: argparse.Namespace, progress: _Progress, chunks: int = 0
) -> int:
    """Print ``sub``'s events until the agent ends (or ``--count`` output events)."""
    from shared.protocol import AgentOutputMessage

    async for event in sub:
        code = _show_event(event, args.agent_id, progress)
        if code is not None:
            return code
        if isinstance(event, AgentOutputMessage):
            chunks += 1
            if args.count and chunks >= args.count:
                return 0
    return 0


async def _agent_tail(
    client: DashboardClient, args: argparse.Namespace, progress: _Progress
) -> int:
    sub = await client.subscribe_agent(args.agent_id)
    progress.say(f"tailing agent {args.agent_id} (Ctrl-C to stop)…")
    return await _follow(sub, args, progress)


async def _agent_logs(
    client: DashboardClient, args: argparse.Namespace, progress: _Progress
) -> int:
    """Everything the agent printed (its transcript, a page at a time); ``--follow``: then
    live from where the history ended, until the agent ends."""
    from shared.protocol import StreamPosition

    position: StreamPosition | None = None
    ended: int | None = None
    async for page in client.history(args.agent_id, page_size=args.page_size):
        if page.missed:
            print(
                f"teamdash: {page.missed} earlier events are no longer kept",
                file=sys.stderr,
                flush=True,
            )
        for event in page.events:
            code = _show_event(event, args.agent_id, progress)
            ended = code if code is not None else ended
        position = page.position
    if not args.follow or ended is not None:
        return ended or 0
    sub = await client.subscribe_agent(args.agent_id, since=position)
    progress.say(f"following agent {args.agent_id} (Ctrl-C to stop)…")
    return await _follow(sub, args, progress)


async def _metrics_watch(
    client: DashboardClient, args: argparse.Namespace, progress: _Progress
) -> int:
    from shared.protocol import MetricsUpdateMessage

    count = 1 if args.once else args.count
    sub = await client.subscribe_metrics()
    progress.say("watching metrics (Ctrl-C to stop)…")
    refresh = sys.stdout.isatty() and count != 1
    seen = 0
    async for event in sub:
        if not isinstance(event, MetricsUpdateMessage):
            continue
        line = format_metrics(event.payload)
        if refresh:
            sys.stdout.write("\r\x1b[K" + line)
            sys.stdout.flush()
        else:
            print(line, flush=True)
        seen += 1
        if count and seen >= count:
            break
    if refresh:
        print()
    return 0


async def _logs_watch(
    client: DashboardClient, args: argparse.Namespace, progress: _Progress
) -> int:
    from shared import protocol

    levels = ALERT_LEVELS[ALERT_LEVELS.index(args.level) :]
    filters = list(levels) if args.level != "info" else []
    filters += args.category
    sub = await client.subscribe_logs(filters or None)
    progress.say("watching alerts (Ctrl-C to stop)…")
    seen = 0
    async for event in sub:
        if not isinstance(event, protocol.SystemAlertMessage):
            continue
        print(format_alert(event), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            break
    return 0


def _add_client_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get(CLIENT_VARIABLES[0]) or DEFAULT_URL,
        help=f"gateway WebSocket URL (default $TEAMDASH_URL or {DEFAULT_URL})",
    )
    common.add_argument(
        "--token",
        default=None,
        help="JWT (default $TEAMDASH_TOKEN, else one minted from the local dev secret)",
    )
    common.add_argument("--user", default="dev", help="user of a minted token (default 'dev')")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    common.add_argument(
        "--give-up-after",
        type=float,
        default=DEFAULT_GIVE_UP_AFTER_S,
        metavar="SECONDS",
        help="exit 1 when the connection stays lost this long (default "
        f"{DEFAULT_GIVE_UP_AFTER_S:g}; 0 = reconnect forever)",
    )
    counted = argparse.ArgumentParser(add_help=False)
    counted.add_argument(
        "--count", type=int, default=0, help="stop after N events (default: never)"
    )

    p = sub.add_parser("agents", help="list, or watch the lifecycle of, every agent you may see")
    verbs = p.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", parents=[common], help="the agents you may see, oldest first")
    ls.add_argument(
        "--status",
        action="append",
        default=[],
        choices=("starting", "running", "paused", "stopping", "stopped", "crashed"),
        help="only agents in this status (repeatable)",
    )
    ls.add_argument("--owner", default=None, help="only this user's agents")
    ls.add_argument(
        "--all", action="store_true", help="also agents that ended within the history TTL"
    )
    ls.add_argument("--page-size", type=int, default=100, help="agents per request (1-1000)")
    ls.add_argument("--json", action="store_true", help="one JSON object per agent")
    ls.set_defaults(func=_client_command(_agents_list))
    w = verbs.add_parser("watch", parents=[common, counted], help="live agent lifecycle events")
    w.set_defaults(func=_client_command(_agents_watch))

    p = sub.add_parser("agent", help="create and control one agent")
    verbs = p.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser(
        "create", parents=[common], help="create an agent; prints its id alone on the last line"
    )
    c.add_argument("name")
    c.add_argument("--model", required=True, help="a model of the runners' model configuration")
    c.add_argument("--workspace", required=True, help="workspace folder (inside the runner's root)")
    c.add_argument(
        "--env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the agent (repeatable)",
    )
    c.add_argument(
        "--memory", type=float, default=None, metavar="MB", help="memory limit (with --cpu)"
    )
    c.add_argument("--cpu", type=float, default=None, metavar="N", help="CPU cores (with --memory)")
    c.set_defaults(func=_client_command(_agent_create))
    c = verbs.add_parser("command", parents=[common], help="send a command to an agent's stdin")
    c.add_argument("agent_id", metavar="ID")
    c.add_argument("text")
    c.add_argument("--timeout-ms", type=int, default=None, help="AGENT_COMMAND_TIMEOUT after this")
    c.add_argument("--interactive", action="store_true")
    c.set_defaults(func=_client_command(_agent_command))
    c = verbs.add_parser(
        "permission",
        parents=[common],
        help="answer an agent's permission request (shown by `teamdash agent tail`)",
    )
    c.add_argument("agent_id", metavar="ID")
    c.add_argument("request_id", metavar="REQUEST_ID", help="the request's id (requestId)")
    c.add_argument("decision", choices=("allow", "deny"))
    c.add_argument("--message", default=None, help="with deny: told to the agent (why not)")
    c.set_defaults(func=_client_command(_agent_permission))
    for action in ("pause", "resume", "terminate"):
        c = verbs.add_parser(action, parents=[common], help=f"{action} an agent")
        c.add_argument("agent_id", metavar="ID")
        if action == "terminate":
            c.add_argument("--force", action="store_true", help="SIGKILL at once, no grace period")
        c.set_defaults(func=_client_command(_agent_control), action=action, force=False)
    c = verbs.add_parser(
        "logs",
        parents=[common, counted],
        help="print everything an agent printed (its transcript); --follow: then live",
    )
    c.add_argument("agent_id", metavar="ID")
    c.add_argument("-f", "--follow", action="store_true", help="go on live until it stops")
    c.add_argument("--page-size", type=int, default=1000, help="events per request (1-1000)")
    c.set_defaults(func=_client_command(_agent_logs))
    c = verbs.add_parser(
        "tail",
        parents=[common, counted],
        help="stream an agent's output live (stderr to stderr) until it stops",
    )
    c.add_argument("agent_id", metavar="ID")
    c.set_defaults(func=_client_command(_agent_tail))

    p = sub.add_parser("metrics", help="watch system metrics")
    verbs = p.add_subparsers(dest="verb", required=True)
    w = verbs.add_parser(
        "watch", parents=[common, counted], help="a live line of CPU, memory, disk, network, agents"
    )
    w.add_argument("--once", action="store_true", help="print one update and exit")
    w.set_defaults(func=_client_command(_metrics_watch))

    p = sub.add_parser("logs", help="watch system alerts")
    verbs = p.add_subparsers(dest="verb", required=True)
    w = verbs.add_parser("watch", parents=[common, counted], help="live system alerts")
    w.add_argument(
        "--level", choices=ALERT_LEVELS, default="info", help="minimum level (default info)"
    )
    w.add_argument(
        "--category",
        choices=ALERT_CATEGORIES,
        action="append",
        default=[],
        help="only these categories (repeatable)",
    )
    w.set_defaults(func=_client_command(_logs_watch))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teamdash", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start Redis, gateway, agent runner and metrics collector")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="gateway port, or with --lb HAProxy's port (default 3001)",
    )
    p.add_argument(
        "--gateways", type=int, default=None, help="gateway processes (default 1; with --lb 3)"
    )
    p.add_argument(
        "--lb",
        action="store_true",
        help="the load-balanced topology: HAProxy (deploy/haproxy.cfg) in front of gateways "
        "on their own ports, as in compose.yaml; needs the haproxy binary",
    )
    p.set_defaults(func=_up)

    p = sub.add_parser("gateway", help="run one WebSocket gateway")
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=_gateway)

    p = sub.add_parser("runner", help="run one agent runner")
    p.set_defaults(func=_runner)

    p = sub.add_parser("collector", help="run the metrics collector")
    p.set_defaults(func=_collector)

    p = sub.add_parser("health", help="exit 0 if a service is healthy, 1 if not (health checks)")
    p.add_argument("service", choices=("gateway", "runner", "collector"))
    p.add_argument(
        "--port", type=int, default=None, help="gateway port (default TEAMDASH_GATEWAY_PORT)"
    )
    p.add_argument(
        "--any",
        action="store_true",
        help="runner/collector: any fresh heartbeat, not only one of this host (or TEAMDASH_RUNNER_ID)",
    )
    p.set_defaults(func=_health)

    p = sub.add_parser("token", help="mint a dev JWT (printed alone on the last line)")
    p.add_argument("--user", default="dev", help="user id (sub claim), default 'dev'")
    p.add_argument(
        "--role",
        action="append",
        default=[],
        help="viewer, operator or admin (repeatable; default admin)",
    )
    p.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (max 3600)")
    p.add_argument(
        "--private-key",
        metavar="FILE",
        default=None,
        help="sign with this PEM private key (RS256 for RSA, ES256 for EC P-256), for gateways "
        "with TEAMDASH_JWT_ALGORITHM=RS256/ES256 and the public key",
    )
    p.set_defaults(func=_token)

    _add_client_commands(sub)
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
