"""The runner's ``agent:output`` fast path (agent_runner/events.py ``outputs``): its bytes are
exactly what the pydantic path (``output_message`` + ``shared.bus.event_prefix``) makes, so
clients and the protocol schema see no difference. No I/O."""

from __future__ import annotations

import uuid

import jsonschema
import orjson
import pytest

from agent_runner import events
from shared import protocol as p
from shared import schema
from shared.bus import event_prefix
from shared.keys import agent_topic

LINES = [
    "plain line\n",
    "unicode: héllo wörld — ☃ 🎉 日本語 \u2028 \u2029 \ufffd\n",
    'quotes "double" \'single\' and back\\slash \\" \\\\\n',
    "control chars: \x00 \x01 \x07 \x08 \t \x0b \x0c \r \x1b[31mred\x1b[0m \x1f \x7f\n",
    "</script><!-- html-ish & stuff -->",
    "x" * 16 * 1024,  # the longest piece the splitter makes
    "",
    "\n",
    "no newline at the end",
]


def _position(prefix: bytes, offset: int = 7, epoch: str = "ep0ch") -> bytes:
    """What the publish script makes of a prefix."""
    return prefix + b',"offset":%d,"epoch":"%s"}}' % (offset, epoch.encode())


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
@pytest.mark.parametrize("agent_id", ["a-1", "5f0c1d2e-3b4a-4c5d-8e6f-708192a3b4c5", 'odd "id" é'])
def test_fast_path_bytes_equal_the_pydantic_path(stream: p.OutputStream, agent_id: str) -> None:
    ts = p.now_ms()
    items = events.outputs(agent_id, "alice", stream, LINES, 41, ts)
    assert len(items) == len(LINES)
    for k, ((topic, encoded, tags), text) in enumerate(zip(items, LINES, strict=True)):
        assert topic == agent_topic(agent_id)
        assert tags == (stream, "user:alice")
        assert isinstance(encoded, bytes)
        message_id = orjson.loads(_position(encoded))["id"]
        reference = events.output_message(agent_id, stream, text, 41 + k, ts, message_id=message_id)
        assert encoded == event_prefix(reference, topic)
        decoded = p.decode_server_message(_position(encoded))
        assert isinstance(decoded, p.AgentOutputMessage)
        assert decoded == reference.model_copy(
            update={"metadata": p.Metadata(agentId=agent_id, topic=topic, offset=7, epoch="ep0ch")}
        )
        assert decoded.payload.data == text and decoded.payload.sequence == 41 + k


def test_fast_path_events_match_the_protocol_schema() -> None:
    validator = jsonschema.Draft202012Validator(schema.protocol_schema())
    for _, encoded, _ in events.outputs("a-1", "bob", "stdout", LINES, 1, p.now_ms()):
        assert isinstance(encoded, bytes)
        doc = orjson.loads(_position(encoded))
        assert [e.message for e in validator.iter_errors(doc)] == []


def test_single_output_is_the_batch_of_one() -> None:
    topic, encoded, tags = events.output("a-1", "bob", "stderr", "oops\n", 9, 1234)
    assert (topic, tags) == ("agent:a-1", ("stderr", "user:bob"))
    assert isinstance(encoded, bytes)
    decoded = p.decode_server_message(_position(encoded))
    assert isinstance(decoded, p.AgentOutputMessage)
    assert decoded.payload == p.AgentOutputPayload(
        agentId="a-1", stream="stderr", data="oops\n", timestamp=1234, sequence=9
    )
    assert decoded.timestamp == 1234


def test_outputs_of_nothing() -> None:
    assert events.outputs("a-1", "bob", "stdout", [], 1, 1) == []


def test_message_ids_are_fresh_uuid4_text() -> None:
    ids = events.message_ids(2000)
    assert len(ids) == len(set(ids)) == 2000
    for raw in ids:
        text = raw.decode("ascii")
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower-case, 8-4-4-4-12
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # Every random digit varies: none is stuck (2,000 ids: all 16 values, in practice).
    for pos in set(range(36)) - {8, 13, 14, 18, 19, 23}:
        assert len({raw[pos] for raw in ids}) == 16, pos
    assert {raw[19:20] for raw in ids} == {b"8", b"9", b"a", b"b"}
    assert events.message_ids(0) == []
