"""The committed JSON Schema (docs/protocol.schema.json) is exactly what the models generate,
and it describes the whole protocol."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from shared import protocol as p
from shared import schema
from shared.errors import ErrorCode, ProtocolError
from tests.helpers import ROOT
from tests.shared.test_protocol import ERROR_CODES

REGENERATE = "python -m shared.schema --write"


def test_committed_schema_matches_the_models() -> None:
    path = schema.SCHEMA_PATH
    assert path == ROOT / "docs" / "protocol.schema.json"
    assert path.exists(), f"{path} is missing: run `{REGENERATE}`"
    committed = path.read_text(encoding="utf-8")
    generated = schema.render()
    if committed != generated:
        # Name the definitions that differ, so the failure says what changed.
        old, new = json.loads(committed)["$defs"], json.loads(generated)["$defs"]
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        pytest.fail(
            "docs/protocol.schema.json is out of date with shared/protocol.py "
            f"(definitions that differ: {changed or 'top level'}). "
            f"Run `{REGENERATE}` and commit the result.",
            pytrace=False,
        )


def test_render_is_deterministic_and_formatted() -> None:
    text = schema.render()
    assert text == schema.render()
    assert text.endswith("}\n") and not text.endswith("\n\n")
    doc = json.loads(text)
    assert text == json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert '\n  "$defs": {' in text  # 2-space indent


def test_module_prints_the_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shared.schema"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode("utf-8")
    assert out == schema.render()


def test_write_writes_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "docs" / "protocol.schema.json"
    monkeypatch.setattr(schema, "SCHEMA_PATH", target)
    assert schema.main(["--write"]) == 0
    assert target.read_text(encoding="utf-8") == schema.render()


# ---------------------------------------------------------------------------
# What the document holds
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return schema.protocol_schema()


def test_title_version_and_dialect(doc: dict[str, Any]) -> None:
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["title"] == "Team Dashboard WebSocket protocol"
    assert doc["x-protocol-version"] == p.PROTOCOL_VERSION
    assert p.PROTOCOL_VERSION in doc["description"]
    assert doc["anyOf"] == [{"$ref": "#/$defs/ClientMessage"}, {"$ref": "#/$defs/ServerMessage"}]


def _models() -> list[type[BaseModel]]:
    return [
        obj
        for name, obj in vars(p).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseModel)
        and obj.__module__ == p.__name__
        and not name.startswith("_")
    ]


def test_every_model_has_a_definition(doc: dict[str, Any]) -> None:
    models = _models()
    assert len(models) > 30
    missing = [m.__name__ for m in models if m.__name__ not in doc["$defs"]]
    assert missing == []


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/")
        assert ref.removeprefix("#/$defs/") in doc["$defs"], ref


def test_client_section_covers_every_client_type(doc: dict[str, Any]) -> None:
    client = doc["$defs"]["ClientMessage"]
    assert client["discriminator"]["propertyName"] == "type"
    assert set(client["discriminator"]["mapping"]) == p.CLIENT_TYPES
    assert {r["$ref"] for r in client["oneOf"]} == set(client["discriminator"]["mapping"].values())


def test_server_section_covers_every_server_type(doc: dict[str, Any]) -> None:
    server = doc["$defs"]["ServerMessage"]
    assert set(server["discriminator"]["mapping"]) == {
        "agent:status",
        "agent:output",
        "agent:created",
        "agent:error",
        "metrics:update",
        "system:alert",
        "ack",
        "ping",
        "pong",
        "connection:status",
        "subscription:gap",
    }
    assert server["discriminator"]["mapping"]["ack"] == "#/$defs/AckMessage"


def test_error_codes_with_names_and_numbers(doc: dict[str, Any]) -> None:
    codes = doc["$defs"]["ErrorCode"]
    assert codes["type"] == "integer"
    assert codes["enum"] == [int(c) for c in ErrorCode]
    assert codes["x-enum-varnames"] == [c.name for c in ErrorCode]
    assert dict(zip(codes["x-enum-varnames"], codes["enum"], strict=True)) == ERROR_CODES
    for c in ErrorCode:
        assert f"| {int(c)} | {c.name} |" in codes["description"]
    assert codes["tsEnumNames"] == codes["x-enum-varnames"]
    assert doc["$defs"]["AckPayload"]["properties"]["code"] == {"$ref": "#/$defs/ErrorCode"}


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return doc["$defs"][ref.removeprefix("#/$defs/")] if isinstance(ref, str) else node


def test_auth_has_two_exclusive_shapes(doc: dict[str, Any]) -> None:
    shapes = {
        s["title"]: s for s in map(partial(_resolve, doc), doc["$defs"]["AuthMessage"]["oneOf"])
    }
    assert set(shapes) == set(schema.AUTH_SHAPES)
    with_payload, flat = (shapes[name] for name in schema.AUTH_SHAPES)
    assert with_payload["required"] == ["type", "payload"]
    assert flat["required"] == ["type", "token", "clientId"]
    assert "payload" not in flat["properties"]
    assert not {"token", "clientId", "sessionId"} & with_payload["properties"].keys()


def _object_defs(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The object schemas a definition stands for (the branches of a union definition)."""
    node = doc["$defs"][name]
    if "oneOf" in node and "properties" not in node:
        return [d for branch in node["oneOf"] for d in _object_defs(doc, branch["$ref"][8:])]
    return [node]


