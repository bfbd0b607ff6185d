"""The gateway process: the WebSocket server, its Redis connections and live fan-out.

One :class:`Gateway` owns everything a gateway process runs: the Redis client, one pub/sub
connection (:class:`shared.bus.PubSubHub`) shared by all topics and the runners' replies,
the topic routes (:mod:`gateway.router`), and the websockets server whose handler is a
:class:`gateway.connection.Connection` per client. Fan-out never awaits per recipient: an
event is framed once and every connection is written once per batch of events
(:mod:`gateway.fanout`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
import time
import uuid
from http import HTTPStatus

import anyio
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

# Layering wart: the gateway reaps dead runners with the runners' own reaper (the one
# place that knows how to mark an agent lost). Another issue moves it to shared/.
from agent_runner.reaper import reap_dead_runners
from gateway.audit import SecurityAudit
from gateway.connection import Connection, ConnectionParts
from gateway.guard import client_ip, limit_key, origin_allowed
from gateway.health import CollectorWatch, RedisHealth, degraded_alert, recovered_alert
from gateway.metrics import CONTENT_TYPE_LATEST, GatewayMetrics
from gateway.redis_limits import SharedLimits
from gateway.router import TopicRoute
from gateway.routes import Routes
from gateway.runners import RunnerClient
from gateway.sending import Sender
from gateway.sessions import SessionStore
from gateway.settings import GatewaySettings
from gateway.static_files import PREFIX, SECURITY_HEADERS, load_static
from shared.bus import PubSubHub, as_text
from shared.keys import LOGS_TOPIC, METRICS_TOPIC, Keys
from shared.metrics_http import watch_tasks
from shared.protocol import (
    HeartbeatMessage,
    Metadata,
    SystemAlertMessage,
    SystemAlertPayload,
    WSMessage,
    encode,
    now_ms,
)
from shared.redis_conn import describe, is_connection_error, redis_client, wait_for_redis
from shared.resp import RespClient
from shared.tasks import OwnedTasks, raise_if_cancelled
from shared.tokens import TokenVerifier

log = logging.getLogger("ws.gateway")
WEBSOCKETS_LOG = logging.getLogger("websockets.server")

#: Redis connections one gateway may hold (callers wait up to REDIS_POOL_WAIT_S for one).
REDIS_POOL_SIZE = 256
REDIS_POOL_WAIT_S = 10.0
#: Pending TCP connections the kernel queues for the gateway's listening socket.
LISTEN_BACKLOG = 4096
#: Seconds between two PINGs of the Redis watch (an outage is seen within this, or at once
#: when a request or the pub/sub connection fails first).
REDIS_WATCH_INTERVAL_S = 1.0
REDIS_WATCH_TIMEOUT_S = 2.0
#: Seconds between two checks of the metrics topic for the collector's silence.
COLLECTOR_CHECK_INTERVAL_S = 1.0


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.keys = Keys(settings.common.redis_prefix)
        # A bounded pool that makes callers wait for a free connection: a burst of
        # connections (each auth writes its session) must queue, not fail with "Too many
        # connections" (redis-py's default pool refuses the 101st at once).
        # Commands are retried once on a connection error (a pooled socket Redis closed
        # while it restarted), see shared.redis_conn.
        self.redis = redis_client(
            settings.common.redis_url,
            max_connections=REDIS_POOL_SIZE,
            pool_timeout_s=REDIS_POOL_WAIT_S,
        )
        self.health = RedisHealth()
        self._check_redis = asyncio.Event()
        self.bus = settings.common.event_bus(self.redis, self.keys)
        self.hub = PubSubHub(
            settings.common.redis_url,
            self._on_pubsub,
            on_reconnect=lambda: self.topic_routes.on_hub_reconnect(),
            on_lost=self._on_hub_lost,
        )
        self.runners = RunnerClient(
            self.redis,
            self.keys,
            settings.gateway_id,
            reply_timeout_s=settings.runner_reply_timeout_s,
            runner_ttl_s=settings.runner_ttl_s,
            commands_per_second=settings.agent_commands_per_second,
            outages=lambda: self.health.outages,
            heartbeats_trusted=self.heartbeats_trusted,
        )
        self.collector_watch = CollectorWatch(settings.collector_silence_s)
        self.verifier = TokenVerifier(
            settings.jwt_key,
            settings.jwt_algorithms,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        self.sessions = SessionStore(
            self.redis, RespClient(settings.common.redis_url), self.keys, settings.session_ttl_s
        )
        self.metrics = GatewayMetrics()
        self.limits = SharedLimits(
            self.redis,
            settings.common.redis_prefix,
            user_messages_per_second=settings.user_messages_per_second,
            ip_messages_per_second=settings.ip_messages_per_second,
            ip_connections_per_minute=settings.ip_connections_per_minute,
            sync_interval_s=settings.rate_limit_sync_interval_s,
        )
        self.audit = SecurityAudit(
            self.metrics,
            gateway_id=settings.gateway_id,
            threshold=settings.security_alert_threshold,
            window_s=settings.security_alert_window_s,
            cooldown_s=settings.security_alert_cooldown_s,
            publish=self._publish_alert,
        )
        self._probe_channel = self.keys.gateway_probe(settings.gateway_id)
        self._probes: dict[bytes, asyncio.Future[None]] = {}
        self._static = load_static()
        self.connections: set[Connection] = set()
        self.tasks = OwnedTasks(log, f"gateway {settings.gateway_id}")
        self.sender = Sender(cap=settings.send_buffer_bytes, metrics=self.metrics, tasks=self.tasks)
        self.topic_routes = Routes(
            hub=self.hub,
            bus=self.bus,
            keys=self.keys,
            sender=self.sender,
            metrics=self.metrics,
            tasks=self.tasks,
            redis_failed=self.redis_failed,
        )
        self.parts = ConnectionParts(
            settings=settings,
            gateway_id=settings.gateway_id,
            verifier=self.verifier,
            sessions=self.sessions,
            runners=self.runners,
            routes=self.topic_routes,
            sender=self.sender,
            limits=self.limits,
            audit=self.audit,
            metrics=self.metrics,
            client_ip=self.client_ip,
            redis_failed=self.redis_failed,
        )
        self._server: Server | None = None

    @property
    def id(self) -> str:
        return self.settings.gateway_id

    @property
    def routes(self) -> dict[str, TopicRoute[ServerConnection]]:
        """The topics this gateway follows now (see :mod:`gateway.routes`)."""
        return self.topic_routes.routes

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    # -- lifecycle ----------------------------------------------------------------
    async def start(self, stop: asyncio.Event | None = None) -> bool:
        """Connect to Redis (waiting for it, one log line at a time, until it answers or
        ``stop`` is set: then False) and start serving."""
        watch_tasks(self.metrics.registry, asyncio.get_running_loop())
        url = self.settings.common.redis_url
        while True:
            if not await wait_for_redis(self.redis, url, stop=stop, logger=log):
                return False
            try:
                await self.hub.start()
                break
            except Exception as e:  # noqa: BLE001 - gone again between the PING and this
                if not is_connection_error(e):
                    raise
                log.warning("Redis pub/sub connection failed (%s); retrying", describe(e))
                await asyncio.sleep(0.5)
        await self.hub.subscribe(self.runners.reply_channel)
        await self.hub.subscribe(self._probe_channel)
        # Before the first connection: every session write goes through it.
        self.tasks.spawn(self.sessions.run(), "session-writer")
        s = self.settings
        self._server = await serve(
            self._handle,
            s.host,
            s.port,
            process_request=self._process_request,
            compression=None,
            max_size=s.max_message_bytes,
            ping_interval=s.heartbeat_interval_s,
            ping_timeout=s.heartbeat_interval_s,
            close_timeout=5,
            server_header=None,
            logger=WEBSOCKETS_LOG,  # given, not looked up by name for every connection
            reuse_port=s.reuse_port,
            ssl=tls_context(s),
            # asyncio's default (100) overflows when thousands of clients connect at once.
            backlog=LISTEN_BACKLOG,
        )
        self.tasks.spawn(self._flush_sessions_forever(), "flush-sessions")
        self.tasks.spawn(self._heartbeat_forever(), "heartbeat")
        self.tasks.spawn(self.limits.run(), "sync-rate-limits")
        self.tasks.spawn(self._audit_ticks(), "security-audit")
        self.tasks.spawn(self._watch_redis(), "redis-watch")
        self.tasks.spawn(self.runners.watch_pending(self._watch_interval), "runner-watch")
        self.tasks.spawn(self._reap_forever(), "reap-dead-runners")
        self.tasks.spawn(self._watch_collector(), "collector-watch")
        log.info(
            "gateway %s listening on %s://%s:%d%s", self.id, s.scheme, s.host, self.port, s.path
        )
        if s.allowed_origins is None and s.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning(
                "TEAMDASH_ALLOWED_ORIGINS is not set: web pages from any origin may open "
                "WebSockets to this gateway (set it to your dashboard's origin in production)"
            )
        return True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.tasks.close()
        await self.hub.close()
        self.sessions.writer.close()
        await self.redis.aclose()

    async def _flush_sessions_forever(self) -> None:
        interval = self.settings.cursor_flush_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush_sessions()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis hiccup: the next round writes it
                if is_connection_error(e):
                    self.redis_failed(e)
                    if not self.health.up:
                        continue  # the outage is announced once, not every flush
                log.warning("could not flush session cursors: %s", e)
            raise_if_cancelled()

    async def _heartbeat_forever(self) -> None:
        """The heartbeat of every authenticated connection, one timer for all: each
        ``heartbeat_interval_s`` one ``ping`` is encoded and written to every connection
        still answering; those silent for two intervals are closed (see
        :meth:`Connection.heartbeat_due`)."""
        interval = self.settings.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            due = [conn.ws for conn in self.connections if conn.heartbeat_due(now)]
            if due:
                self.sender.send_all(((due, encode(HeartbeatMessage(type="ping")), False),))

    async def _audit_ticks(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.audit.tick()

    # -- Redis health -----------------------------------------------------------------
    def redis_failed(self, error: BaseException) -> None:
        """A Redis call failed on a connection error: start an outage now if the watch
        confirms it (one PING; a pool that is merely busy is no outage)."""
        self.health.last_failure = time.monotonic()
        if self.health.up:
            self._check_redis.set()

    def _on_hub_lost(self, error: Exception | None) -> None:
        # The pub/sub connection is this gateway's most sensitive sensor: no PING needed.
        self._redis_down(describe(error) if error is not None else "connection closed by Redis")

    def _redis_down(self, reason: str) -> None:
        if not self.health.failed(time.monotonic(), reason):
            return
        log.warning("Redis is unreachable (%s): requests get SERVICE_UNAVAILABLE", reason)
        self.send_to_clients(degraded_alert(self.id, reason))

    def _redis_up(self) -> None:
        down_s = self.health.recovered(time.monotonic())
        if down_s is None:
            return
        log.info("Redis is reachable again after %.1fs", down_s)
        self.collector_watch.pause(time.monotonic())
        self.send_to_clients(recovered_alert(self.id, down_s))

    def send_to_clients(self, message: WSMessage) -> None:
        """One message to every authenticated connection of this gateway, straight from
        here (not through the bus: it may be Redis that is down)."""
        conns = [c.ws for c in self.connections if c.session.identity is not None]
        if conns:
            self.sender.send_all(((conns, encode(message), False),))

    async def _watch_redis(self) -> None:
        """PING Redis every second (at once when a request failed): the one place that
        decides when an outage starts (with the hub's loss) and ends."""
        while True:
            with anyio.move_on_after(REDIS_WATCH_INTERVAL_S):
                await self._check_redis.wait()
            self._check_redis.clear()
            try:
                with anyio.fail_after(REDIS_WATCH_TIMEOUT_S):
                    await self.redis.ping()
                raise_if_cancelled()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to answer is an outage
                raise_if_cancelled()
                self._redis_down(describe(e) if is_connection_error(e) else repr(e))
                continue
            if self.hub.connected.is_set():
                self._redis_up()

    def heartbeats_trusted(self) -> bool:
        """Runner heartbeats mean something only when this gateway has reached Redis
        without failure for a runner TTL plus a heartbeat: during an outage (and after an
        empty restart) every heartbeat ages, so nothing may be judged dead on them."""
        s = self.settings
        return self.health.stable_for(time.monotonic()) >= s.runner_ttl_s + s.runner_heartbeat_s

    @property
    def _watch_interval(self) -> float:
        return max(0.1, min(self.settings.runner_heartbeat_s, self.settings.runner_ttl_s / 4))

    async def _reap_forever(self) -> None:
        """With no runner alive, nobody else marks a dead runner's agents ``crashed``: this
        gateway does (the reaper locks per runner, so several gateways are safe). With a
        live runner left, that runner reaps (it can also kill leftovers on its host)."""
        ttl_ms = int(self.settings.runner_ttl_s * 1000)
        while True:
            await asyncio.sleep(self.settings.runner_heartbeat_s)
            if not self.heartbeats_trusted():
                continue
            try:
                alive = await self.runners.alive_runners()
                raise_if_cancelled()
                if alive:
                    continue
                marked = await reap_dead_runners(self.redis, self.keys, self.bus, ttl_ms)
                raise_if_cancelled()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the next round tries again
                raise_if_cancelled()
                if is_connection_error(e):
                    self.redis_failed(e)
                log.warning("could not reap dead runners: %s", describe(e))
                continue
            if marked:
                log.warning("no runner alive: marked %d agent(s) of dead runners crashed", marked)

    async def _watch_collector(self) -> None:
        """Announce on ``logs`` when the collector falls silent and when it is back (one
        gateway announces: the holder of ``Keys.collector_announcer``)."""
        watch = self.collector_watch
        lock = self.keys.collector_announcer
        hold_ms = int(max(3 * COLLECTOR_CHECK_INTERVAL_S, watch.silence_s) * 1000)
        while True:
            await asyncio.sleep(COLLECTOR_CHECK_INTERVAL_S)
            if not self.health.up:
                continue
            try:
                head = await self.bus.head(METRICS_TOPIC)
                raise_if_cancelled()
                change = watch.observe(time.monotonic(), head.offset, head.epoch)
                if change is None:
                    continue
                held = await self._hold(lock, hold_ms)
                raise_if_cancelled()
                if not held:
                    continue
                await self.bus.publish(LOGS_TOPIC, *self._collector_alert(change))
                raise_if_cancelled()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - next check; the state is kept
                raise_if_cancelled()
                if is_connection_error(e):
                    self.redis_failed(e)
                log.warning("collector check failed: %s", describe(e))

    async def _hold(self, key: str, ttl_ms: int) -> bool:
        """Take or keep the announcer role (SET NX PX; refreshed while held)."""
        if await self.redis.set(key, self.id, nx=True, px=ttl_ms):
            return True
        holder = await self.redis.get(key)
        if holder is not None and as_text(holder) == self.id:
            await self.redis.pexpire(key, ttl_ms)
            return True
        return False

    def _collector_alert(self, change: str) -> tuple[SystemAlertMessage, tuple[str, str]]:
        watch = self.collector_watch
        if change == "silent":
            quiet_s = time.monotonic() - (watch.silent_since or time.monotonic())
            since_ms = now_ms() - int(quiet_s * 1000)
            when = time.strftime("%H:%M:%S", time.localtime(since_ms / 1000))
            payload = SystemAlertPayload(
                level="warning",
                category="performance",
                message=(
                    f"metrics collector is silent since {when} (no metrics:update for "
                    f"{quiet_s:.0f}s): metrics are stale"
                ),
                details={"collector": "silent", "sinceMs": since_ms, "gatewayId": self.id},
            )
        else:
            payload = SystemAlertPayload(
                level="info",
                category="performance",
                message="metrics collector is publishing again",
                details={"collector": "back", "gatewayId": self.id},
            )
        alert = SystemAlertMessage(
            type="system:alert", payload=payload, metadata=Metadata(priority="high")
        )
        return alert, (payload.level, payload.category)

    def _publish_alert(self, alert: SystemAlertMessage) -> None:
        tags = (alert.payload.level, alert.payload.category)
        self.tasks.spawn(self._publish_alert_now(alert, tags), "security-alert")

    async def _publish_alert_now(self, alert: SystemAlertMessage, tags: tuple[str, str]) -> None:
        try:
            await self.bus.publish(LOGS_TOPIC, alert, tags)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - Redis down: the audit log still has it
            log.warning("could not publish a security alert: %s", e)

    def client_ip(self, ws: ServerConnection, request: Request | None = None) -> str:
        """The client's address (see :func:`gateway.guard.client_ip`)."""
        request = request if request is not None else ws.request
        peer = ws.remote_address[0] if ws.remote_address else None
        forwarded = request.headers.get_all("X-Forwarded-For") if request is not None else []
        return client_ip(peer, forwarded, self.settings.trusted_proxies)

    async def flush_sessions(self) -> None:
        """Write every connection's changed cursors and activity in one round trip (none
        when nothing changed: an idle connection has nothing to write but, once per
        ``session_ttl_s / 3``, its ``lastActivity`` and TTL — see
        :meth:`gateway.client_session.ClientSession.session_update`)."""
        batch = []
        now = time.monotonic()
        for conn in self.connections:
            session_id = conn.session.session_id
            if session_id is None:
                continue
            update = conn.session_update(now)
            if update is not None:
                batch.append((session_id, conn.id, update))
        if batch:
            await self.sessions.write_many(batch)

    # -- HTTP and WebSocket entry points -------------------------------------------
    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == self.settings.path:
            return await self._check_handshake(ws, request)
        if path == "/healthz":
            return _text_response(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            ready, why = await self.ready()
            return _text_response(
                HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, why + "\n"
            )
        if path == "/metrics":
            await self._update_gauges()
            return _response(HTTPStatus.OK, self.metrics.render(), CONTENT_TYPE_LATEST)
        if path == "/" or path == PREFIX.rstrip("/"):
            response = _text_response(HTTPStatus.FOUND, f"the dashboard is at {PREFIX}\n")
            response.headers["Location"] = PREFIX
            return response
        page = self._static.get(path)
        if page is not None:
            response = _response(HTTPStatus.OK, page.body, page.content_type)
            for name, value in SECURITY_HEADERS:
                response.headers[name] = value
            return response
        return _text_response(
            HTTPStatus.NOT_FOUND, f"not found; the WebSocket endpoint is {self.settings.path}\n"
        )

    async def _check_handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        """Refuse a WebSocket handshake from a browser origin not on the allow-list (403:
        cross-site WebSocket hijacking) or from an address over its connection rate (429)."""
        origins = request.headers.get_all("Origin")
        ip = self.client_ip(ws, request)
        if not origin_allowed(origins, self.settings.allowed_origins):
            self.audit.record(
                "origin_refused", f"origin {', '.join(origins)!r} is not allowed", ip=ip
            )
            return _text_response(HTTPStatus.FORBIDDEN, "origin not allowed\n")
        if self.settings.ip_connections_per_minute > 0:
            if not await self.limits.admit_connection(limit_key(ip)):
                self.audit.record(
                    "connection_rate_limited",
                    f"more than {self.settings.ip_connections_per_minute} new connections/min",
                    ip=ip,
                )
                response = _text_response(HTTPStatus.TOO_MANY_REQUESTS, "too many connections\n")
                response.headers["Retry-After"] = "60"
                return response
        return None

    async def ready(self, timeout_s: float = 2.0) -> tuple[bool, str]:
        """Ready = Redis answers AND this gateway's pub/sub subscription really delivers: a
        message published to its probe channel must come back through the hub."""
        if not self.health.up:
            return False, f"redis unreachable: {self.health.reason}"
        if not self.hub.connected.is_set():
            return False, "redis unreachable: pub/sub connection lost, reconnecting"
        nonce = uuid.uuid4().hex.encode()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[nonce] = fut
        try:
            # Cancel scopes, not wait_for: on 3.11 wait_for can swallow the cancellation of
            # the HTTP handler when it lands as Redis answers.
            with anyio.fail_after(timeout_s):
                await self.redis.publish(self._probe_channel, nonce)
            with anyio.fail_after(timeout_s):
                await fut
        except TimeoutError:
            return False, "redis pub/sub probe did not come back in time"
        except Exception as e:  # noqa: BLE001 - any failure means not ready
            return False, f"redis unreachable: {e}"
        finally:
            self._probes.pop(nonce, None)
        return True, "ready"

    async def _update_gauges(self) -> None:
        m = self.metrics
        sizes = [
            c.ws.transport.get_write_buffer_size()
            for c in self.connections
            if c.ws.transport is not None
        ]
        m.send_buffer_bytes.labels("sum").set(sum(sizes))
        m.send_buffer_bytes.labels("max").set(max(sizes, default=0))
        m.pending_requests.set(self.runners.pending_count)
        m.routed_topics.set(len(self.routes))
        topics = list(self.routes)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for topic in topics:
                    pipe.xlen(self.keys.topic_stream(topic))
                with anyio.fail_after(2):
                    lengths = await pipe.execute()
        except Exception as e:  # noqa: BLE001 - metrics must render even when Redis is down
            log.debug("stream lengths unavailable: %s", e)
            return
        by_kind: dict[str, int] = {}
        for topic, length in zip(topics, lengths, strict=True):
            kind = "agent" if topic.startswith("agent:") else topic
            by_kind[kind] = by_kind.get(kind, 0) + int(length)
        for kind, total in by_kind.items():
            m.stream_length.labels(kind).set(total)

    async def _handle(self, ws: ServerConnection) -> None:
        conn = Connection(self.parts, ws)
        self.connections.add(conn)
        self.metrics.connections.inc()
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            self.metrics.connections.dec()

    # -- live events ---------------------------------------------------------------
    def _on_pubsub(self, messages: list[tuple[str, bytes]]) -> None:
        """Every message of one pub/sub read, in order: routed, then one write per
        connection for the whole batch."""
        prefix = self.topic_routes.channel_prefix
        try:
            for channel, data in messages:
                if channel.startswith(prefix):
                    self.topic_routes.on_event(channel[len(prefix) :], data)
                elif channel == self.runners.reply_channel:
                    self.runners.on_reply(data)
                elif channel == self._probe_channel:
                    probe = self._probes.get(data)
                    if probe is not None and not probe.done():
                        probe.set_result(None)
        finally:
            self.sender.flush()


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)


def _text_response(status: HTTPStatus, body: str) -> Response:
    return _response(status, body.encode(), "text/plain; charset=utf-8")


def tls_context(settings: GatewaySettings) -> ssl.SSLContext | None:
    """The server-side TLS context for wss:// (TLS 1.3 at least), or None for ws://."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


async def main(settings: GatewaySettings, stop: asyncio.Event) -> None:
    gateway = Gateway(settings)
    if not await gateway.start(stop):
        await gateway.close()
        return
    # Thousands of long-lived connection objects make full garbage collections stall the
    # loop for hundreds of ms: keep start-up objects out of them and collect less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        await stop.wait()
    finally:
        await gateway.close()
