"""Unit tests of the protocol models and the codec (shared/protocol.py): what is accepted,
what is refused and with which error code, and the exact shape of what the server sends."""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from shared import protocol as p
from shared.errors import ErrorCode, ProtocolError, TeamdashError

AGENT_ID = "a-1f2e3d"


def frame(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def refused(data: bytes | str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        p.decode_client_message(data)
    return info.value


# ---------------------------------------------------------------------------
# Error codes
# ---------------------------------------------------------------------------

SPEC_ERROR_CODES = {
    "AUTH_FAILED": 1001,
    "TOKEN_EXPIRED": 1002,
    "INSUFFICIENT_PERMISSIONS": 1003,
    "AGENT_NOT_FOUND": 2001,
    "AGENT_SPAWN_FAILED": 2002,
    "AGENT_LIMIT_EXCEEDED": 2003,
    "AGENT_COMMAND_TIMEOUT": 2004,
    "RESOURCE_EXHAUSTED": 3001,
    "SERVICE_UNAVAILABLE": 3002,
    "INTERNAL_ERROR": 3003,
    "INVALID_MESSAGE": 4001,
    "UNSUPPORTED_TYPE": 4002,
    "RATE_LIMIT_EXCEEDED": 4003,
}


#: Codes added to the spec's table: how an agent's turn failed (docs/protocol.md, "Error
#: codes"), none of which the spec's codes says truthfully.
ADDED_ERROR_CODES = {
    "AGENT_TURN_FAILED": 2005,
    "AGENT_AUTH_REQUIRED": 2006,
    "AGENT_RATE_LIMITED": 2007,
    "AGENT_API_UNREACHABLE": 2008,
    "AGENT_API_ERROR": 2009,
}
ERROR_CODES = {**SPEC_ERROR_CODES, **ADDED_ERROR_CODES}


def test_error_codes_are_the_spec_table_and_the_documented_additions() -> None:
    assert {c.name: int(c) for c in ErrorCode} == ERROR_CODES


def test_protocol_error_is_a_teamdash_error_with_code_and_message_id() -> None:
    err = ProtocolError(ErrorCode.INVALID_MESSAGE, "bad", message_id="m1")
    assert isinstance(err, TeamdashError)
    assert (err.code, err.message, err.message_id, str(err)) == (
        ErrorCode.INVALID_MESSAGE,
        "bad",
        "m1",
        "bad",
    )
    assert "INVALID_MESSAGE" in repr(err)


# ---------------------------------------------------------------------------
# auth
# ---------------------------------------------------------------------------


def test_auth_flat_shape() -> None:
    msg = p.decode_client_message(frame(id="m1", type="auth", token="jwt", clientId="c1"))
    assert isinstance(msg, p.AuthMessage)
    assert msg.credentials == p.AuthPayload(token="jwt", clientId="c1")
    assert msg.id == "m1"
    assert (msg.token, msg.clientId, msg.sessionId) == (None, None, None)


def test_auth_payload_shape() -> None:
    msg = p.decode_client_message(
        frame(id="m1", type="auth", payload={"token": "jwt", "clientId": "c1"})
    )
    assert isinstance(msg, p.AuthMessage)
    assert msg.credentials == p.AuthPayload(token="jwt", clientId="c1")


@pytest.mark.parametrize("flat", [True, False])
def test_auth_with_session_id_to_resume(flat: bool) -> None:
    creds = {"token": "jwt", "clientId": "c1", "sessionId": "s-42"}
    data = frame(type="auth", **creds) if flat else frame(type="auth", payload=creds)
    msg = p.decode_client_message(data)
    assert isinstance(msg, p.AuthMessage)
    assert msg.credentials.sessionId == "s-42"


def test_both_auth_shapes_produce_the_same_wire_form() -> None:
    flat = p.decode_client_message(
        frame(id="m1", timestamp=1, type="auth", token="t", clientId="c")
    )
    nested = p.decode_client_message(
        frame(id="m1", timestamp=1, type="auth", payload={"token": "t", "clientId": "c"})
    )
    assert p.encode(flat) == p.encode(nested)
    assert orjson.loads(p.encode(flat)) == {
        "id": "m1",
        "type": "auth",
        "timestamp": 1,
        "payload": {"token": "t", "clientId": "c"},
    }


@pytest.mark.parametrize(
    "extra",
    [{"token": "other"}, {"clientId": "c2"}, {"sessionId": "s"}],
    ids=["token", "clientId", "sessionId"],
)
def test_auth_with_both_shapes_at_once_is_refused(extra: dict[str, str]) -> None:
    err = refused(frame(id="m1", type="auth", payload={"token": "jwt", "clientId": "c1"}, **extra))
    assert err.code == ErrorCode.INVALID_MESSAGE
    assert "not both" in err.message
    assert err.message_id == "m1"


@pytest.mark.parametrize(
    "data",
    [
        frame(type="auth", clientId="c1"),
        frame(type="auth", payload={"clientId": "c1"}),
        frame(type="auth"),
        frame(type="auth", payload=None),
        frame(type="auth", token="", clientId="c1"),
        frame(type="auth", payload={"token": "", "clientId": "c1"}),
    ],
    ids=["flat-no-token", "payload-no-token", "nothing", "null-payload", "flat-empty", "empty"],
)
def test_auth_without_token_is_refused(data: bytes) -> None:
    err = refused(data)
    assert err.code == ErrorCode.INVALID_MESSAGE
    assert "token" in err.message


@pytest.mark.parametrize(
    "data",
    [frame(type="auth", token="jwt"), frame(type="auth", payload={"token": "jwt"})],
    ids=["flat", "payload"],
)
def test_auth_without_client_id_is_refused(data: bytes) -> None:
    err = refused(data)
    assert err.code == ErrorCode.INVALID_MESSAGE
    assert "clientId" in err.message


def test_auth_payload_with_unknown_field_is_refused() -> None:
    err = refused(frame(type="auth", payload={"token": "t", "clientId": "c", "role": "admin"}))
    assert err.code == ErrorCode.INVALID_MESSAGE
    assert "payload.role" in err.message


def test_auth_token_length_is_capped() -> None:
    assert refused(frame(type="auth", token="x" * 16385, clientId="c")).code == (
        ErrorCode.INVALID_MESSAGE
    )
    msg = p.decode_client_message(frame(type="auth", token="x" * 16384, clientId="c"))
    assert isinstance(msg, p.AuthMessage)


# ---------------------------------------------------------------------------
# The envelope: id, timestamp, metadata, unknown fields
# ---------------------------------------------------------------------------


def test_id_is_assigned_when_absent() -> None:
    one = p.decode_client_message(frame(type="ping"))
    two = p.decode_client_message(frame(type="ping"))
    assert one.id and two.id and one.id != two.id
    assert len(one.id) == 36  # UUID v4 text


def test_id_is_kept_when_given() -> None:
    assert p.decode_client_message(frame(id="my-id-7", type="ping")).id == "my-id-7"


@pytest.mark.parametrize("bad_id", ["", "x" * 129, 7, None], ids=["empty", "long", "int", "null"])
def test_bad_ids_are_refused(bad_id: object) -> None:
    err = refused(frame(id=bad_id, type="ping"))
    assert err.code == ErrorCode.INVALID_MESSAGE
    assert err.message_id is None  # not a usable id


def test_timestamp_defaults_to_now_and_is_kept_when_given() -> None:
    before = p.now_ms()
    msg = p.decode_client_message(frame(type="ping"))
    assert before <= msg.timestamp <= p.now_ms()
    assert p.decode_client_message(frame(type="ping", timestamp=123)).timestamp == 123


def test_client_metadata_is_accepted() -> None:
    msg = p.decode_client_message(
        frame(
            type="agent:pause",
            payload={"agentId": AGENT_ID},
            metadata={"correlationId": "c-1", "agentId": AGENT_ID, "priority": "high"},
        )
    )
    assert msg.metadata == p.Metadata(correlationId="c-1", agentId=AGENT_ID, priority="high")


@pytest.mark.parametrize(
    "data, where",
    [
        (frame(id="m1", type="ping", extra=1), "extra"),
        (frame(id="m1", type="ping", payload={"timestamp": 1, "x": 2}), "payload.x"),
        (
            frame(
                id="m1",
                type="agent:create",
                payload={"name": "n", "model": "m", "workspace": "w", "gpu": 1},
            ),
            "payload.gpu",
        ),
        (
            frame(id="m1", type="subscribe:logs", payload={"level": "error"}),
            "payload.level",
        ),
        (frame(id="m1", type="ping", metadata={"traceId": "t"}), "metadata.traceId"),
    ],
    ids=["envelope", "payload", "create", "subscribe", "metadata"],
)
def test_extra_fields_are_refused(data: bytes, where: str) -> None:
    err = refused(data)
    assert err.code == ErrorCode.INVALID_MESSAGE
    assert err.message_id == "m1"
    assert where in err.message
    assert "Extra inputs are not permitted" in err.message


# ---------------------------------------------------------------------------
# Every client message type
# ---------------------------------------------------------------------------

VALID_CLIENT_MESSAGES: list[tuple[dict[str, Any], type[p.WSMessage]]] = [
    ({"type": "auth", "token": "jwt", "clientId": "c1"}, p.AuthMessage),
    ({"type": "auth", "payload": {"token": "jwt", "clientId": "c1"}}, p.AuthMessage),
    (
        {
            "type": "agent:create",
            "payload": {"name": "reviewer", "model": "claude-3-opus", "workspace": "proj"},
        },
        p.CreateAgentMessage,
    ),
    (
        {
            "type": "agent:create",
            "payload": {
                "name": "reviewer",
                "model": "claude-3-sonnet",
                "workspace": "team/proj",
                "environment": {"GIT_AUTHOR_NAME": "Ada", "EMPTY": ""},
                "resourceLimits": {"memory": 512, "cpu": 1.5},
            },
        },
        p.CreateAgentMessage,
    ),
    (
        {"type": "agent:command", "payload": {"agentId": AGENT_ID, "command": "ls"}},
        p.AgentCommandMessage,
    ),
    (
        {
            "type": "agent:command",
            "payload": {
                "agentId": AGENT_ID,
                "command": "run\ttests\n",
                "interactive": True,
                "timeout": 30000,
            },
        },
        p.AgentCommandMessage,
    ),
    (
        {"type": "agent:command", "payload": {"agentId": AGENT_ID, "command": ""}},
        p.AgentCommandMessage,
    ),
    ({"type": "agent:terminate", "payload": {"agentId": AGENT_ID}}, p.TerminateAgentMessage),
    (
        {"type": "agent:terminate", "payload": {"agentId": AGENT_ID, "force": True}},
        p.TerminateAgentMessage,
    ),
    ({"type": "agent:pause", "payload": {"agentId": AGENT_ID}}, p.AgentControlMessage),
    ({"type": "agent:resume", "payload": {"agentId": AGENT_ID}}, p.AgentControlMessage),
    ({"type": "subscribe:agent", "payload": {"agentId": AGENT_ID}}, p.SubscribeMessage),
    (
        {"type": "subscribe:agent", "payload": {"agentId": AGENT_ID, "filters": ["stdout"]}},
        p.SubscribeMessage,
    ),
    ({"type": "subscribe:agent", "payload": {}}, p.SubscribeMessage),
    ({"type": "subscribe:metrics"}, p.SubscribeMessage),
    ({"type": "subscribe:metrics", "payload": {"filters": ["system"]}}, p.SubscribeMessage),
    (
        {"type": "subscribe:logs", "payload": {"filters": ["error", "critical", "security"]}},
        p.SubscribeMessage,
    ),
    ({"type": "unsubscribe", "payload": {"subscriptionId": "sub-1"}}, p.UnsubscribeMessage),
    ({"type": "ping", "payload": {"timestamp": 1700000000000}}, p.HeartbeatMessage),
    ({"type": "ping"}, p.HeartbeatMessage),
    ({"type": "pong", "payload": {"timestamp": 1700000000000}}, p.HeartbeatMessage),
    (
        {
            "type": "agent:permission",
            "payload": {"agentId": AGENT_ID, "requestId": "req-1", "decision": "allow"},
        },
        p.AgentPermissionMessage,
    ),
    ({"type": "agent:list"}, p.AgentListMessage),
    (
        {
            "type": "agent:list",
            "payload": {"status": ["running"], "owner": "alice", "limit": 10, "after": "1:a"},
        },
        p.AgentListMessage,
    ),
    (
        {"type": "subscribe:agent", "payload": {"since": {"offset": 4, "epoch": "e"}}},
        p.SubscribeMessage,
    ),
    ({"type": "agent:history", "payload": {"agentId": AGENT_ID}}, p.AgentHistoryMessage),
    (
        {
            "type": "agent:history",
            "payload": {"agentId": AGENT_ID, "after": 0, "before": 9, "limit": 1000},
        },
        p.AgentHistoryMessage,
    ),
]


def test_every_client_type_has_a_valid_example() -> None:
    assert {m["type"] for m, _ in VALID_CLIENT_MESSAGES} == p.CLIENT_TYPES


@pytest.mark.parametrize(
    "fields, model", VALID_CLIENT_MESSAGES, ids=[m["type"] for m, _ in VALID_CLIENT_MESSAGES]
)
def test_valid_client_messages_parse(fields: dict[str, Any], model: type[p.WSMessage]) -> None:
    data = {"id": "m1", "timestamp": 1700000000000, **fields}
    for raw in (orjson.dumps(data), json.dumps(data)):  # bytes and str frames
        msg = p.decode_client_message(raw)
        assert type(msg) is model
        assert (msg.id, msg.type, msg.timestamp) == ("m1", fields["type"], 1700000000000)
    # What the server would log or forward is the same message again.
    assert p.decode_client_message(p.encode(msg)) == msg


def test_parsed_payloads_are_typed() -> None:
    msg = p.decode_client_message(
        frame(
            type="agent:create",
            payload={
                "name": "n",
                "model": "claude-3-opus",
                "workspace": "w",
                "resourceLimits": {"memory": 256, "cpu": 2},
            },
        )
    )
    assert isinstance(msg, p.CreateAgentMessage)
    assert msg.payload.resourceLimits == p.ResourceLimits(memory=256, cpu=2)
    sub = p.decode_client_message(frame(type="subscribe:metrics"))
    assert isinstance(sub, p.SubscribeMessage)
    assert sub.payload == p.SubscribePayload()
    ping = p.decode_client_message(frame(type="ping"))
    assert isinstance(ping, p.HeartbeatMessage)
    assert ping.payload.timestamp > 0


def test_models_are_frozen() -> None:
    msg = p.decode_client_message(frame(type="ping"))
    with pytest.raises(ValidationError):
        msg.id = "other"


# ---------------------------------------------------------------------------
# Error paths of the codec
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"{bad", b"", b'{"type": "ping"', b"\xff\xfe", "{'type': 'ping'}", b'{"type":"ping"} x'],
    ids=["garbage", "empty", "truncated", "not-utf8", "single-quotes", "trailing"],
)
def test_malformed_json_is_invalid_message_without_id(data: bytes | str) -> None:
    err = refused(data)
    assert err.code == ErrorCode.INVALID_MESSAGE
    assert err.message_id is None
    assert isinstance(err.__cause__, ValidationError)  # the cause is chained


