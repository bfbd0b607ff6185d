"""The SDK's pure cores: backoff delays, duplicate detection, client-side filters."""

from __future__ import annotations

import random

import pytest

from shared.cli import format_output
from shared.client import SeenWindow, backoff_delay, filter_accepts, metrics_sections
from shared.protocol import (
    AgentEvent,
    AgentOutputMessage,
    AgentOutputPayload,
    AgentStatusMessage,
    AgentStatusPayload,
    InputRequestEvent,
    PermissionRequestEvent,
)
from tests.gateway.test_fanout import alert, metrics

SPEC = (1, 2, 4, 8, 16, 30)


def test_backoff_follows_the_spec_then_repeats_the_last_delay() -> None:
    no_jitter = [backoff_delay(SPEC, attempt, 0.0) for attempt in range(9)]
    assert no_jitter == [1, 2, 4, 8, 16, 30, 30, 30, 30]


@pytest.mark.parametrize("rand, factor", [(0.0, 0.8), (0.5, 1.0), (0.999999, 1.2)])
def test_jitter_stays_within_the_fraction(rand: float, factor: float) -> None:
    for attempt, base in enumerate(SPEC):
        assert backoff_delay(SPEC, attempt, 0.2, lambda: rand) == pytest.approx(
            base * factor, rel=1e-5
        )


def test_jitter_spreads_reconnections() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(SPEC, 0, 0.2, rng.random) for _ in range(200)]
    assert all(0.8 <= d <= 1.2 for d in delays)
    assert max(delays) - min(delays) > 0.2  # not all clients at the same instant


def test_seen_window_drops_duplicates_and_keeps_gaps() -> None:
    w = SeenWindow()
    assert [w.add("e1", o) for o in (1, 2, 3)] == [True, True, True]
    assert w.add("e1", 2) is False and w.add("e1", 3) is False
    assert w.add("e1", 7) is True  # a jump (filtered events) is fine
    assert w.add("e1", 5) is True  # an older event not seen yet (a replay from the start)
    assert w.add("e1", 5) is False
    assert w.position is not None and (w.position.offset, w.position.epoch) == (7, "e1")


def test_seen_window_new_epoch_restarts_offsets_and_forgets_the_old_one() -> None:
    w = SeenWindow()
    w.add("old", 10)
    assert w.add("new", 1) is True
    assert w.add("old", 11) is False  # a late event of the history that was left
    assert w.position is not None and w.position.epoch == "new"


def test_seen_window_is_bounded() -> None:
    w = SeenWindow(size=100)
    for o in range(1, 1001):
        assert w.add("e", o)
    assert len(w._seen) <= 201
    assert w.add("e", 1000) is False
    assert w.add("e", 850) is False  # older than the window: treated as already seen


def _output(stream: str) -> AgentOutputMessage:
    return AgentOutputMessage(
        type="agent:output",
        payload=AgentOutputPayload(agentId="a", stream=stream, data="x", timestamp=1, sequence=1),  # type: ignore[arg-type]
    )


def test_client_side_filters_match_the_servers() -> None:
    status = AgentStatusMessage(
        type="agent:status", payload=AgentStatusPayload(agentId="a", status="running")
    )
    assert filter_accepts("agent", [], _output("stdout"))
    assert filter_accepts("agent", ["stderr"], _output("stderr"))
    assert not filter_accepts("agent", ["stderr"], _output("stdout"))
    assert filter_accepts("agent", ["status"], status)
    assert not filter_accepts("agent", ["stdout"], status)
    assert not filter_accepts("agent", [], alert("info"))
    # logs: OR within levels / categories, AND across them
    assert filter_accepts("logs", [], alert("info"))
    assert filter_accepts("logs", ["warning", "error"], alert("error", "security"))
    assert not filter_accepts("logs", ["warning"], alert("info"))
    assert filter_accepts("logs", ["critical", "security"], alert("critical", "security"))
    assert not filter_accepts("logs", ["critical", "security"], alert("critical", "resource"))
    assert filter_accepts("metrics", ["system"], metrics())
    assert not filter_accepts("metrics", [], alert("info"))


def test_metrics_sections_keep_what_was_asked_for() -> None:
    full = metrics()
    assert metrics_sections(full, []) is full
    assert metrics_sections(full, ["system", "agents"]) is full
    only_system = metrics_sections(full, ["system"]).payload
    assert only_system.system is not None and only_system.agents is None
    only_agents = metrics_sections(full, ["agents"]).payload
    assert only_agents.system is None and only_agents.agents is not None


def test_tail_shows_how_to_answer_a_permission_request_or_a_question() -> None:
    def output(data: str, event: AgentEvent | None) -> AgentOutputPayload:
        return AgentOutputPayload(
            agentId="a1", stream="stdout", data=data, timestamp=1, sequence=1, event=event
        )

    ask = PermissionRequestEvent(
        kind="permission_request", requestId="r-1", tool="Bash", summary="rm -rf build"
    )
    assert format_output(output("[permission] Bash rm -rf build: allow or deny?\n", ask)) == (
        "[permission] Bash rm -rf build: allow or deny?\n"
        "  answer: teamdash agent permission a1 r-1 allow|deny\n"
    )
    question = InputRequestEvent(kind="input_request", prompt="Apply? (Y)es/(N)o")
    assert format_output(output("Apply? (Y)es/(N)o \n", question)) == (
        "Apply? (Y)es/(N)o \n  answer: teamdash agent command a1 REPLY\n"
    )
    # A plain line tool's prompt was printed as it came (no newline): the hint goes below.
    assert format_output(output("", question)) == "\n  answer: teamdash agent command a1 REPLY\n"
    assert format_output(output("echo: hi\n", None)) == "echo: hi\n"
