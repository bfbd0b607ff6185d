"""A load-generator process: many protocol clients on one event loop, driven over stdin.

The orchestrator (:mod:`bench.run`) starts several of these (``python -m bench.loadgen``,
``TEAMDASH_JWT_SECRET`` in the environment) and sends each the same commands, one JSON
line at a time; each answers with one JSON line (:func:`bench.source.command_loop`).
Clients live in named *groups* (``subs``, ``conns``, ``req``…) between commands.

=============  ==========================================================================
op             does
=============  ==========================================================================
``connect``    open this worker's share of a group's clients (client ``i`` of ``total``
               belongs to worker ``i % workers`` and talks to ``urls[i % len(urls)]``),
               ramped or as one burst from a common wall-clock start; auth with a freshly
               minted JWT; optionally subscribe. Returns every connect+auth time.
``step_begin`` start counting fan-out step ``step`` (``count`` events) on a group
``step_end``   wait until every client has every event of the step (or a timeout) and
               return loss, duplicates, offset checks and the latency histogram
``requests``   each client of the group creates an agent, subscribes to it, then sends
               ``commands`` ``agent:command``s one after the other (closed loop)
``firehose``   the first client creates a firehose agent and counts its output
``close``      close a group (closing handshake)
``info``       this process's RSS and open clients
=============  ==========================================================================
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import psutil

from bench.source import command_loop, new_loop, parse_event_data
from bench.stats import Histogram
from bench.wsclient import ClientError, Session
from shared.tokens import mint_token

SECRET = os.environ.get("TEAMDASH_JWT_SECRET", "")


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------------------
# Fan-out counting
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class ClientCounts:
    """What one subscriber received in the current step."""

    seen: bytearray
    unique: int = 0
    received: int = 0
    duplicated: int = 0
    last_offset: int | None = None
    offset_gaps: int = 0
    out_of_order: int = 0


@dataclass
class StepRun:
    step: int
    count: int
    clients: int
    hist: Histogram = field(default_factory=Histogram)
    complete: int = 0
    stray: int = 0
    first_recv_ns: int = 0
    last_recv_ns: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Worker:
    def __init__(self) -> None:
        self.groups: dict[str, list[Session]] = {}
        self.run: StepRun | None = None
        self.nofile = raise_nofile()

    # -- connect --------------------------------------------------------------------
    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        w, workers, total = int(cmd["worker"]), int(cmd["workers"]), int(cmd["total"])
        urls: list[str] = cmd["urls"]
        role, prefix = cmd.get("role", "viewer"), cmd.get("user_prefix", "bench")
        subscribe: dict[str, Any] | None = cmd.get("subscribe")
        ramp_s = float(cmd.get("ramp_s", 0.0))
        start_at = float(cmd["start_at"])
        indices = list(range(w, total, workers))
        # Tokens are minted before the clock starts: signing is the client's cost, not the
        # server's, and must not delay the schedule.
        tokens = {i: mint_token(SECRET, f"{prefix}{i}", roles=(role,), ttl_s=3600) for i in indices}
        group = self.groups.setdefault(cmd["group"], [])
        handler = self._fanout_handler if cmd.get("fanout") else None
        connect_ms: list[float] = []
        handshake_ms: list[float] = []
        subscribe_ms: list[float] = []
        lag_ms: list[float] = []
        errors: Counter[str] = Counter()

        async def one(i: int) -> None:
            at = start_at + (ramp_s * i / total if ramp_s > 0 else 0.0)
            delay = at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag_ms.append(max(0.0, (time.time() - at) * 1000))
            session = Session(urls[i % len(urls)], handler)
            t0 = time.perf_counter()
            try:
                await session.connect(timeout_s=float(cmd.get("client_timeout_s", 30)))
                handshake_ms.append((time.perf_counter() - t0) * 1000)
                await session.authenticate(
                    tokens[i], f"bench-{i}", timeout_s=float(cmd.get("client_timeout_s", 30))
                )
                t1 = time.perf_counter()
                connect_ms.append((t1 - t0) * 1000)
                if subscribe is not None:
                    await session.request(subscribe["type"], subscribe.get("payload", {}))
                    subscribe_ms.append((time.perf_counter() - t1) * 1000)
            except (ClientError, OSError) as e:
                errors[_reason(e)] += 1
                session.abort()
                return
            group.append(session)

        await asyncio.gather(*(one(i) for i in indices))
        return {
            "connected": len(connect_ms),
            "failed": sum(errors.values()),
            "errors": dict(errors),
            "connect_ms": [round(x, 3) for x in connect_ms],
            "handshake_ms": [round(x, 3) for x in handshake_ms],
            "subscribe_ms": [round(x, 3) for x in subscribe_ms],
            "schedule_lag_ms": [round(x, 3) for x in lag_ms],
        }

    # -- fan-out steps ------------------------------------------------------------
    def _fanout_handler(self, session: Session, raw: bytes) -> None:
        now = time.time_ns()
        msg = orjson.loads(raw)
        if msg.get("type") != "agent:output":
            session.dispatch_parsed(msg)
            return
        run = self.run
        counts: ClientCounts | None = session.state
        step, seq, t_ns = parse_event_data(msg["payload"]["data"])
        if run is None or counts is None or step != run.step:
            if run is not None:
                run.stray += 1
            return
        offset = msg["metadata"]["offset"]
        last = counts.last_offset
        if last is not None:
            if offset <= last:
                counts.out_of_order += 1
            elif offset > last + 1:
                counts.offset_gaps += offset - last - 1
        if last is None or offset > last:
            counts.last_offset = offset
        counts.received += 1
        if not run.first_recv_ns:
            run.first_recv_ns = now
        run.last_recv_ns = now
        if 0 <= seq < run.count and not counts.seen[seq]:
            counts.seen[seq] = 1
            counts.unique += 1
            run.hist.add((now - t_ns) / 1000.0)
            if counts.unique == run.count:
                run.complete += 1
                if run.complete >= run.clients:
                    run.done.set()
        else:
            counts.duplicated += 1

    async def step_begin(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.groups.get(cmd["group"], [])
        count = int(cmd["count"])
        self.run = StepRun(int(cmd["step"]), count, len(group))
        for s in group:
            s.state = ClientCounts(bytearray(count))
        if not group or count == 0:
            self.run.done.set()
        return {"clients": len(group)}

    async def step_end(self, cmd: dict[str, Any]) -> dict[str, Any]:
        run = self.run
        assert run is not None and run.step == int(cmd["step"])
        group = self.groups.get(cmd["group"], [])
        try:
            await asyncio.wait_for(run.done.wait(), float(cmd["wait_s"]))
        except TimeoutError:
            pass
        self.run = None
        counts = [s.state for s in group if isinstance(s.state, ClientCounts)]
        lost = sum(run.count - c.unique for c in counts)
        return {
            "clients": len(group),
            "closed_clients": sum(1 for s in group if not s.open),
            "incomplete_clients": sum(1 for c in counts if c.unique < run.count),
            "expected": run.count * len(group),
            "unique": sum(c.unique for c in counts),
            "received": sum(c.received for c in counts),
            "lost": lost,
            "duplicated": sum(c.duplicated for c in counts),
            "offset_gaps": sum(c.offset_gaps for c in counts),
            "out_of_order": sum(c.out_of_order for c in counts),
            "stray": run.stray,
            "first_recv_ns": run.first_recv_ns,
            "last_recv_ns": run.last_recv_ns,
            "hist": run.hist.to_json(),
        }

    # -- requests -----------------------------------------------------------------
    async def requests(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.groups.get(cmd["group"], [])
        n_commands = int(cmd["commands"])
        timeout_s = float(cmd.get("command_timeout_s", 30))
        ack_h, out_h = Histogram(), Histogram()
        create_ms: list[float] = []
        errors: Counter[str] = Counter()
        done = 0

        async def one(k: int, s: Session) -> None:
            nonlocal done
            state = _RequestState()
            s.state = state
            s.on_message = state.handler
            try:
                t0 = time.perf_counter()
                created = await s.request(
                    "agent:create",
                    {
                        "name": f"bench-{k}",
                        "model": cmd["model"],
                        "workspace": f"bench-{os.getpid()}-{k}",
                    },
                    timeout_s=60,
                )
                create_ms.append((time.perf_counter() - t0) * 1000)
                agent_id = created["agentId"]
                await s.request("subscribe:agent", {"agentId": agent_id, "filters": ["stdout"]})
                for i in range(n_commands):
                    tag = f"c{k}.{i}"
                    state.expect(f"echo: {tag}")
                    t_send = time.perf_counter_ns()
                    mid, ack = s.send_request(
                        "agent:command", {"agentId": agent_id, "command": tag}
                    )
                    state.ack_id = mid
                    async with asyncio.timeout(timeout_s):
                        payload = await ack
                        if not payload.get("success"):
                            raise ClientError(
                                f"command failed: {payload.get('error')} ({payload.get('code')})"
                            )
                        await state.output
                    ack_h.add((state.ack_ns - t_send) / 1000.0)
                    out_h.add((state.output_ns - t_send) / 1000.0)
                    done += 1
            except (ClientError, TimeoutError, asyncio.CancelledError) as e:
                errors[_reason(e)] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(k, s) for k, s in enumerate(group)))
        return {
            "clients": len(group),
            "commands": done,
            "seconds": round(time.perf_counter() - t0, 3),
            "errors": dict(errors),
            "create_ms": [round(x, 3) for x in create_ms],
            "ack_hist": ack_h.to_json(),
            "output_hist": out_h.to_json(),
        }

    # -- agent output -------------------------------------------------------------
    async def firehose(self, cmd: dict[str, Any]) -> dict[str, Any]:
        s = self.groups[cmd["group"]][0]
        lines, size = int(cmd["lines"]), int(cmd["size"])
        state = _FirehoseState(lines)
        created = await s.request(
            "agent:create",
            {"name": "firehose", "model": cmd["model"], "workspace": f"bench-fh-{os.getpid()}"},
            timeout_s=60,
        )
        agent_id = created["agentId"]
        await s.request("subscribe:agent", {"agentId": agent_id, "filters": ["stdout"]})
        s.on_message = state.handler
        t_cmd = time.time_ns()
        await s.request("agent:command", {"agentId": agent_id, "command": f"{lines} {size}"})
        try:
            await asyncio.wait_for(state.done.wait(), float(cmd.get("wait_s", 300)))
        except TimeoutError:
            pass
        s.on_message = Session.dispatch
        span = (state.last_ns - state.first_ns) / 1e9 if state.first_ns else 0.0
        return {
            "lines": lines,
            "events": state.events,
            "unique": state.unique,
            "lost": lines - state.unique,
            "duplicated": state.duplicated,
            "sequence_gaps": state.sequence_gaps,
            "done_marker": state.done_marker,
            "t_command_ns": t_cmd,
            "first_recv_ns": state.first_ns,
            "last_recv_ns": state.last_ns,
            "events_per_s": round(state.unique / span, 1) if span > 0 else None,
            "hist": state.hist.to_json(),
        }

    # -- housekeeping -------------------------------------------------------------
    async def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self.groups.pop(cmd["group"], [])
        await asyncio.gather(*(s.close() for s in group))
        return {"closed": len(group)}

    async def info(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "rss": psutil.Process().memory_info().rss,
            "nofile": self.nofile,
            "open": {name: sum(1 for s in g if s.open) for name, g in self.groups.items()},
        }


class _RequestState:
    """Receive side of one closed-loop requester: the time its ack and its echo arrived."""

    def __init__(self) -> None:
        self.ack_id = ""
        self.ack_ns = 0
        self.output_ns = 0
        self.expected = ""
        self.output: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def expect(self, line: str) -> None:
        self.expected = line
        self.ack_ns = self.output_ns = 0
        self.output = asyncio.get_running_loop().create_future()

    def handler(self, session: Session, raw: bytes) -> None:
        now = time.perf_counter_ns()
        msg = orjson.loads(raw)
        kind = msg.get("type")
        if kind == "agent:output":
            if not self.output_ns and msg["payload"]["data"].rstrip("\n") == self.expected:
                self.output_ns = now
                if not self.output.done():
                    self.output.set_result(None)
            return
        if kind == "ack" and msg["payload"].get("messageId") == self.ack_id:
            self.ack_ns = now
        session.dispatch_parsed(msg)


class _FirehoseState:
    def __init__(self, lines: int) -> None:
        self.lines = lines
        self.seen = bytearray(lines)
        self.events = self.unique = self.duplicated = self.sequence_gaps = 0
        self.last_sequence: int | None = None
        self.first_ns = self.last_ns = 0
        self.done_marker = False
        self.hist = Histogram()
        self.done = asyncio.Event()

    def handler(self, session: Session, raw: bytes) -> None:
        now = time.time_ns()
        msg = orjson.loads(raw)
        if msg.get("type") != "agent:output":
            session.dispatch_parsed(msg)
            return
        payload = msg["payload"]
        data: str = payload["data"]
        seq_no = payload["sequence"]
        if self.last_sequence is not None and seq_no != self.last_sequence + 1:
            self.sequence_gaps += 1
        self.last_sequence = seq_no
        if data.startswith("__DONE__"):
            self.done_marker = True
            self.done.set()
            return
        self.events += 1
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now
        try:
            line, t_ns, _ = data.split(" ", 2)
            i = int(line)
        except ValueError:
            return
        if 0 <= i < self.lines and not self.seen[i]:
            self.seen[i] = 1
            self.unique += 1
            self.hist.add((now - int(t_ns)) / 1000.0)
        else:
            self.duplicated += 1


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text[:120]


async def main() -> None:
    worker = Worker()
    await command_loop(
        {
            "connect": worker.connect,
            "step_begin": worker.step_begin,
            "step_end": worker.step_end,
            "requests": worker.requests,
            "firehose": worker.firehose,
            "close": worker.close,
            "info": worker.info,
        }
    )
    for group in list(worker.groups):
        await worker.close({"group": group})


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())