def test_malformed_json_with_an_id_inside_still_has_no_id() -> None:
    err = refused(b'{"id": "m1", "type": "ping",')
    assert (err.code, err.message_id) == (ErrorCode.INVALID_MESSAGE, None)
    assert err.message.startswith("malformed JSON")


@pytest.mark.parametrize("data", [b"[]", b'["ping"]', b'"ping"', b"42", b"null", b"true"])
def test_non_object_json_is_invalid_message(data: bytes) -> None:
    err = refused(data)
    assert (err.code, err.message_id) == (ErrorCode.INVALID_MESSAGE, None)
    assert err.message == "a message must be a JSON object"


def test_unknown_type_is_unsupported_type_with_the_message_id() -> None:
    err = refused(frame(id="m-77", type="agent:explode", payload={}))
    assert err.code == ErrorCode.UNSUPPORTED_TYPE
    assert err.message_id == "m-77"
    assert "agent:explode" in err.message


@pytest.mark.parametrize(
    "server_only", ["ack", "agent:status", "metrics:update", "connection:status", "system:alert"]
)
def test_server_types_sent_by_a_client_are_unsupported(server_only: str) -> None:
    err = refused(frame(id="m1", type=server_only, payload={}))
    assert (err.code, err.message_id) == (ErrorCode.UNSUPPORTED_TYPE, "m1")


