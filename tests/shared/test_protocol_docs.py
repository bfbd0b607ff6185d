"""docs/protocol.md stays true to the models: every ```json block is a message the server
accepts (client → server) or sends (server → client), every message type and error code is
documented, and the JavaScript examples at least parse."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared import protocol as p
from shared import schema
from shared.errors import ErrorCode
from tests.helpers import ROOT

DOC = ROOT / "docs" / "protocol.md"
SERVER_TYPES = frozenset(p.server_message_adapter.json_schema()["discriminator"]["mapping"])


def blocks(lang: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of every fenced block of ``lang`` in the guide."""
    text = DOC.read_text(encoding="utf-8")
    found = []
    for m in re.finditer(rf"^```{lang}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL):
        found.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return found


JSON_BLOCKS = blocks("json")


def test_the_guide_has_examples() -> None:
    assert len(JSON_BLOCKS) >= 20


@pytest.mark.parametrize("line, text", JSON_BLOCKS, ids=[f"line{n}" for n, _ in JSON_BLOCKS])
def test_json_example_is_a_valid_message(line: int, text: str) -> None:
    doc = json.loads(text)
    assert isinstance(doc, dict), f"docs/protocol.md:{line}: not a JSON object"
    kind = doc.get("type")
    assert kind in p.CLIENT_TYPES | SERVER_TYPES, f"docs/protocol.md:{line}: type {kind!r}"
    if kind in p.CLIENT_TYPES:
        msg = p.decode_client_message(text)
        assert msg.type == kind
    if kind in SERVER_TYPES and (kind not in p.CLIENT_TYPES or "timestamp" in doc):
        server = p.decode_server_message(text)
        # What the server sends is a full envelope, exactly as encode() writes it.
        assert {"id", "type", "timestamp", "payload"} <= doc.keys(), f"docs/protocol.md:{line}"
        assert json.loads(p.encode(server)) == doc, f"docs/protocol.md:{line}"


def _documented_types() -> set[str]:
    return {json.loads(text)["type"] for _, text in JSON_BLOCKS}


def test_every_message_type_has_an_example() -> None:
    missing = (p.CLIENT_TYPES | SERVER_TYPES) - _documented_types()
    assert not missing, f"no JSON example in docs/protocol.md for {sorted(missing)}"


def test_both_auth_shapes_and_a_resume_are_shown() -> None:
    auths = [json.loads(text) for _, text in JSON_BLOCKS if '"type": "auth"' in text]
    assert any("token" in a for a in auths), "flat auth example"
    assert any("token" in a.get("payload", {}) for a in auths), "payload auth example"
    assert any("sessionId" in a.get("payload", {}) for a in auths), "resume example"


def test_every_error_code_is_in_the_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    for code in ErrorCode:
        assert re.search(rf"^\| {int(code)} \| `{code.name}` \| \S", text, flags=re.MULTILINE), (
            code.name
        )


def test_every_field_of_the_key_payloads_is_mentioned() -> None:
    text = DOC.read_text(encoding="utf-8")
    for model in (
        p.ConnectionStatusPayload,
        p.AckPayload,
        p.AuthPayload,
        p.Metadata,
        p.CreateAgentPayload,
        p.AgentCommandPayload,
        p.AgentStatusDetails,
    ):
        for name in model.model_fields:
            assert f"`{name}`" in text, f"{model.__name__}.{name} is not documented"


def test_limits_match_the_models() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert f"{p.MAX_COMMAND_CHARS} characters" in text
    assert "32 per subscription, 1–64 characters" in text
    assert p.PROTOCOL_VERSION in text


@pytest.mark.parametrize("index", range(len(blocks("js"))))
def test_javascript_examples_parse(index: int, tmp_path: Path) -> None:
    _, code = blocks("js")[index]
    script = tmp_path / "example.mjs"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        ["node", "--check", str(script)], check=False, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()


def _ack_fields(doc: dict[str, Any]) -> set[str]:
    return set(doc["payload"])


def test_ack_examples_show_success_and_failure() -> None:
    acks = [json.loads(text) for _, text in JSON_BLOCKS if '"type": "ack"' in text]
    assert any(a["payload"]["success"] and "result" in a["payload"] for a in acks)
    assert any(
        not a["payload"]["success"] and isinstance(a["payload"].get("code"), int) for a in acks
    )


@pytest.mark.parametrize("line, text", JSON_BLOCKS, ids=[f"line{n}" for n, _ in JSON_BLOCKS])
def test_json_example_matches_the_json_schema(line: int, text: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema.protocol_schema())
    errors = [e.message for e in validator.iter_errors(json.loads(text))]
    assert not errors, f"docs/protocol.md:{line}: {errors[:3]}"


def test_the_browser_example_points_to_the_sdk() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Browser example", 1)[1].split("\n## ", 1)[0]
    assert "clients/typescript/README.md" in section
    assert (ROOT / "clients" / "typescript" / "README.md").is_file()
