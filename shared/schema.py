"""The JSON Schema of the whole protocol, generated from the models in :mod:`shared.protocol`.

``docs/protocol.schema.json`` is this module's output and is never edited by hand; a test
fails when it no longer matches the models. After changing a model, run::

    python -m shared.schema --write      # regenerate docs/protocol.schema.json
    python -m shared.schema              # print it

The document is JSON Schema 2020-12. ``$defs`` holds every message and payload model and
the common envelope (``WSMessage``); ``$defs/ClientMessage`` and ``$defs/ServerMessage`` are
the two directions (``oneOf`` with a ``discriminator`` on ``type``), and the document itself
accepts either (``anyOf``: ``ping`` and ``pong`` travel both ways). Two things pydantic cannot
express are added here, from the models themselves: the names of the numeric ``ErrorCode``
values (``x-enum-varnames``) and the rule that ``auth`` carries its credentials either flat
or in ``payload``, never both.
Output is deterministic: sorted keys, 2-space indent, a trailing newline.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from shared.errors import ErrorCode
from shared.protocol import (
    PROTOCOL_VERSION,
    AuthPayload,
    WSMessage,
    client_message_adapter,
    server_message_adapter,
)

#: Where the generated schema is committed.
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol.schema.json"

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
TITLE = "Team Dashboard WebSocket protocol"

#: The spec groups error codes by their thousands digit.
_ERROR_GROUPS = {1: "Authentication", 2: "Agent", 3: "System", 4: "Protocol"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def _error_code_schema(generated: dict[str, Any]) -> dict[str, Any]:
    schema = dict(generated)
    codes = list(ErrorCode)
    schema["enum"] = [int(c) for c in codes]
    schema["x-enum-varnames"] = [c.name for c in codes]
    rows = "\n".join(f"| {int(c)} | {c.name} | {_ERROR_GROUPS[int(c) // 1000]} |" for c in codes)
    schema["description"] = (
        f"{schema.get('description', '').strip()}\n\n| code | name | group |\n|---|---|---|\n{rows}"
    ).strip()
    return schema


def _auth_shapes(auth: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """``auth`` accepts ``{type, token, clientId, sessionId?}`` or ``{type, payload: {…}}``."""
    # The credentials the model also takes at the top level (the flat shape).
    flat_fields = [name for name in payload["properties"] if name in auth["properties"]]
    schema = dict(auth)
    schema["oneOf"] = [
        {
            "title": "payload shape",
            "required": ["payload"],
            "properties": {
                "payload": _ref("AuthPayload"),
                **{name: {"type": "null"} for name in flat_fields},
            },
        },
        {
            "title": "flat shape",
            "required": list(payload["required"]),
            "properties": {
                name: copy.deepcopy(payload["properties"][name]) for name in flat_fields
            },
            "not": {"required": ["payload"]},
        },
    ]
    return schema


def protocol_schema() -> dict[str, Any]:
    """The protocol's JSON Schema as a dict (see the module docstring for its layout)."""
    unions, doc = TypeAdapter.json_schemas(
        [
            ("client", "validation", client_message_adapter),
            ("server", "validation", server_message_adapter),
            ("envelope", "validation", TypeAdapter(WSMessage)),
        ],
        ref_template="#/$defs/{model}",
    )
    defs: dict[str, Any] = doc["$defs"]
    defs["ClientMessage"] = {
        "description": "Every message a client may send (client → server).",
        **unions[("client", "validation")],
    }
    defs["ServerMessage"] = {
        "description": "Every message the server sends (server → client).",
        **unions[("server", "validation")],
    }
    defs["ErrorCode"] = _error_code_schema(defs["ErrorCode"])
    defs["AuthMessage"] = _auth_shapes(defs["AuthMessage"], defs[AuthPayload.__name__])
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:teamdash:websocket-protocol:{PROTOCOL_VERSION}",
        "title": TITLE,
        "description": (
            f"{TITLE}, version {PROTOCOL_VERSION}. Generated from shared/protocol.py by "
            "`python -m shared.schema --write`; do not edit. A frame is one JSON object: "
            "a ClientMessage (client → server) or a ServerMessage (server → client). "
            "Human-readable guide: docs/protocol.md."
        ),
        "x-protocol-version": PROTOCOL_VERSION,
        "anyOf": [_ref("ClientMessage"), _ref("ServerMessage")],
        "$defs": defs,
    }


def render() -> str:
    """The schema as committed: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(protocol_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.schema",
        description="Print (or write) the JSON Schema of the WebSocket protocol.",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"write it to {SCHEMA_PATH.relative_to(SCHEMA_PATH.parent.parent)}",
    )
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
        SCHEMA_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {SCHEMA_PATH}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