def test_unknown_type_without_id_has_no_id() -> None:
    err = refused(frame(type="nope"))
    assert (err.code, err.message_id) == (ErrorCode.UNSUPPORTED_TYPE, None)


def test_missing_type_is_invalid_message_with_the_message_id() -> None:
    err = refused(frame(id="m1", payload={"agentId": AGENT_ID}))
    assert (err.code, err.message_id) == (ErrorCode.INVALID_MESSAGE, "m1")
    assert "type" in err.message


@pytest.mark.parametrize("bad_type", [5, None, ["ping"], {"t": "ping"}])
def test_non_string_type_is_refused(bad_type: object) -> None:
    err = refused(frame(id="m1", type=bad_type))
    assert err.code in (ErrorCode.UNSUPPORTED_TYPE, ErrorCode.INVALID_MESSAGE)
    assert err.message_id == "m1"


@pytest.mark.parametrize(
    "payload, where",
    [
        ({"agentId": AGENT_ID, "command": 42}, "payload.command"),
        ({"agentId": 42, "command": "ls"}, "payload.agentId"),
        ({"agentId": AGENT_ID, "command": "ls", "timeout": "soon"}, "payload.timeout"),
        ({"agentId": AGENT_ID, "command": "ls", "timeout": 1.5}, "payload.timeout"),
        ({"agentId": AGENT_ID, "command": "ls", "interactive": "maybe"}, "payload.interactive"),
        ({"agentId": AGENT_ID, "command": ["ls"]}, "payload.command"),
        ({"command": "ls"}, "payload.agentId"),
        ({"agentId": "", "command": "ls"}, "payload.agentId"),
    ],
    ids=[
        "command-int",
        "agentId-int",
        "timeout-text",
        "timeout-float",
        "interactive-text",
        "command-list",
        "agentId-missing",
        "agentId-empty",
    ],
)
def test_wrong_field_types_are_invalid_message(payload: dict[str, Any], where: str) -> None:
    err = refused(frame(id="m1", type="agent:command", payload=payload))
    assert (err.code, err.message_id) == (ErrorCode.INVALID_MESSAGE, "m1")
    assert where in err.message


