"""The client's rules on the core, without a socket or Redis (``gateway/client_session.py``):
the phase table, auth first, admission and floods, token expiry and refresh, visibility and
permissions, subscriptions, resume planning and cursor bookkeeping."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from gateway.client_session import (
    FLOOD_DISCONNECT_AFTER,
    TRANSITIONS,
    Action,
    Audit,
    ClientSession,
    Close,
    ContinueCatchUp,
    Detach,
    IllegalTransition,
    Phase,
    Send,
    SendFrames,
    StartExpiryTimer,
    StoredSession,
    StoredSubscription,
    Trigger,
    WriteSession,
)
from gateway.settings import GatewaySettings
from shared.agent_info import AgentSnapshot, agent_info
from shared.agent_record import AgentRecord
from shared.bus import Event, HistoryPage, Position, Replay
from shared.errors import ErrorCode, TeamdashError
from shared.protocol import (
    AckMessage,
    AgentHistoryMessage,
    AgentInfo,
    AgentListMessage,
    ConnectionStatusMessage,
    HeartbeatMessage,
    SubscribeMessage,
    SystemAlertMessage,
    decode_client_message,
    encode,
)
from shared.settings import Env
from shared.tokens import Identity

NOW = 1000.0
WALL = 1_700_000_000.0
SETTINGS = GatewaySettings.from_env(
    Env({"TEAMDASH_JWT_SECRET": "x" * 32, "TEAMDASH_MAX_SUBSCRIPTIONS": "3"})
)


def identity(user: str = "alice", *roles: str, expires_in: float = 3600) -> Identity:
    return Identity(user, frozenset(roles or ("operator",)), WALL + expires_in)


class Shared:
    """The shared limits as the core sees them: a decision per message."""

    def __init__(self) -> None:
        self.refuse: str | None = None
        self.seen: list[tuple[str | None, str, float]] = []

    def __call__(self, user: str | None, ip_key: str, wall: float) -> str | None:
        self.seen.append((user, ip_key, wall))
        return self.refuse


def session(limits: Shared | None = None) -> ClientSession[str]:
    return ClientSession(
        "conn",
        SETTINGS,
        connection_id="c1",
        ip="198.51.100.7",
        ip_key="198.51.100.7",
        admit=limits or Shared(),
        now=NOW,
    )


def frame(type_: str, payload: Any = None, id_: str = "m1") -> str:
    doc: dict[str, Any] = {"id": id_, "type": type_}
    if payload is not None:
        doc["payload"] = payload
    return json.dumps(doc)


def opened(user: str = "alice", *roles: str) -> ClientSession[str]:
    s = session()
    got = s.receive(frame("auth", {"token": "t", "clientId": "c"}), NOW, WALL)
    assert got.message is not None and got.actions == []
    s.authenticate(identity(user, *roles), None, new_session_id="sess-1")
    s.opened("m1", resumed=False, replays={}, gateway_id="gw-1")
    return s


def acks(actions: list[Action]) -> list[AckMessage]:
    return [a.message for a in actions if isinstance(a, Send) and isinstance(a.message, AckMessage)]


def subscribe(s: ClientSession[str], kind: str, **payload: Any) -> SubscribeMessage:
    message = decode_client_message(frame(f"subscribe:{kind}", payload or None, id_=f"sub-{kind}"))
    assert isinstance(message, SubscribeMessage)
    return message


# -- the phase table -------------------------------------------------------------------------
def test_the_table_has_the_issue_s_moves_and_closed_is_final():
    assert TRANSITIONS[(Phase.AWAITING_AUTH, Trigger.AUTH_ACCEPTED)] is Phase.OPEN
    assert TRANSITIONS[(Phase.OPEN, Trigger.TOKEN_REFRESHED)] is Phase.OPEN
    for trigger in (Trigger.TOKEN_EXPIRED, Trigger.FLOOD, Trigger.HEARTBEAT_LOST):
        assert TRANSITIONS[(Phase.OPEN, trigger)] is Phase.CLOSING
    assert TRANSITIONS[(Phase.CLOSING, Trigger.CLOSE)] is Phase.CLOSED
    assert not [key for key in TRANSITIONS if key[0] is Phase.CLOSED]


def test_illegal_moves_raise():
    s = session()
    with pytest.raises(IllegalTransition, match="token refreshed is not possible"):
        s.refresh("m", identity(), {})  # no token to refresh before auth
    s = opened()
    with pytest.raises(IllegalTransition):
        s.authenticate(identity(), None, new_session_id="again")
    s.closed(0)
    assert s.phase is Phase.CLOSED
    with pytest.raises(IllegalTransition):
        s._move(Trigger.CLOSE)


# -- auth first ------------------------------------------------------------------------------
def test_before_auth_requests_get_auth_failed_and_pings_nothing():
    s = session()
    got = s.receive(frame("subscribe:metrics"), NOW, WALL)
    [reply] = acks(got.actions)
    assert got.message is None and reply.payload.code is ErrorCode.AUTH_FAILED
    assert not [a for a in got.actions if isinstance(a, Audit)]  # not a security event
    assert s.receive(frame("ping"), NOW, WALL).actions == []
    assert s.phase is Phase.AWAITING_AUTH


def test_a_refused_token_is_acked_audited_then_closed_1008():
    s = session()
    actions = s.auth_refused("m1", TeamdashError(ErrorCode.TOKEN_EXPIRED, "token expired"))
    assert [type(a) for a in actions] == [Audit, Send, Close]
    assert actions[2] == Close(1008, "TOKEN_EXPIRED")
    assert s.phase is Phase.CLOSING
    # Whatever the client still sends is dropped.
    assert s.receive(frame("auth", {"token": "t", "clientId": "c"}), NOW, WALL).message is None


def test_no_auth_in_time_is_audited_and_closed():
    s = session()
    audit, close = s.auth_timed_out()
    assert isinstance(audit, Audit) and audit.kind == "auth_failed"
    assert close == Close(1008, "AUTH_FAILED: no auth message within 5s")


def test_opening_sends_the_status_and_starts_the_expiry_timer():
    s = session()
    s.authenticate(identity(), None, new_session_id="sess-1")
    timer, sent = s.opened("m1", resumed=False, replays={}, gateway_id="gw-1")
    assert isinstance(timer, StartExpiryTimer) and timer.expire_at == WALL + 3600
    assert isinstance(sent, SendFrames) and len(sent.frames) == 1
    status = the_status(sent.frames[0])
    p = status.payload
    assert (p.sessionId, p.userId, p.resumed, p.gatewayId) == ("sess-1", "alice", False, "gw-1")
    assert p.recovered is None and p.subscriptions is None and p.roles == ["operator"]
    assert status.metadata is not None and status.metadata.correlationId == "m1"


def the_status(frame: bytes) -> ConnectionStatusMessage:
    """The status frame, checked against the model: the same bytes as its encoding."""
    status = ConnectionStatusMessage.model_validate_json(frame)
    assert encode(status) == frame
    return status


def test_another_user_s_session_cannot_be_resumed():
    s = session()
    stored = StoredSession("sess-9", "mallory", [], [])
    with pytest.raises(TeamdashError) as e:
        s.authenticate(identity("alice"), stored, new_session_id="x")
    assert e.value.code is ErrorCode.INSUFFICIENT_PERMISSIONS


# -- admission -------------------------------------------------------------------------------
def test_flood_closes_once_from_a_task_and_drops_what_follows():
    s = opened()
    limits = Shared()
    s._admit = limits
    limits.refuse = "ip"
    closes: list[Close] = []
    audits: list[str] = []
    for i in range(FLOOD_DISCONNECT_AFTER + 5):
        got = s.receive(frame("ping", id_=f"p{i}"), NOW + 10, WALL)
        closes += [a for a in got.actions if isinstance(a, Close)]
        audits += [a.kind for a in got.actions if isinstance(a, Audit)]
    assert closes == [Close(1008, "RATE_LIMIT_EXCEEDED", wait=False)]
    assert audits == ["rate_limited", "flood_disconnect"]  # one trip, one flood
    assert s.phase is Phase.CLOSING


def test_refused_requests_are_answered_and_a_success_resets_the_count():
    s = opened()
    limits = Shared()
    s._admit = limits
    limits.refuse = "user"
    [reply] = acks(s.receive(frame("subscribe:logs", id_="x"), NOW, WALL + 1).actions)
    assert reply.payload.code is ErrorCode.RATE_LIMIT_EXCEEDED
    assert "for user alice" in (reply.payload.error or "")
    assert limits.seen[-1] == ("alice", "198.51.100.7", WALL + 1)
    limits.refuse = None
    assert s.receive(frame("subscribe:logs"), NOW, WALL).message is not None
    assert s._limited_in_a_row == 0


def test_the_connection_bucket_refills_with_the_clock():
    s = opened()
    for _ in range(SETTINGS.messages_per_second):
        assert acks(s.receive(frame("ping"), NOW, WALL).actions) == []
    [reply] = acks(s.receive(frame("ping", id_="over"), NOW, WALL).actions) or [None]
    assert reply is None  # a refused ping is not answered...
    [reply] = acks(s.receive(frame("subscribe:logs", id_="over"), NOW, WALL).actions)
    assert reply.payload.code is ErrorCode.RATE_LIMIT_EXCEEDED  # ...a request is
    assert s.receive(frame("subscribe:logs"), NOW + 1.0, WALL).message is not None


def test_malformed_frames_are_answered_invalid_message():
    s = opened()
    [reply] = acks(s.receive("{not json", NOW, WALL).actions)
    assert reply.payload.code is ErrorCode.INVALID_MESSAGE
    got = s.receive(frame("agent:fly", {}), NOW, WALL)
    assert got.type == "invalid" and acks(got.actions)[0].payload.code is ErrorCode.UNSUPPORTED_TYPE


def test_ping_is_answered_with_pong():
    s = opened()
    [send] = s.receive(frame("ping", id_="p1"), NOW, WALL).actions
    assert isinstance(send, Send) and isinstance(send.message, HeartbeatMessage)
    assert send.message.type == "pong" and send.message.metadata is not None
    assert send.message.metadata.correlationId == "p1"


# -- token expiry and refresh ----------------------------------------------------------------
def test_a_request_after_expiry_gets_token_expired_then_the_connection_closes():
    s = opened()
    got = s.receive(frame("subscribe:logs", id_="late"), NOW, WALL + 3600)
    assert got.message is None
    [reply] = acks(got.actions)
    assert reply.payload.code is ErrorCode.TOKEN_EXPIRED
    notice = next(a.message for a in got.actions if isinstance(a, Send) and a.message is not reply)
    assert isinstance(notice, SystemAlertMessage) and notice.payload.level == "error"
    assert got.actions[-1] == Close(1008, "TOKEN_EXPIRED")
    assert s.phase is Phase.CLOSING
    assert s.token_expired(None) == []  # once


def test_refresh_keeps_the_user_and_restarts_the_timer():
    s = opened()
    with pytest.raises(TeamdashError) as e:
        s.refresh("r1", identity("bob"), {})
    assert e.value.code is ErrorCode.AUTH_FAILED
    actions = s.refresh("r2", identity(expires_in=7200), {})
    assert actions[0] == StartExpiryTimer(WALL + 7200 - 60, WALL + 7200)
    [reply] = acks(actions)
    assert reply.payload.result == {"expiresAt": int((WALL + 7200) * 1000)}


def test_refresh_with_fewer_roles_ends_the_subscriptions_it_no_longer_sees():
    s = opened("alice", "admin")
    sub, _ = s.subscribe(subscribe(s, "agent", agentId="a-bob"), owner="bob")
    s.subscribed("sub-agent", sub, None)
    narrower = identity("alice", "operator")
    assert s.agents_to_recheck(narrower) == ["a-bob"]
    actions = s.refresh("r1", narrower, {"a-bob": "bob"})
    assert Detach(sub) in actions
    [reply] = acks(actions)
    assert reply.payload.result is not None
    assert reply.payload.result["endedSubscriptions"] == [sub.id]
    assert sub.id not in s.subscriptions
    write = actions[-1]
    assert isinstance(write, WriteSession) and write.update.forget == (sub.id,)


# -- visibility and permissions --------------------------------------------------------------
def test_viewers_see_every_agent_but_may_not_control_one():
    s = opened("vic", "viewer")
    assert s.may_see("bob") and s.visible_owner() is None
    with pytest.raises(TeamdashError) as e:
        s.require_control()
    assert e.value.code is ErrorCode.INSUFFICIENT_PERMISSIONS


def test_operators_see_their_own_agents_only():
    s = opened("alice", "operator")
    assert s.may_see("alice") and not s.may_see("bob")
    with pytest.raises(TeamdashError) as e:
        s.subscribe(subscribe(s, "agent", agentId="a-bob"), owner="bob")
    assert e.value.code is ErrorCode.INSUFFICIENT_PERMISSIONS
    sub, _ = s.subscribe(subscribe(s, "agent"))
    assert sub.filter.owner == "alice"  # lifecycle events of her agents only
    s.require_control()


# -- subscriptions ---------------------------------------------------------------------------
def test_subscribe_ack_comes_before_the_catch_up_and_then_the_session_is_written():
    s = opened()
    sub, since = s.subscribe(subscribe(s, "metrics"))
    assert since is None and sub.topic == "metrics"
    sub.catching_up, sub.cursor = True, Position(1, "e")
    data = orjson.dumps({"type": "metrics:update"})
    replay = Replay([Event("metrics", 2, "e", (), data)], Position(2, "e"), 0, True)
    actions = s.subscribed("sub-metrics", sub, replay)
    assert [type(a) for a in actions] == [Send, SendFrames, WriteSession]
    assert acks(actions)[0].payload.result == {"subscriptionId": sub.id, "topic": "metrics"}
    assert not sub.catching_up and sub.cursor == Position(2, "e")


def test_the_subscription_limit_counts_visible_subscriptions():
    s = opened()
    for _ in range(3):
        s.subscribe(subscribe(s, "logs"))
    s.agent_created(decode_client_message(_create()), "a-1", {})  # type: ignore[arg-type]
    with pytest.raises(TeamdashError) as e:
        s.subscribe(subscribe(s, "logs"))
    assert e.value.code is ErrorCode.RATE_LIMIT_EXCEEDED


def test_unknown_filters_and_unknown_subscriptions_are_invalid_messages():
    s = opened()
    with pytest.raises(TeamdashError) as e:
        s.subscribe(subscribe(s, "metrics", filters=["gpu"]))
    assert e.value.code is ErrorCode.INVALID_MESSAGE
    with pytest.raises(TeamdashError):
        s.unsubscribe(decode_client_message(frame("unsubscribe", {"subscriptionId": "no"})))  # type: ignore[arg-type]


def test_a_created_agent_is_followed_from_its_first_event_and_replayed_on_subscribe():
    s = opened()
    acked, hidden = s.agent_created(decode_client_message(_create()), "a-1", {"pid": 7})  # type: ignore[arg-type]
    assert acks(acked)[0].payload.result == {"agentId": "a-1", "pid": 7}
    assert hidden.hidden and hidden.topic == "agent:a-1"
    _, since = s.subscribe(subscribe(s, "agent", agentId="a-1"), owner="alice")
    assert since == Position(0, None)  # everything since the start


def _create() -> str:
    payload = {"name": "n", "model": "claude-3-opus", "workspace": "w"}
    return frame("agent:create", payload, id_="c1")


# -- resume and cursors ----------------------------------------------------------------------
def test_resume_starts_from_the_client_position_else_the_stored_cursor():
    s = session()
    stored = StoredSession(
        "sess-1",
        "alice",
        [
            StoredSubscription("s1", "metrics", "metrics", (), False, Position(5, "e")),
            StoredSubscription("s2", "logs", "logs", ("error",), False, Position(9, "e")),
            StoredSubscription("s3", "bogus", "x", (), False, None),
        ],
        ["a-1"],
    )
    s.authenticate(identity(), stored, new_session_id="unused")
    plan = s.resume_plan(stored, {"logs": Position(11, "e")})
    assert [(sub.id, since) for sub, since in plan] == [
        ("s1", Position(5, "e")),
        ("s2", Position(11, "e")),
    ]
    assert s.session_id == "sess-1" and s.agents == {"a-1"}
    for sub, since in plan:
        sub.catching_up, sub.cursor = True, since
    data = orjson.dumps({"type": "system:alert"})
    replays = {"s2": Replay([Event("logs", 12, "e", ("error",), data)], None, 3, False)}
    actions = s.opened("m1", resumed=True, replays=replays, gateway_id="gw")
    sent = actions[1]
    assert isinstance(sent, SendFrames) and sent.frames[1:] == [data]  # status, then replay
    p = the_status(sent.frames[0]).payload
    assert (p.resumed, p.replayed, p.missed, p.recovered) == (True, 1, 3, False)
    assert [r.subscriptionId for r in p.subscriptions or []] == ["s1", "s2"]
    assert isinstance(actions[2], WriteSession)


def test_cursors_move_only_when_the_send_buffer_drained_and_are_written_once():
    s = opened()
    sub, _ = s.subscribe(subscribe(s, "metrics"))
    s.subscribed("m", sub, None)
    sub.cursor = Position(1, "e")
    s._flushed[sub.id] = Position(1, "e")
    later = NOW + 1

    def at(_topic: str) -> Position | None:
        return Position(4, "e")

    assert s.session_update(later, 1, drained=False, position_of=at, gateway_id="gw") is None
    update = s.session_update(later, 2, drained=True, position_of=at, gateway_id="gw")
    assert update is not None and update.cursors == {sub.id: Position(4, "e")}
    assert update.last_activity_ms == 2  # the client was active: it goes with the cursor
    assert s.session_update(later, 3, drained=True, position_of=at, gateway_id="gw") is None
    # Idle for a third of the TTL: only the TTL is refreshed.
    idle = NOW + SETTINGS.session_ttl_s
    update = s.session_update(idle, 4, drained=True, position_of=at, gateway_id="gw")
    assert update is not None and update.cursors == {} and update.gateway_id == "gw"


def test_closing_detaches_everything_and_writes_the_last_state():
    s = opened()
    sub, _ = s.subscribe(subscribe(s, "logs"))
    subs, update = s.closed(77)
    assert subs == [sub] and s.subscriptions == {}
    assert update is not None and update.gateway_id == "" and update.last_activity_ms == 77
    assert s.phase is Phase.CLOSED


def test_heartbeat_pings_then_closes_once_after_two_silent_intervals():
    s = opened()
    interval = SETTINGS.heartbeat_interval_s
    assert s.heartbeat(NOW + interval) == "ping"
    assert s.heartbeat(NOW + 2 * interval + 1) == "close"
    assert s.phase is Phase.CLOSING
    assert s.heartbeat(NOW + 3 * interval) is None


# -- agent:list --------------------------------------------------------------------------------
def _info(agent_id: str, owner: str, status: str, start: int) -> AgentInfo:
    fields = {
        "agentId": agent_id,
        "owner": owner,
        "status": status,
        "startTime": str(start),
        "name": agent_id,
        "model": "echo",
        "runnerId": "r1",
    }
    record = AgentRecord.from_fields(agent_id, fields)
    assert record is not None
    return agent_info(record, usage=None, last_activity=None, now_ms=start + 5)


SNAPSHOT = AgentSnapshot(
    Position(7, "ep"),
    [
        _info("a3", "alice", "running", 30),
        _info("a1", "alice", "stopped", 10),
        _info("b1", "bob", "paused", 20),
        _info("a2", "alice", "running", 20),
    ],
)


def list_message(**payload: Any) -> AgentListMessage:
    message = decode_client_message(frame("agent:list", payload or None, id_="ls"))
    assert isinstance(message, AgentListMessage)
    return message


def listed(s: ClientSession[str], **payload: Any) -> dict[str, Any]:
    message = list_message(**payload)
    result = acks(s.agents_listed(message, s.agent_list_owner(message), SNAPSHOT))[0].payload.result
    assert result is not None
    return result


def test_agent_list_is_ordered_by_start_paged_and_carries_the_position():
    s = opened("vic", "viewer")
    first = listed(s, limit=2)
    assert [a["agentId"] for a in first["agents"]] == ["a2", "b1"]  # ended a1 left out
    assert first["position"] == {"offset": 7, "epoch": "ep"} and first["total"] == 3
    second = listed(s, limit=2, after=first["next"])
    assert [a["agentId"] for a in second["agents"]] == ["a3"] and "next" not in second
    every = listed(s, includeEnded=True)
    assert [a["agentId"] for a in every["agents"]] == ["a1", "a2", "b1", "a3"]
    assert every["agents"][0]["uptime"] == 5 and "next" not in every
    assert [a["agentId"] for a in listed(s, status=["stopped", "paused"])["agents"]] == [
        "a1",
        "b1",
    ]
    assert [a["agentId"] for a in listed(s, owner="bob")["agents"]] == ["b1"]


def test_an_operator_lists_only_their_own_agents():
    s = opened("alice", "operator")
    assert {a["owner"] for a in listed(s, includeEnded=True)["agents"]} == {"alice"}
    with pytest.raises(TeamdashError) as e:
        s.agent_list_owner(list_message(owner="bob"))
    assert e.value.code is ErrorCode.INSUFFICIENT_PERMISSIONS


def test_agent_list_refuses_a_cursor_it_did_not_make_and_bad_limits():
    s = opened("vic", "viewer")
    with pytest.raises(TeamdashError) as e:
        listed(s, after="nonsense")
    assert e.value.code is ErrorCode.INVALID_MESSAGE
    got = s.receive(frame("agent:list", {"limit": 1001}), NOW, WALL)
    assert got.message is None and acks(got.actions)[0].payload.code is ErrorCode.INVALID_MESSAGE


def test_subscribe_since_a_position_catches_up_from_it_and_acks_what_was_missed():
    s = opened()
    sub, since = s.subscribe(subscribe(s, "agent", since={"offset": 4, "epoch": "ep"}))
    assert sub.topic == "agents" and since == Position(4, "ep")
    sub.catching_up, sub.cursor = True, since
    replay = Replay([], Position(9, "ep"), 5, False)
    result = acks(s.subscribed("sub-agent", sub, replay, since_given=True))[0].payload.result
    assert result == {"subscriptionId": sub.id, "topic": "agents", "missed": 5, "recovered": False}


# -- catching up from a transcript, a page at a time ---------------------------------------
def agent_event(offset: int, *tags: str, epoch: str = "ep") -> Event:
    body = orjson.dumps({"type": "agent:output", "n": offset})
    return Event("agent:a1", offset, epoch, tags or ("stdout", "user:alice"), body)


def numbers(actions: list[Action]) -> list[int]:
    return [orjson.loads(f)["n"] for a in actions if isinstance(a, SendFrames) for f in a.frames]


def test_a_transcript_catch_up_goes_on_page_by_page_then_merges_the_queue():
    s = opened()
    sub, since = s.subscribe(subscribe(s, "agent", agentId="a1"), "alice")
    since = Position(0, None)
    sub.catching_up, sub.cursor = True, since
    first = Replay([agent_event(i) for i in (1, 2, 3)], Position(9, "ep"), 0, True, more=True)
    actions = s.subscribed("sub-agent", sub, first, since_given=True)
    assert isinstance(actions[0], Send) and numbers(actions) == [1, 2, 3]
    assert [a.subscriptions for a in actions if isinstance(a, ContinueCatchUp)] == [[sub]]
    assert sub.catching_up and s.catching_up([sub]) == Position(3, "ep")
    # Live events queue meanwhile (one the next page also holds).
    sub.queued += [agent_event(6), agent_event(10)]
    middle = Replay([agent_event(i) for i in (4, 5, 6)], Position(9, "ep"), 0, True, more=True)
    page = s.caught_up_page([sub], middle)
    assert numbers(page) == [4, 5, 6] and [e.offset for e in sub.queued] == [10]
    assert any(isinstance(a, WriteSession) for a in page)
    # The task reading the pages goes on by itself: a page never asks for another one.
    assert not any(isinstance(a, ContinueCatchUp) for a in page)
    last = Replay([agent_event(i) for i in (7, 8, 9)], Position(9, "ep"), 0, True)
    page = s.caught_up_page([sub], last)
    assert numbers(page) == [7, 8, 9, 10]
    assert not any(isinstance(a, ContinueCatchUp) for a in page)
    assert not sub.catching_up and s.catching_up([sub]) is None


def test_a_catch_up_stops_when_the_subscription_ends_and_says_what_it_lost():
    s = opened()
    sub, _ = s.subscribe(subscribe(s, "agent", agentId="a1"), "alice")
    sub.catching_up, sub.cursor = True, Position(3, "ep")
    # The transcript dropped 4..5 while the catch-up ran: a gap notice before 6.
    page = s.caught_up_page([sub], Replay([agent_event(6)], Position(9, "ep"), 2, False, more=True))
    [gap] = [a.message for a in page if isinstance(a, Send)]
    assert gap.type == "subscription:gap"
    assert (gap.payload.missed, gap.payload.since.offset, gap.payload.position.offset) == (2, 3, 5)
    # Redis fails: live from what was queued, after a gap of unknown size.
    sub.queued = [agent_event(20)]
    failed = s.catch_up_failed([sub])
    [gap] = [a.message for a in failed if isinstance(a, Send)]
    assert gap.payload.missed is None and gap.payload.position.offset == 19
    assert numbers(failed) == [20] and not sub.catching_up
    assert s.catch_up_failed([sub]) == []
    other, _ = s.subscribe(subscribe(s, "agent", agentId="a1"), "alice")
    other.catching_up = True
    s.unsubscribe(decode_client_message(frame("unsubscribe", {"subscriptionId": other.id})))
    assert s.catching_up([other]) is None


def test_history_pages_are_read_by_those_who_may_see_the_agent():
    page = HistoryPage(
        [agent_event(4), agent_event(5, "stderr", "user:alice")], Position(9, "ep"), 1
    )
    message = decode_client_message(
        frame("agent:history", {"agentId": "a1", "after": 3, "filters": ["stderr"]})
    )
    assert isinstance(message, AgentHistoryMessage)
    s = opened("vic", "viewer")
    filt = s.history_filter(message)
    [sent] = s.history_read(message, "alice", filt, page)
    assert isinstance(sent, SendFrames)
    ack = orjson.loads(sent.frames[0])
    assert ack["payload"]["messageId"] == "m1" and ack["payload"]["success"]
    assert ack["payload"]["result"] == {
        "events": [{"type": "agent:output", "n": 5}],
        "next": 5,
        "prev": 4,
        "position": {"offset": 9, "epoch": "ep"},
        "missed": 0,
    }
    AckMessage.model_validate(ack)
    # The registry forgot the agent: its events name the owner.
    assert s.history_read(message, None, filt, page)
    bob = opened("bob")
    for owner in ("alice", None):
        with pytest.raises(TeamdashError) as e:
            bob.history_read(message, owner, filt, page)
        assert e.value.code is ErrorCode.INSUFFICIENT_PERMISSIONS
    with pytest.raises(TeamdashError) as e:
        bob.history_read(message, None, filt, HistoryPage([], None, None))
    assert e.value.code is ErrorCode.AGENT_NOT_FOUND
