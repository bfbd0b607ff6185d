"""One live agent: its process, output pumps, command queue, timers and events.

How it works
------------
An :class:`Agent` is created by the runner once its process really started. It owns four
tasks (started by :meth:`Agent.announce`, cancelled and awaited by :meth:`Agent.close`):

* ``supervise`` waits for the process to exit, kills and verifies whatever is left of its
  group, waits for the pumps to drain, decides ``stopped``/``crashed`` (OOM named as such),
  records the end in the registry and publishes the final events;
* two pumps read stdout and stderr (never blocking on anything but the outbox's high-water
  mark), split them with :class:`~agent_runner.output.OutputSplitter` and queue
  ``agent:output`` events numbered by one per-agent ``sequence`` shared by both streams;
  stdout is also read, line by line, by the model's driver (:mod:`agent_runner.drivers`),
  which detects the end of a turn, failures and prompts — and, for a structured format,
  replaces each line with its readable events;
* ``serve`` handles this agent's requests (command, permission answer, pause, resume,
  terminate) one at a time, in arrival order, so a slow stdin never holds up other agents.

While a command's turn runs (it is the oldest pending one), the events a driver reads carry
``metadata.correlationId`` = that command's id; its turn ends with a ``turn_end`` event, and
a failure the driver read becomes an ``agent:error`` + ``agent`` alert with the same id.
A command sent with ``wait: "completed"`` is replied to twice: once written, and when its
turn ends (:meth:`Agent._owe`) — with the ``turn_end``, the turn's first failure, its
timeout, or the agent's end, whichever comes first.

Every status change happens under one lock, in this order: state machine → registry → act
(signal) → reply to the gateway → queue the events; so the reply always precedes the events
it causes, and a status event can never overtake another. Command timeouts are loop timers
(not tasks) that queue an ``agent:error`` when they fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError
from redis.exceptions import RedisError

from agent_runner import events
from agent_runner.drivers import DriverError, Failure, Reading
from agent_runner.errors import AgentNotFound, Busy, CommandTimeout, InvalidRequest
from agent_runner.models import ModelSpec
from agent_runner.outbox import Outbox
from agent_runner.output import LineJoiner, OutputPacer, OutputSplitter, Piece
from agent_runner.policy import sanitize_command
from agent_runner.process import AgentProcess, signal_name
from agent_runner.registry import Registry, protocol_status
from agent_runner.state import FINAL, AgentState, Event, IllegalTransition, Status
from shared.agent_record import AgentUpdate
from shared.errors import ErrorCode, TeamdashError
from shared.logs import context_with
from shared.protocol import (
    MAX_COMMAND_CHARS,
    AgentCommandPayload,
    AgentEvent,
    AgentPermissionPayload,
    AgentRef,
    InputRequestEvent,
    OutputStream,
    PermissionRequestEvent,
    PermissionResolvedEvent,
    TerminateAgentPayload,
    TurnEndEvent,
    now_ms,
)
from shared.runner_protocol import RunnerRequest
from shared.tasks import OwnedTasks

log = logging.getLogger("runner.agent")

#: Requests queued for one agent before new ones are refused (the gateway allows 10/s).
INBOX_SIZE = 64
#: Longest a command may wait for the agent to read its stdin.
STDIN_TIMEOUT_S = 5.0
#: Commands remembered for completion matching.
MAX_PENDING = 1024
#: How long a command's outcome reply is retried after connection errors (its gateway
#: waits for it as long as the runner's heartbeat and its own Redis link hold).
OUTCOME_RETRY_MS = 15_000
READ_SIZE = 64 * 1024
STDERR_TAIL_CHARS = 8192
#: After the process group is gone, the pumps drain what the pipes still hold, unpaced, for
#: as long as they keep reading, but stop after this long without reading anything (a pipe
#: held open by a process outside our reach), and after DRAIN_MAX_S in all (one that keeps
#: writing).
DRAIN_TIMEOUT_S = 2.0
DRAIN_MAX_S = 30.0
MIB = 1024 * 1024
OOM_MARKERS = (
    "MemoryError",
    "Cannot allocate memory",
    "out of memory",
    "Out of memory",
    "std::bad_alloc",
    "heap out of memory",
)


class Replier(Protocol):
    def __call__(
        self,
        request: RunnerRequest,
        *,
        error: TeamdashError | None = None,
        result: dict[str, Any] | None = None,
        outcome_follows: bool = False,
        deadline_ms: int | None = None,
    ) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class AgentInfo:
    agent_id: str
    name: str
    owner: str
    model: ModelSpec
    workspace: str
    workspace_path: Path
    runner_id: str
    start_time: int
    request_id: str
    memory_mb: int | None = None
    cpu_cores: float | None = None
    cpus: tuple[int, ...] | None = None


@dataclass(eq=False, slots=True)
class PendingCommand:
    request_id: str
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    #: Requests owed this turn's outcome (``wait: "completed"``): the command, and replies
    #: to the CLI's questions typed within its turn.
    waiters: list[RunnerRequest] = field(default_factory=list)
    #: The first failure the driver read in this turn: the code and message of its outcome.
    failure: Failure | None = None


def _payload(model: type[Any], request: RunnerRequest) -> Any:
    try:
        return model.model_validate(request.payload)
    except ValidationError as e:
        raise InvalidRequest(f"invalid {request.kind} payload: {e.errors()[0]['msg']}") from e


def _waiting_for(event: object) -> str | None:
    """What the agent waits for, if ``event`` says it stopped to ask (for the alert)."""
    if isinstance(event, PermissionRequestEvent):
        return f"waits for permission to use {event.tool} ({event.summary})"
    if isinstance(event, InputRequestEvent):
        return f"waits for input: {event.prompt}"
    return None


def _how_it_ended(reason: str, exit_code: int | None, sig: str | None) -> str:
    """How an agent ended, for a person (``reason`` as in ``agent:status.details``)."""
    if reason in ("terminated", "killed"):
        return f"was {reason}"
    if reason == "runner-stopped":
        return "was stopped with its runner"
    if reason == "oom":
        return "exceeded its memory limit"
    if sig is not None:
        return f"was killed by {sig}"
    return f"exited with code {exit_code}"


class Agent:
    def __init__(
        self,
        info: AgentInfo,
        process: AgentProcess,
        *,
        outbox: Outbox,
        registry: Registry,
        reply: Replier,
        grace_s: float,
        on_ended: Callable[[Agent], None],
        output_events_per_second: int = 0,
        output_bytes_per_second: int = 0,
    ) -> None:
        self.info = info
        self.process = process
        self.state = AgentState()
        self._outbox = outbox
        self._registry = registry
        self._reply = reply
        self._grace_s = grace_s
        self._on_ended = on_ended
        self._seq = 0
        #: Shared by the stdout and stderr pumps (None: unlimited).
        self._pacer = (
            OutputPacer(output_events_per_second, output_bytes_per_second)
            if output_events_per_second or output_bytes_per_second
            else None
        )
        self._lock = asyncio.Lock()
        self._inbox: asyncio.Queue[RunnerRequest] = asyncio.Queue(maxsize=INBOX_SIZE)
        self.tasks = OwnedTasks(log, f"agent {info.agent_id}")
        self._pumps: list[asyncio.Task[None]] = []
        #: Bytes the pumps read so far (the drain at exit goes on while this grows).
        self._pumped = 0
        #: The process group is gone: the pumps drain the pipes without pacing.
        self._exited = asyncio.Event()
        self._escalation: asyncio.Task[None] | None = None
        self._pending: deque[PendingCommand] = deque()
        self._driver = info.model.make_driver()
        self._stdout_lines = LineJoiner()
        self._stderr_tail = ""
        self._stop_reason = "terminated"
        self._stop_correlation: str | None = None
        self._abandoned = False
        self.ended = asyncio.Event()
        self.peak_memory = 0
        self.last_activity: int | None = None
        #: The registry record of this agent's end when writing it failed (Redis was
        #: unreachable): the runner writes it again once Redis is back.
        self.unrecorded_end: AgentUpdate | None = None

    # -- identity -----------------------------------------------------------------
    @property
    def agent_id(self) -> str:
        return self.info.agent_id

    @property
    def status(self) -> Status:
        return self.state.status

    @property
    def sequence(self) -> int:
        """The last output sequence number used."""
        return self._seq

    def _task(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return self.tasks.spawn(
            coro, f"{name}:{self.agent_id}", context=context_with(agent_id=self.agent_id)
        )

    async def _set_registry(self, *, status: Status) -> None:
        try:
            await self._registry.update(self.agent_id, AgentUpdate(status=protocol_status(status)))
        except RedisError as e:
            log.warning("agent %s: registry update failed: %s", self.agent_id, e)

    def _status_items(self, correlation: str | None, **details: Any) -> list[events.Item]:
        return events.status(
            self.agent_id,
            self.info.owner,
            self.state.status.value,
            correlation,
            pid=self.process.pid,
            runnerId=self.info.runner_id,
            **details,
        )

    # -- start ----------------------------------------------------------------------
    async def announce(self) -> None:
        """Publish ``agent:created`` and ``starting`` → ``running``, then start the tasks.
        Call once, after the create reply was sent."""
        info = self.info
        async with self._lock:
            self._task(self._supervise(), "supervise")
            self._task(self._serve(), "serve")
            try:
                items = events.created(
                    info.agent_id,
                    info.owner,
                    info.name,
                    self.process.pid,
                    info.start_time,
                    info.request_id,
                )
                items += self._status_items(info.request_id)
                self.state.handle(Event.STARTED)
                await self._set_registry(status=self.state.status)
                items += self._status_items(info.request_id)
                self._outbox.put_many(items)
            finally:
                self._pumps = [
                    self._task(self._pump("stdout", self.process.stdout), "stdout"),
                    self._task(self._pump("stderr", self.process.stderr), "stderr"),
                ]

    # -- requests ---------------------------------------------------------------------
    def submit(self, request: RunnerRequest) -> None:
        """Queue a request for this agent (handled in order). Raises :class:`Busy`."""
        if self.ended.is_set():
            raise AgentNotFound(f"agent {self.agent_id} has ended")
        try:
            self._inbox.put_nowait(request)
        except asyncio.QueueFull:
            raise Busy(f"too many requests queued for agent {self.agent_id}") from None

    async def _serve(self) -> None:
        while True:
            request = await self._inbox.get()
            try:
                await self._handle(request)
            except TeamdashError as e:
                await self._reply(request, error=e)
            except Exception as e:  # a bug must not stop the agent's request handling
                log.exception("agent %s: %s request failed", self.agent_id, request.kind)
                await self._reply(request, error=TeamdashError(ErrorCode.INTERNAL_ERROR, str(e)))

    async def _handle(self, request: RunnerRequest) -> None:
        if request.kind == "command":
            await self._command(request, _payload(AgentCommandPayload, request))
        elif request.kind == "permission":
            await self._permission(request, _payload(AgentPermissionPayload, request))
        elif request.kind == "pause":
            _payload(AgentRef, request)
            await self._signal_transition(request, Event.PAUSE, signal.SIGSTOP)
        elif request.kind == "resume":
            _payload(AgentRef, request)
            await self._signal_transition(request, Event.RESUME, signal.SIGCONT)
        elif request.kind == "terminate":
            payload: TerminateAgentPayload = _payload(TerminateAgentPayload, request)
            await self.terminate(force=bool(payload.force), request=request)
        else:
            raise InvalidRequest(f"{request.kind!r} is not an agent request")

    async def _signal_transition(self, request: RunnerRequest, event: Event, sig: int) -> None:
        async with self._lock:
            if not self.state.can(event):
                raise self._illegal(event)
            if not self.process.signal_group(sig):
                raise AgentNotFound(f"agent {self.agent_id} has exited")
            self.state.handle(event)
            await self._set_registry(status=self.state.status)
            await self._reply(request, result={"agentId": self.agent_id})
            self._outbox.put_many(self._status_items(request.requestId))

    def _illegal(self, event: Event) -> TeamdashError:
        status = self.state.status
        if status in FINAL:
            return AgentNotFound(f"agent {self.agent_id} has {status.value}")
        if status == Status.STOPPING:
            return AgentNotFound(f"agent {self.agent_id} is stopping")
        if event == Event.PAUSE and status == Status.PAUSED:
            return InvalidRequest(f"agent {self.agent_id} is already paused")
        if event == Event.RESUME and status == Status.RUNNING:
            return InvalidRequest(f"agent {self.agent_id} is not paused")
        return IllegalTransition(status, event)

    async def _command(self, request: RunnerRequest, payload: AgentCommandPayload) -> None:
        status = self.state.status
        if status == Status.PAUSED:
            raise InvalidRequest(
                f"agent {self.agent_id} is paused: resume it before sending commands"
            )
        if status == Status.STARTING:
            raise InvalidRequest(f"agent {self.agent_id} is still starting")
        if status != Status.RUNNING:
            raise self._illegal(Event.TERMINATE)  # stopping or ended: AGENT_NOT_FOUND
        driver = self._driver
        text = sanitize_command(
            payload.command, max_chars=MAX_COMMAND_CHARS, multiline=driver.multiline
        )
        # A reply to the CLI's question goes on the turn that asked it (no turn of its own).
        tracked = driver.detects_turns and not driver.awaiting_reply
        waits = payload.wait == "completed"
        if waits and not driver.detects_turns:
            raise InvalidRequest(
                f"model {self.info.model.name!r} cannot tell when a turn ends (its driver "
                'has no completion marker): send the command without wait "completed" and '
                "follow the agent's output"
            )
        if waits and not tracked and not self._pending:
            raise InvalidRequest(
                f"agent {self.agent_id} waits for a reply to a question no command's turn "
                'asked: this reply has no turn to wait for; send it without wait "completed"'
            )
        data = driver.frame(text)
        stdin = self.process.stdin
        if stdin.is_closing():
            raise AgentNotFound(f"agent {self.agent_id} no longer reads commands (stdin closed)")
        pending = PendingCommand(request.requestId) if tracked else None
        if pending is not None:
            if len(self._pending) >= MAX_PENDING:
                old = self._pending.popleft()
                if old.timer is not None:
                    old.timer.cancel()
                self._owe(
                    old,
                    error=TeamdashError(
                        ErrorCode.RESOURCE_EXHAUSTED,
                        f"over {MAX_PENDING} commands of agent {self.agent_id} wait for their "
                        "turns: this one's outcome is no longer tracked",
                    ),
                )
            self._pending.append(pending)
        if waits:
            # The turn whose outcome this command gets: its own, or (a reply) the one that
            # asked. Set before writing: the turn may end while the write drains.
            (pending or self._pending[0]).waiters.append(request)
        try:
            stdin.write(data)
            async with asyncio.timeout(STDIN_TIMEOUT_S):
                await stdin.drain()
        except TimeoutError:
            self._forget(pending, request)
            raise CommandTimeout(
                f"agent {self.agent_id} did not read its input within {STDIN_TIMEOUT_S:g}s"
            ) from None
        except (BrokenPipeError, ConnectionResetError) as e:
            self._forget(pending, request)
            raise AgentNotFound(
                f"agent {self.agent_id} no longer reads commands (stdin closed)"
            ) from e
        self.last_activity = now_ms()
        result: dict[str, Any] = {"agentId": self.agent_id}
        if payload.timeout is not None:
            if pending is None:
                result["timeoutEnforced"] = False
            elif any(p is pending for p in self._pending):
                loop = asyncio.get_running_loop()
                pending.timer = loop.call_later(
                    payload.timeout / 1000, self._command_timed_out, pending, payload.timeout
                )
        # If the turn ended while the write drained, its outcome went out already (the
        # gateway takes whichever reply is final).
        await self._reply(request, result=result, outcome_follows=waits)

    async def _permission(self, request: RunnerRequest, payload: AgentPermissionPayload) -> None:
        if self.state.status not in (Status.RUNNING, Status.PAUSED):
            raise self._illegal(Event.TERMINATE)
        allow = payload.decision == "allow"
        try:
            data, tool = self._driver.answer(
                payload.requestId, allow=allow, message=payload.message
            )
        except DriverError as e:
            raise InvalidRequest(f"agent {self.agent_id}: {e}") from e
        stdin = self.process.stdin
        if stdin.is_closing():
            raise AgentNotFound(f"agent {self.agent_id} no longer reads input (stdin closed)")
        stdin.write(data)
        # Queued before anything is awaited, so it precedes what the answer makes the CLI
        # print (the pump cannot run in between).
        event = PermissionResolvedEvent(
            kind="permission_resolved", requestId=payload.requestId, decision=payload.decision
        )
        self._publish_readable(f"[permission] {tool}: {payload.decision}", event, request.requestId)
        try:
            async with asyncio.timeout(STDIN_TIMEOUT_S):
                await stdin.drain()
        except TimeoutError:
            raise CommandTimeout(
                f"agent {self.agent_id} did not read its input within {STDIN_TIMEOUT_S:g}s"
            ) from None
        except (BrokenPipeError, ConnectionResetError) as e:
            raise AgentNotFound(f"agent {self.agent_id} no longer reads input") from e
        await self._reply(request, result={"agentId": self.agent_id, "tool": tool})

    def _forget(self, pending: PendingCommand | None, request: RunnerRequest) -> None:
        """A command that could not be written: no turn of its own, no outcome owed."""
        if pending is not None:
            with contextlib.suppress(ValueError):
                self._pending.remove(pending)
        for turn in self._pending:
            with contextlib.suppress(ValueError):
                turn.waiters.remove(request)

    def _owe(
        self,
        turn: PendingCommand,
        *,
        error: TeamdashError | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Reply the turn's outcome to the requests waiting for it, each in a task of this
        agent (called from a pump or a timer, which must not wait for Redis)."""
        waiters, turn.waiters = turn.waiters, []
        for request in waiters:
            self._task(self._send_outcome(request, error, result), "outcome")

    async def _send_outcome(
        self, request: RunnerRequest, error: TeamdashError | None, result: dict[str, Any] | None
    ) -> None:
        await self._reply(
            request, error=error, result=result, deadline_ms=now_ms() + OUTCOME_RETRY_MS
        )

    def _command_timed_out(self, pending: PendingCommand, timeout_ms: int) -> None:
        pending.timer = None
        if self.ended.is_set() or not any(p is pending for p in self._pending):
            return
        pending.timed_out = True
        text = f"the command did not complete within {timeout_ms} ms"
        self._outbox.put_many(
            events.error(
                self.agent_id,
                self.info.owner,
                ErrorCode.AGENT_COMMAND_TIMEOUT.name,
                text,
                pending.request_id,
                error_code=ErrorCode.AGENT_COMMAND_TIMEOUT,
            )
        )
        self._owe(pending, error=CommandTimeout(text))

    def _completed(self, end: TurnEndEvent) -> None:
        """The oldest pending command's turn ended: its outcome to those waiting for it."""
        if not self._pending:
            return
        done = self._pending.popleft()
        if done.timer is not None:
            done.timer.cancel()
            done.timer = None
        if not done.waiters:
            return
        if end.success:
            turn = end.model_dump(exclude_none=True)
            self._owe(done, result={"agentId": self.agent_id, "turn": turn})
            return
        failure = done.failure
        if failure is None:
            code = ErrorCode.__members__.get(end.errorCode or "", ErrorCode.AGENT_TURN_FAILED)
            failure = Failure(code.name, end.error or "the command's turn failed")
        self._owe(done, error=TeamdashError(failure.error_code, failure.message))

    def _cancel_timers(self) -> None:
        for pending in self._pending:
            if pending.timer is not None:
                pending.timer.cancel()
                pending.timer = None
        self._pending.clear()

    # -- terminate --------------------------------------------------------------------
    async def terminate(
        self, *, force: bool, request: RunnerRequest | None, reason: str = "terminated"
    ) -> None:
        """Stop the agent: SIGTERM to the group (+SIGCONT if paused), SIGKILL after the grace
        period; ``force`` = SIGKILL at once. Replies once the signal was sent; the final
        ``stopped`` follows when the process is gone."""
        async with self._lock:
            status = self.state.status
            if not self.state.can(Event.TERMINATE):
                raise self._illegal(Event.TERMINATE)
            correlation = request.requestId if request is not None else None
            self.state.handle(Event.TERMINATE)
            if status == Status.STOPPING:
                if force:
                    self._stop_reason = "killed"
                    self.process.signal_group(signal.SIGKILL)
                if request is not None:
                    await self._reply(request, result={"agentId": self.agent_id})
                return
            self._stop_reason = "killed" if force else reason
            self._stop_correlation = correlation
            await asyncio.to_thread(self.process.snapshot)
            await self._set_registry(status=self.state.status)
            if force:
                self.process.signal_group(signal.SIGKILL)
            else:
                self.process.signal_group(signal.SIGTERM)
                if status == Status.PAUSED:
                    self.process.signal_group(signal.SIGCONT)
                self._escalation = self._task(self._escalate(), "escalate")
            if request is not None:
                await self._reply(request, result={"agentId": self.agent_id})
            self._outbox.put_many(self._status_items(correlation))

    async def _escalate(self) -> None:
        await asyncio.sleep(self._grace_s)
        if self.process.returncode is None:
            log.info("agent %s did not stop within %gs: SIGKILL", self.agent_id, self._grace_s)
        await asyncio.to_thread(self.process.snapshot)
        self.process.signal_group(signal.SIGKILL)

    async def stop(self, *, reason: str) -> None:
        """Terminate (unless already ending) and wait until the agent has ended."""
        with contextlib.suppress(TeamdashError):
            await self.terminate(force=False, request=None, reason=reason)
        await self.ended.wait()

    # -- output -------------------------------------------------------------------------
    async def _drain_pumps(self) -> None:
        """Let the pumps read the pipes to their end (see :data:`DRAIN_TIMEOUT_S`)."""
        pending = set(self._pumps)
        deadline = asyncio.get_running_loop().time() + DRAIN_MAX_S
        while pending:
            before = self._pumped
            _, pending = await asyncio.wait(pending, timeout=DRAIN_TIMEOUT_S)
            if self._pumped == before or asyncio.get_running_loop().time() >= deadline:
                break
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _pump(self, stream: OutputStream, reader: asyncio.StreamReader) -> None:
        splitter = OutputSplitter()
        loop = asyncio.get_running_loop()
        while True:
            await self._outbox.wait_room()
            deadline = splitter.deadline
            try:
                if deadline is None:
                    data = await reader.read(READ_SIZE)
                else:
                    async with asyncio.timeout_at(deadline):
                        data = await reader.read(READ_SIZE)
            except TimeoutError:
                self._emit(stream, splitter.flush())
                if stream == "stdout":
                    self._partial_stdout()
                continue
            if not data:
                self._emit(stream, splitter.finish())
                return
            self._pumped += len(data)
            now = loop.time()
            emitted = self._emit(stream, splitter.feed(data, now))
            if self._pacer is not None:
                # Paced by events and by bytes: an agent printing without newlines makes
                # few events but many bytes, and subscribers' send buffers hold bytes.
                delay = self._pacer.delay_after(emitted, now, len(data))
                if delay > 0 and not self._exited.is_set():
                    # Not once the process is gone: what is left is one pipeful at most.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._exited.wait()

    def _emit(self, stream: OutputStream, pieces: list[Piece]) -> int:
        """Queue ``pieces`` as output events; returns how many."""
        if not pieces:
            return 0
        ts = now_ms()
        self.last_activity = ts
        if stream == "stdout":
            return self._read_stdout(pieces, ts)
        first = self._seq + 1
        self._seq += len(pieces)
        self._outbox.put_many(
            events.outputs(
                self.agent_id, self.info.owner, stream, [p.text for p in pieces], first, ts
            )
        )
        self._stderr_tail = (self._stderr_tail + "".join(p.text for p in pieces))[
            -STDERR_TAIL_CHARS:
        ]
        return len(pieces)

    def _read_stdout(self, pieces: list[Piece], ts: int) -> int:
        """Publish stdout as it is (passthrough drivers) or as the driver's readable events,
        and act on what the driver read in each whole line; returns the events queued."""
        driver = self._driver
        emitted = 0
        if driver.passthrough:
            first = self._seq + 1
            self._seq += len(pieces)
            texts = [p.text for p in pieces]
            self._outbox.put_many(
                events.outputs(self.agent_id, self.info.owner, "stdout", texts, first, ts)
            )
            emitted = len(pieces)
        for piece in pieces:
            line = self._stdout_lines.add(piece)
            if line is not None:
                emitted += self._act(driver.read(line), line)
        return emitted

    def _partial_stdout(self) -> None:
        """Text without a newline for a while: maybe a prompt waiting for a reply."""
        pending = self._stdout_lines.pending
        if pending:
            self._act(self._driver.read_partial(pending), None)

    def _act(self, reading: Reading, raw: str | None) -> int:
        """Publish what the driver read (the first event carries the ``raw`` line), write
        its answer, surface its failures and end the turn; returns the events queued."""
        turn = self._pending[0] if self._pending else None
        correlation = turn.request_id if turn is not None else None
        if reading.reply is not None and not self.process.stdin.is_closing():
            self.process.stdin.write(reading.reply)
        info = self.info
        items: list[events.Item] = []
        ts = now_ms()
        for k, shown in enumerate(reading.shown):
            self._seq += 1
            items.append(
                events.readable(
                    info.agent_id,
                    info.owner,
                    shown.text,
                    shown.event,
                    self._seq,
                    ts,
                    raw=raw if k == 0 and not self._driver.passthrough else None,
                    correlation_id=correlation,
                )
            )
            waiting = _waiting_for(shown.event)
            if waiting is not None:
                items.append(
                    events.alert(
                        "warning",
                        f"agent {info.name!r} {waiting}",
                        owner=info.owner,
                        agent_id=info.agent_id,
                        details={"agentId": info.agent_id, "name": info.name},
                    )
                )
        for failure in reading.failures:
            if turn is not None and turn.failure is None:
                turn.failure = failure
            items += events.error(
                info.agent_id,
                info.owner,
                failure.code,
                failure.message,
                correlation,
                error_code=failure.error_code,
            )
            items.append(
                events.alert(
                    "error",
                    f"agent {info.name!r}: {failure.message}",
                    owner=info.owner,
                    agent_id=info.agent_id,
                    details={"agentId": info.agent_id, "name": info.name, "code": failure.code},
                )
            )
        if items:
            self._outbox.put_many(items)
        if reading.turn_end is not None:
            self._completed(reading.turn_end)
        return len(reading.shown)

    def _publish_readable(self, text: str, event: AgentEvent, correlation: str | None) -> None:
        """One readable event the runner itself adds (not read from the CLI)."""
        self._seq += 1
        item = events.readable(
            self.agent_id,
            self.info.owner,
            text + "\n",
            event,
            self._seq,
            now_ms(),
            raw=None,
            correlation_id=correlation,
        )
        self._outbox.put_many([item])

    # -- end ------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        returncode = await self.process.wait()
        try:
            await self._on_exit(returncode)
        finally:
            self.ended.set()
            self._on_ended(self)

    def _oom(self, returncode: int) -> bool:
        if any(marker in self._stderr_tail for marker in OOM_MARKERS):
            return True
        limit = self.info.memory_mb
        fatal = (-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS)
        return limit is not None and returncode in fatal and self.peak_memory >= 0.8 * limit * MIB

    async def _on_exit(self, returncode: int) -> None:
        async with self._lock:
            if self._escalation is not None and not self._escalation.done():
                self._escalation.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._escalation
            left = await self.process.kill_everything()
            if left:
                log.error("agent %s: processes survive SIGKILL: %s", self.agent_id, left)
            if self._pumps:
                self._exited.set()
                await self._drain_pumps()
            # Whatever the pumps read last has been acted on: these turns never ended.
            waiting = [request for turn in self._pending for request in turn.waiters]
            self._cancel_timers()
            exit_code = returncode if returncode >= 0 else None
            sig = signal_name(-returncode) if returncode < 0 else None
            status = self.state.status
            correlation: str | None = None
            if self._abandoned:
                # Already reported crashed (runner-lost) by whoever reaped us: stay quiet.
                self.state.handle(Event.LOST)
                log.warning("abandoned agent %s is gone", self.agent_id)
                await self._unfinished(waiting, "was killed (its runner had been taken for dead)")
                return
            if status == Status.STOPPING:
                event, reason, correlation = Event.REAPED, self._stop_reason, self._stop_correlation
            elif returncode == 0:
                event, reason = Event.EXITED, "exited"
            elif self._oom(returncode):
                event, reason = Event.FAILED, "oom"
            else:
                event, reason = Event.FAILED, "signal" if sig else "error"
            new = self.state.handle(event)
            ended = now_ms()
            record = AgentUpdate(
                status=protocol_status(new),
                end_time=ended,
                exit_code=exit_code,
                signal=sig,
                reason=reason,
            )
            try:
                await self._registry.finish(
                    self.agent_id, self.info.owner, self.info.runner_id, record
                )
            except RedisError as e:
                self.unrecorded_end = record
                log.warning(
                    "agent %s: recording its end failed (%s); retried when Redis is back",
                    self.agent_id,
                    e,
                )
            details = events.ended_details(
                pid=self.process.pid,
                start_time=self.info.start_time,
                reason=reason,
                runner_id=self.info.runner_id,
                exit_code=exit_code,
                signal=sig,
                last_activity=self.last_activity,
            )
            items = events.status(self.agent_id, self.info.owner, new.value, correlation, **details)
            if new == Status.CRASHED:
                items += self._crash_items(reason, exit_code, sig)
            self._outbox.put_many(items)
            log.info("agent %s %s (%s, exit %s)", self.agent_id, new.value, reason, returncode)
            await self._unfinished(waiting, _how_it_ended(reason, exit_code, sig))

    async def _unfinished(self, waiting: list[RunnerRequest], how: str) -> None:
        """The agent ended before the turns ``waiting`` wait for: AGENT_NOT_FOUND to each
        (awaited here: the agent's tasks are cancelled once it has ended)."""
        error = AgentNotFound(f"agent {self.info.name!r} {how} before the command's turn ended")
        await asyncio.gather(*(self._send_outcome(r, error, None) for r in waiting))

    def _crash_items(
        self, reason: str, exit_code: int | None, sig: str | None
    ) -> list[events.Item]:
        info = self.info
        how = f"exited with code {exit_code}" if sig is None else f"was killed by {sig}"
        if reason == "oom":
            code, level = events.CODE_OOM, "critical"
            text = (
                f"agent {info.name!r} exceeded its memory limit"
                + (f" of {info.memory_mb} MB" if info.memory_mb else "")
                + f" and {how}"
            )
        else:
            code, level = events.CODE_EXITED, "error"
            text = f"agent {info.name!r} {how}"
        details: dict[str, Any] = {
            "agentId": info.agent_id,
            "name": info.name,
            "reason": reason,
            "runnerId": info.runner_id,
            "exitCode": exit_code,
            "signal": sig,
            "memoryLimitMb": info.memory_mb,
        }
        return [
            *events.error(info.agent_id, info.owner, code, text, None),
            events.alert(
                level,  # type: ignore[arg-type]
                text,
                owner=info.owner,
                agent_id=info.agent_id,
                details={k: v for k, v in details.items() if v is not None},
            ),
        ]

    def republish_status(self) -> None:
        """Publish the current ``agent:status`` again (after Redis lost its data: the
        topics start a new epoch with the truth, and subscribers learn it)."""
        self._outbox.put_many(self._status_items(None))

    async def abandon(self) -> None:
        """The registry says this agent was lost (our runner was taken for dead and reaped,
        which published ``crashed``): kill it, and say so with an ``agent:error``; its end
        was already published."""
        async with self._lock:
            if self.state.status in FINAL or self._abandoned:
                return
            self._abandoned = True
            await asyncio.to_thread(self.process.snapshot)
            self.process.signal_group(signal.SIGKILL)
            info = self.info
            text = (
                f"agent {info.name!r} was killed: its runner {info.runner_id} had been taken "
                "for dead and the agent reported crashed, so it may not run on unseen"
            )
            log.error("agent %s (pid %d) killed: %s", self.agent_id, self.process.pid, text)
            self._outbox.put_many(
                events.error(self.agent_id, info.owner, events.CODE_LOST, text, None)
            )

    async def close(self) -> None:
        """Cancel and await every task of this agent; answer requests still queued. The
        process is killed if it is still there (normally it has ended already)."""
        if self.process.returncode is None:
            self.process.signal_group(signal.SIGKILL)
        await self.tasks.close()
        while not self._inbox.empty():
            request = self._inbox.get_nowait()
            await self._reply(request, error=AgentNotFound(f"agent {self.agent_id} has ended"))