@pytest.mark.parametrize(
    "data",
    [
        frame(id="m1", type="agent:create"),
        frame(id="m1", type="agent:create", payload={"name": "n", "model": "m"}),
        frame(id="m1", type="agent:create", payload={"name": "", "model": "m", "workspace": "w"}),
        frame(
            id="m1",
            type="agent:create",
            payload={"name": "n", "model": "rm -rf /", "workspace": "w"},
        ),
        frame(
            id="m1",
            type="agent:create",
            payload={"name": "n", "model": "m", "workspace": "w", "environment": {"A": 1}},
        ),
        frame(
            id="m1",
            type="agent:create",
            payload={"name": "n", "model": "m", "workspace": "w", "environment": ["A=1"]},
        ),
        frame(id="m1", type="agent:terminate", payload={"agentId": AGENT_ID, "force": "hard"}),
        frame(id="m1", type="agent:pause", payload={}),
        frame(id="m1", type="agent:resume", payload=None),
        frame(id="m1", type="unsubscribe", payload={}),
        frame(id="m1", type="subscribe:agent", payload=None),
        frame(id="m1", type="subscribe:agent", payload={"filters": "stdout"}),
        frame(id="m1", type="ping", payload={"timestamp": "now"}),
        frame(id="m1", type="ping", timestamp=1.5),
        frame(id="m1", type="ping", metadata={"priority": "urgent"}),
        frame(id="m1", type="ping", metadata="high"),
        frame(id="m1", type="agent:history", payload={"agentId": AGENT_ID, "limit": 1001}),
        frame(id="m1", type="agent:history", payload={"agentId": AGENT_ID, "before": 0}),
        frame(id="m1", type="agent:history", payload={"agentId": AGENT_ID, "filters": ["x"]}),
    ],
    ids=[
        "create-no-payload",
        "create-no-workspace",
        "create-empty-name",
        "create-bad-model",
        "env-int-value",
        "env-list",
        "force-text",
        "pause-no-agent",
        "resume-null",
        "unsubscribe-no-id",
        "subscribe-null",
        "filters-string",
        "ping-timestamp-text",
        "envelope-timestamp-float",
        "priority-unknown",
        "metadata-string",
        "history-limit",
        "history-before-0",
        "history-filter",
    ],
)
def test_invalid_payloads_are_invalid_message(data: bytes) -> None:
    err = refused(data)
    assert (err.code, err.message_id) == (ErrorCode.INVALID_MESSAGE, "m1")
    assert err.message


