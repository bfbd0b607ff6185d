"""The committed JSON Schema (docs/protocol.schema.json) is exactly what the models generate,
and it describes the whole protocol."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from shared import protocol as p
from shared import schema
from shared.errors import ErrorCode, ProtocolError
from tests.helpers import ROOT
from tests.shared.test_protocol import SPEC_ERROR_CODES

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
    assert dict(zip(codes["x-enum-varnames"], codes["enum"], strict=True)) == SPEC_ERROR_CODES
    for c in ErrorCode:
        assert f"| {int(c)} | {c.name} |" in codes["description"]
    ack_code = doc["$defs"]["AckPayload"]["properties"]["code"]
    assert {"$ref": "#/$defs/ErrorCode"} in ack_code["anyOf"]


def test_auth_has_two_exclusive_shapes(doc: dict[str, Any]) -> None:
    shapes = {s["title"]: s for s in doc["$defs"]["AuthMessage"]["oneOf"]}
    assert set(shapes) == {"payload shape", "flat shape"}
    assert shapes["payload shape"]["required"] == ["payload"]
    assert shapes["flat shape"]["required"] == ["token", "clientId"]
    assert shapes["flat shape"]["not"] == {"required": ["payload"]}


def test_messages_forbid_unknown_fields(doc: dict[str, Any]) -> None:
    for model in _models():
        assert doc["$defs"][model.__name__].get("additionalProperties") is False, model


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