def test_messages_forbid_unknown_fields(doc: dict[str, Any]) -> None:
    for model in _models():
        for node in _object_defs(doc, model.__name__):
            assert node.get("additionalProperties") is False, model


def _walk(node: object, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


def test_nothing_is_nullable(doc: dict[str, Any]) -> None:
    """The server never sends null (``encode`` leaves out every None): optional, not nullable."""
    for path, node in _walk(doc):
        assert node.get("type") != "null" and "null" not in node.get("type", []), path
        assert not ("default" in node and node["default"] is None), path


def test_definitions_are_named_and_properties_untitled(doc: dict[str, Any]) -> None:
    for name, node in doc["$defs"].items():
        assert re.fullmatch(r"[A-Z][A-Za-z]*", name), name  # no ``Id1``, no ``X-Input``
        assert node["title"] == name, name
        for prop, sub in node.get("properties", {}).items():
            assert "title" not in sub, f"{name}.{prop}"


def test_server_messages_always_carry_the_envelope(doc: dict[str, Any]) -> None:
    server = doc["$defs"]["ServerMessage"]
    for ref in server["oneOf"]:
        node = _resolve(doc, ref)
        assert {"id", "type", "timestamp", "payload"} <= set(node["required"]), node["title"]
    envelope = doc["$defs"]["WSMessage"]
    assert envelope["required"] == ["id", "type", "timestamp"]
    status = doc["$defs"]["ConnectionStatusPayload"]["required"]
    assert {"resumed", "replayed", "missed", "protocolVersion"} <= set(status)
    assert "recovered" not in status  # None when not a resume: left out


def test_client_messages_need_only_what_the_server_requires(doc: dict[str, Any]) -> None:
    ping = doc["$defs"]["ClientHeartbeatMessage"]
    assert ping["required"] == ["type"]
    assert doc["$defs"]["HeartbeatMessage"]["required"] == ["id", "type", "timestamp", "payload"]
    assert doc["$defs"]["CreateAgentMessage"]["required"] == ["type", "payload"]


def test_every_request_has_a_typed_result(doc: dict[str, Any]) -> None:
    results = doc["$defs"]["RequestResults"]
    assert set(results["required"]) == p.CLIENT_TYPES - {"ping", "pong"}
    ack_result = doc["$defs"]["AckPayload"]["properties"]["result"]["anyOf"]
    assert {r["$ref"] for r in ack_result} == {r["$ref"] for r in results["properties"].values()}


def test_filter_names_are_the_gateways(doc: dict[str, Any]) -> None:
    from gateway import router

    enums = {
        name: set(doc["$defs"][name]["enum"])
        for name in ("AgentEventFilter", "MetricsFilter", "LogsFilter")
    }
    assert enums["AgentEventFilter"] == router.AGENT_EVENT_KINDS
    assert enums["MetricsFilter"] == router.METRICS_SECTIONS
    assert enums["LogsFilter"] == router.ALERT_LEVELS | router.ALERT_CATEGORIES
    mapping = doc["$defs"]["ClientMessage"]["discriminator"]["mapping"]
    for kind, filter_name in [
        ("subscribe:agent", "AgentEventFilter"),
        ("subscribe:metrics", "MetricsFilter"),
        ("subscribe:logs", "LogsFilter"),
    ]:
        message = _resolve(doc, {"$ref": mapping[kind]})
        payload = _resolve(doc, message["properties"]["payload"])
        assert payload["properties"]["filters"]["items"] == {"$ref": f"#/$defs/{filter_name}"}
        assert ("agentId" in payload["properties"]) is (kind == "subscribe:agent")


# ---------------------------------------------------------------------------
# With a JSON Schema validator (when one is installed): the schema agrees with the models
# ---------------------------------------------------------------------------

SCHEMA_CASES: list[tuple[dict[str, Any], bool]] = [
    ({"type": "auth", "token": "jwt", "clientId": "c1"}, True),
    ({"type": "auth", "token": "jwt", "clientId": "c1", "sessionId": "s1"}, True),
    ({"type": "auth", "payload": {"token": "jwt", "clientId": "c1"}}, True),
    ({"type": "auth", "payload": {"token": "jwt", "clientId": "c1"}, "token": "jwt"}, False),
    ({"type": "auth", "clientId": "c1"}, False),
    ({"type": "auth"}, False),
    ({"type": "auth", "payload": None}, False),
    ({"type": "auth", "token": "jwt"}, False),
    ({"type": "ping"}, True),
    ({"type": "ping", "extra": 1}, False),
    ({"type": "subscribe:metrics", "payload": {"filters": ["system"]}}, True),
    ({"type": "agent:command", "payload": {"agentId": "a", "command": "x" * 65537}}, False),
    ({"type": "nope"}, False),
    (
        {
            "id": "m",
            "type": "ack",
            "timestamp": 1,
            "payload": {"messageId": "m", "success": False, "error": "x", "code": 4001},
        },
        True,
    ),
    (
        {
            "id": "m",
            "type": "ack",
            "timestamp": 1,
            "payload": {"messageId": "m", "success": False, "code": 9999},
        },
        False,
    ),
]


@pytest.mark.parametrize("message, valid", SCHEMA_CASES)
def test_schema_and_models_agree(doc: dict[str, Any], message: dict[str, Any], valid: bool) -> None:
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(doc)
    validator = jsonschema.Draft202012Validator(doc)
    assert validator.is_valid(message) is valid
    raw = json.dumps(message)
    try:
        p.decode_client_message(raw) if message["type"] != "ack" else p.decode_server_message(raw)
        model_valid = True
    except ProtocolError:
        model_valid = False
    assert model_valid is valid


FILTER_CASES: list[tuple[str, list[str]]] = [
    ("subscribe:agent", ["stdout", "created"]),
    ("subscribe:agent", ["system"]),
    ("subscribe:metrics", ["system"]),
    ("subscribe:metrics", ["stdout"]),
    ("subscribe:logs", ["critical", "security"]),
    ("subscribe:logs", ["agents"]),
]


@pytest.mark.parametrize("kind, filters", FILTER_CASES)
def test_schema_and_gateway_agree_on_filters(
    doc: dict[str, Any], kind: str, filters: list[str]
) -> None:
    import jsonschema

    from gateway.router import parse_filters

    message = {"type": kind, "payload": {"filters": filters}}
    schema_valid = jsonschema.Draft202012Validator(doc).is_valid(message)
    try:
        parse_filters(kind.removeprefix("subscribe:"), filters)  # type: ignore[arg-type]
        gateway_valid = True
    except ProtocolError:
        gateway_valid = False
    assert schema_valid is gateway_valid


def test_typescript_types_match_the_schema() -> None:
    """clients/typescript/src/protocol.ts is what its generator makes of the committed schema
    (the generator has no dependencies: plain node, no npm install)."""
    script = ROOT / "clients" / "typescript" / "scripts" / "generate-types.mjs"
    result = subprocess.run(
        ["node", str(script), "--check"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