def test_error_text_names_at_most_five_problems() -> None:
    err = refused(
        frame(
            id="m1",
            type="agent:create",
            payload={"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7},
        )
    )
    assert err.code == ErrorCode.INVALID_MESSAGE
    assert err.message.count(";") <= 4
    # the union tag is not part of the reported location
    assert "agent:create." not in err.message


# ---------------------------------------------------------------------------
# Limits in the models
# ---------------------------------------------------------------------------


def create(**payload: Any) -> bytes:
    return frame(
        id="m1",
        type="agent:create",
        payload={"name": "n", "model": "claude-3-opus", "workspace": "w", **payload},
    )


@pytest.mark.parametrize(
    "limits",
    [{"memory": 1, "cpu": 0.1}, {"memory": 1024 * 1024, "cpu": 1024}, {"memory": 0.5, "cpu": 1}],
)
def test_resource_limits_in_bounds(limits: dict[str, float]) -> None:
    msg = p.decode_client_message(create(resourceLimits=limits))
    assert isinstance(msg, p.CreateAgentMessage)
    assert msg.payload.resourceLimits == p.ResourceLimits(**limits)


@pytest.mark.parametrize(
    "limits, where",
    [
        ({"memory": 0, "cpu": 1}, "memory"),
        ({"memory": -1, "cpu": 1}, "memory"),
        ({"memory": 1024 * 1024 + 1, "cpu": 1}, "memory"),
        ({"memory": 512, "cpu": 0}, "cpu"),
        ({"memory": 512, "cpu": 1025}, "cpu"),
        ({"memory": 512}, "cpu"),
        ({"cpu": 1}, "memory"),
        ({"memory": "lots", "cpu": 1}, "memory"),
        ({"memory": 512, "cpu": 1, "disk": 10}, "disk"),
    ],
)
def test_resource_limits_out_of_bounds(limits: dict[str, Any], where: str) -> None:
    err = refused(create(resourceLimits=limits))
    assert (err.code, err.message_id) == (ErrorCode.INVALID_MESSAGE, "m1")
    assert f"payload.resourceLimits.{where}" in err.message


def test_environment_is_capped_at_256_variables() -> None:
    assert isinstance(
        p.decode_client_message(create(environment={f"V{i}": "x" for i in range(256)})),
        p.CreateAgentMessage,
    )
    err = refused(create(environment={f"V{i}": "x" for i in range(257)}))
    assert err.code == ErrorCode.INVALID_MESSAGE


def command(text: str) -> bytes:
    return frame(id="m1", type="agent:command", payload={"agentId": AGENT_ID, "command": text})


def test_command_length_cap() -> None:
    assert p.MAX_COMMAND_CHARS == 64 * 1024
    msg = p.decode_client_message(command("x" * p.MAX_COMMAND_CHARS))
    assert isinstance(msg, p.AgentCommandMessage)
    err = refused(command("x" * (p.MAX_COMMAND_CHARS + 1)))
    assert (err.code, err.message_id) == (ErrorCode.INVALID_MESSAGE, "m1")
    assert "payload.command" in err.message


def test_command_cap_counts_characters_not_bytes() -> None:
    msg = p.decode_client_message(command("é" * p.MAX_COMMAND_CHARS))
    assert isinstance(msg, p.AgentCommandMessage)


@pytest.mark.parametrize(
    "timeout, ok", [(1, True), (86_400_000, True), (0, False), (-5, False), (86_400_001, False)]
)
def test_command_timeout_bounds(timeout: int, ok: bool) -> None:
    data = frame(
        id="m1",
        type="agent:command",
        payload={"agentId": AGENT_ID, "command": "ls", "timeout": timeout},
    )
    if ok:
        assert isinstance(p.decode_client_message(data), p.AgentCommandMessage)
    else:
        assert refused(data).code == ErrorCode.INVALID_MESSAGE


def subscribe(filters: object) -> bytes:
    return frame(id="m1", type="subscribe:logs", payload={"filters": filters})


def test_filters_limits() -> None:
    ok = p.decode_client_message(subscribe(["f"] * 32))
    assert isinstance(ok, p.SubscribeMessage)
    assert ok.payload.filters == ["f"] * 32
    assert isinstance(p.decode_client_message(subscribe(["x" * 64])), p.SubscribeMessage)
    assert isinstance(p.decode_client_message(subscribe([])), p.SubscribeMessage)
    for bad in (["f"] * 33, ["x" * 65], [""], [1], "error"):
        err = refused(subscribe(bad))
        assert (err.code, err.message_id) == (ErrorCode.INVALID_MESSAGE, "m1"), bad
        assert "payload.filters" in err.message


def test_agent_id_length_is_capped() -> None:
    ok = frame(type="agent:pause", payload={"agentId": "a" * 128})
    assert isinstance(p.decode_client_message(ok), p.AgentControlMessage)
    err = refused(frame(id="m1", type="agent:pause", payload={"agentId": "a" * 129}))
    assert err.code == ErrorCode.INVALID_MESSAGE


# ---------------------------------------------------------------------------
# ack()
# ---------------------------------------------------------------------------


def test_ack_success() -> None:
    msg = p.ack("m1")
    assert orjson.loads(p.encode(msg)) == {
        "id": msg.id,
        "type": "ack",
        "timestamp": msg.timestamp,
        "payload": {"messageId": "m1", "success": True},
        "metadata": {"correlationId": "m1"},
    }


def test_ack_success_with_result() -> None:
    doc = orjson.loads(p.encode(p.ack("m1", result={"subscriptionId": "sub-9"})))
    assert doc["payload"] == {
        "messageId": "m1",
        "success": True,
        "result": {"subscriptionId": "sub-9"},
    }


def test_ack_failure_has_numeric_code_text_and_correlation_id() -> None:
    err = ProtocolError(ErrorCode.UNSUPPORTED_TYPE, "unsupported message type 'x'")
    doc = orjson.loads(p.encode(p.ack("m1", error=err)))
    assert doc["type"] == "ack"
    assert doc["payload"] == {
        "messageId": "m1",
        "success": False,
        "error": "unsupported message type 'x'",
        "code": 4002,
    }
    assert type(doc["payload"]["code"]) is int
    assert doc["metadata"] == {"correlationId": "m1"}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_ack_failure_for_every_code(code: ErrorCode) -> None:
    doc = orjson.loads(p.encode(p.ack("m1", error=TeamdashError(code, "why"))))
    assert doc["payload"]["code"] == ERROR_CODES[code.name]


def test_ack_of_an_unexpected_exception_is_internal_error() -> None:
    doc = orjson.loads(p.encode(p.ack("m1", error=RuntimeError("boom"))))
    assert doc["payload"] == {"messageId": "m1", "success": False, "error": "boom", "code": 3003}


def test_ack_of_an_exception_with_a_foreign_code_attribute_is_internal_error() -> None:
    class HttpError(Exception):
        code = 404

    doc = orjson.loads(p.encode(p.ack("m1", error=HttpError("not found"))))
    assert doc["payload"]["code"] == 3003


def test_ack_of_an_exception_without_text_uses_the_code_name() -> None:
    doc = orjson.loads(p.encode(p.ack("m1", error=TeamdashError(ErrorCode.AGENT_NOT_FOUND, ""))))
    assert doc["payload"]["error"] == "AGENT_NOT_FOUND"
    doc = orjson.loads(p.encode(p.ack("m1", error=RuntimeError())))
    assert doc["payload"]["error"] == "INTERNAL_ERROR"


def test_ack_of_a_refused_message_round_trips() -> None:
    err = refused(frame(id="m-5", type="nope"))
    assert err.message_id is not None
    back = p.decode_server_message(p.encode(p.ack(err.message_id, error=err)))
    assert isinstance(back, p.AckMessage)
    assert back.payload.code is ErrorCode.UNSUPPORTED_TYPE
    assert back.payload.messageId == "m-5"


# ---------------------------------------------------------------------------
# encode() and server messages
# ---------------------------------------------------------------------------


def test_encode_leaves_out_none_fields() -> None:
    msg = p.AgentStatusMessage(
        type="agent:status",
        payload=p.AgentStatusPayload(
            agentId=AGENT_ID, status="running", details=p.AgentStatusDetails(pid=42)
        ),
    )
    data = p.encode(msg)
    assert isinstance(data, bytes)
    assert b"null" not in data
    doc = orjson.loads(data)
    assert list(doc) == ["id", "type", "timestamp", "payload"]  # no metadata, wire order
    assert doc["payload"] == {"agentId": AGENT_ID, "status": "running", "details": {"pid": 42}}


def test_encode_is_compact_utf8_json() -> None:
    msg = p.AgentOutputMessage(
        type="agent:output",
        payload=p.AgentOutputPayload(
            agentId=AGENT_ID, stream="stdout", data="héllo ✓\n", timestamp=1, sequence=0
        ),
    )
    data = p.encode(msg)
    assert "héllo ✓".encode() in data
    assert b": " not in data and b", " not in data


SYSTEM = p.SystemMetrics(
    cpu=p.CpuMetrics(usage=12.5, cores=8, temperature=51.0),
    memory=p.MemoryMetrics(total=16 * 2**30, used=8 * 2**30, available=8 * 2**30, percent=50.0),
    disk=p.DiskMetrics(total=500 * 2**30, used=100 * 2**30, percent=20.0),
    network=p.NetworkMetrics(
        bytesIn=10, bytesOut=20, packetsIn=1, packetsOut=2, bytesInPerSec=1.5, bytesOutPerSec=2.5
    ),
)

SERVER_MESSAGES: list[p.WSMessage] = [
    p.AgentStatusMessage(
        type="agent:status",
        payload=p.AgentStatusPayload(
            agentId=AGENT_ID,
            status="crashed",
            details=p.AgentStatusDetails(
                pid=4242,
                uptime=1000,
                lastActivity=1,
                exitCode=None,
                signal="SIGKILL",
                reason="oom",
                runnerId="r1",
            ),
        ),
        metadata=p.Metadata(
            correlationId="m1",
            agentId=AGENT_ID,
            priority="high",
            topic=f"agent:{AGENT_ID}",
            offset=7,
            epoch="e1",
        ),
    ),
    p.AgentOutputMessage(
        type="agent:output",
        payload=p.AgentOutputPayload(
            agentId=AGENT_ID, stream="stderr", data="oops\n", timestamp=1700000000000, sequence=3
        ),
    ),
    p.AgentCreatedMessage(
        type="agent:created",
        payload=p.AgentCreatedPayload(
            agentId=AGENT_ID, name="n", pid=4242, startTime=1700000000000
        ),
    ),
    p.AgentErrorMessage(
        type="agent:error",
        payload=p.AgentErrorPayload(
            agentId=AGENT_ID,
            error=p.AgentErrorDetail(
                code="AGENT_COMMAND_TIMEOUT", message="no result in 30 s", errorCode=2004
            ),
        ),
    ),
    p.MetricsUpdateMessage(
        type="metrics:update",
        payload=p.MetricsUpdatePayload(
            system=SYSTEM,
            agents=[p.AgentMetrics(agentId=AGENT_ID, cpu=150.0, memory=2**20, threads=4)],
        ),
    ),
    p.MetricsUpdateMessage(
        type="metrics:update",
        payload=p.MetricsUpdatePayload(agents=[]),  # a subscription filtered to "agents"
    ),
    p.SystemAlertMessage(
        type="system:alert",
        payload=p.SystemAlertPayload(
            level="critical",
            category="resource",
            message="memory above 90%",
            details={"percent": 93.1},
        ),
    ),
    p.ack("m1", result={"agentId": AGENT_ID}),
    p.ack("m2", error=TeamdashError(ErrorCode.RATE_LIMIT_EXCEEDED, "slow down")),
    p.HeartbeatMessage(type="ping"),
    p.HeartbeatMessage(type="pong", payload=p.HeartbeatPayload(timestamp=5)),
    p.ConnectionStatusMessage(
        type="connection:status",
        payload=p.ConnectionStatusPayload(
            status="authenticated",
            sessionId="s1",
            userId="alice",
            resumed=True,
            recovered=False,
            replayed=1000,
            missed=12,
            heartbeatIntervalMs=30000,
            gatewayId="gw-1",
            roles=["operator"],
        ),
        metadata=p.Metadata(correlationId="auth-1"),
    ),
    p.SubscriptionGapMessage(
        type="subscription:gap",
        payload=p.SubscriptionGapPayload(
            topic="agent:a1",
            subscriptionIds=["sub-1"],
            reason="epoch-changed",
            since=p.StreamPosition(offset=155, epoch="e1"),
            position=p.StreamPosition(offset=0, epoch="e2"),
        ),
        metadata=p.Metadata(priority="high"),
    ),
]


@pytest.mark.parametrize("msg", SERVER_MESSAGES, ids=lambda m: m.type)
def test_server_messages_round_trip(msg: p.WSMessage) -> None:
    back = p.decode_server_message(p.encode(msg))
    assert type(back) is type(msg)
    assert back == msg


def test_every_server_type_is_covered() -> None:
    types = {m.type for m in SERVER_MESSAGES}
    mapping = p.server_message_adapter.json_schema()["discriminator"]["mapping"]
    assert types == set(mapping)


def test_connection_status_defaults() -> None:
    msg = p.ConnectionStatusMessage(
        type="connection:status",
        payload=p.ConnectionStatusPayload(
            status="authenticated",
            sessionId="s",
            userId="u",
            heartbeatIntervalMs=30000,
            gatewayId="g",
        ),
    )
    payload = orjson.loads(p.encode(msg))["payload"]
    assert payload == {
        "status": "authenticated",
        "sessionId": "s",
        "userId": "u",
        "resumed": False,
        "replayed": 0,
        "missed": 0,
        "heartbeatIntervalMs": 30000,
        "gatewayId": "g",
        "protocolVersion": p.PROTOCOL_VERSION,
    }


def test_decode_server_message_refuses_client_only_types() -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_server_message(frame(id="m1", type="agent:create", payload={}))
    assert info.value.code == ErrorCode.UNSUPPORTED_TYPE


def test_decode_server_message_refuses_bad_values() -> None:
    bad = frame(type="agent:status", payload={"agentId": "a", "status": "sleeping"})
    with pytest.raises(ProtocolError) as info:
        p.decode_server_message(bad)
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    bad_code = frame(type="ack", payload={"messageId": "m", "success": False, "code": 9999})
    with pytest.raises(ProtocolError):
        p.decode_server_message(bad_code)


def test_ping_and_pong_go_both_ways() -> None:
    data = p.encode(p.HeartbeatMessage(type="ping"))
    assert isinstance(p.decode_client_message(data), p.HeartbeatMessage)
    assert isinstance(p.decode_server_message(data), p.HeartbeatMessage)


@pytest.mark.parametrize(
    "data, where",
    [
        (frame(id="m1", type="ping", timestamp=True), "timestamp"),
        (frame(id="m1", type="ping", payload={"timestamp": False}), "payload.timestamp"),
        (frame(id="m1", type="ping", payload={"timestamp": "5"}), "payload.timestamp"),
        (frame(id="m1", type="ping", timestamp=5.0), "timestamp"),
        (frame(id="m1", type="ping", metadata={"offset": True}), "metadata.offset"),
        (
            frame(id="m1", type="agent:terminate", payload={"agentId": AGENT_ID, "force": 0}),
            "payload.force",
        ),
        (
            frame(id="m1", type="agent:terminate", payload={"agentId": AGENT_ID, "force": "true"}),
            "payload.force",
        ),
        (
            frame(
                id="m1",
                type="agent:command",
                payload={"agentId": AGENT_ID, "command": "ls", "interactive": 1},
            ),
            "payload.interactive",
        ),
        (
            frame(
                id="m1",
                type="agent:command",
                payload={"agentId": AGENT_ID, "command": "ls", "timeout": True},
            ),
            "payload.timeout",
        ),
        (
            frame(
                id="m1",
                type="agent:create",
                payload={
                    "name": "n",
                    "model": "m",
                    "workspace": "w",
                    "resourceLimits": {"memory": True, "cpu": 1},
                },
            ),
            "payload.resourceLimits.memory",
        ),
        (
            frame(
                id="m1",
                type="agent:create",
                payload={
                    "name": "n",
                    "model": "m",
                    "workspace": "w",
                    "resourceLimits": {"memory": 512, "cpu": "2"},
                },
            ),
            "payload.resourceLimits.cpu",
        ),
        (
            frame(
                id="m1",
                type="auth",
                payload={
                    "token": "t",
                    "clientId": "c",
                    "sessionId": "s",
                    "positions": {"metrics": {"offset": True}},
                },
            ),
            "payload.positions.metrics.offset",
        ),
    ],
    ids=[
        "timestamp-true",
        "ping-timestamp-false",
        "ping-timestamp-numeric-text",
        "timestamp-integral-float",
        "offset-true",
        "force-zero",
        "force-text-true",
        "interactive-one",
        "timeout-true",
        "memory-true",
        "cpu-numeric-text",
        "position-offset-true",
    ],
)
def test_json_types_are_taken_as_they_are(data: bytes, where: str) -> None:
    """docs/protocol.md: a wrongly typed field is INVALID_MESSAGE. JSON ``true`` is not an
    integer, ``0`` not a boolean, ``"2"`` not a number (pydantic's lax mode converts them)."""
    err = refused(data)
    assert (err.code, err.message_id) == (ErrorCode.INVALID_MESSAGE, "m1")
    assert where in err.message, err.message


def test_strict_types_still_take_what_json_means() -> None:
    msg = p.decode_client_message(
        frame(
            type="agent:create",
            payload={
                "name": "n",
                "model": "m",
                "workspace": "w",
                "resourceLimits": {"memory": 512, "cpu": 0.5},  # an integer is a number
            },
        )
    )
    assert isinstance(msg, p.CreateAgentMessage) and msg.payload.resourceLimits is not None
    assert msg.payload.resourceLimits.memory == 512.0
    term = p.decode_client_message(
        frame(type="agent:terminate", payload={"agentId": AGENT_ID, "force": True})
    )
    assert isinstance(term, p.TerminateAgentMessage) and term.payload.force is True


def test_message_ids_are_uuid4_text() -> None:
    ids = {p.new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
