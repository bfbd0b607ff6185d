"""The JSON Schema of the whole protocol, generated from the models in :mod:`shared.protocol`.

``docs/protocol.schema.json`` is this module's output and is never edited by hand; a test
fails when it no longer matches the models, and another when the TypeScript types generated
from it (``clients/typescript/src/protocol.ts``) no longer match it. After changing a model::

    python -m shared.schema --write      # regenerate docs/protocol.schema.json
    python -m shared.schema              # print it
    (cd clients/typescript && npm run generate)   # regenerate the TypeScript types

The document is JSON Schema 2020-12 and describes the wire exactly, in each direction:

* client → server: what the server accepts (pydantic's *validation* schema): a field is
  required when the model requires it;
* server → client: what the server sends (the *serialization* schema of
  :func:`shared.protocol.encode`, which leaves out every ``None``): a field is required when
  it can never be ``None``, so it is always there; any other is optional.

No field is nullable: a ``X | None`` field is *optional*, and its absence is its ``None``
(the server also reads a ``null`` from a client as absent, but never needs one). A model
whose two schemas differ gets two definitions: ``X`` as the server sends it, ``ClientX`` as a
client may send it (``ping``/``pong`` travel both ways). Properties carry no ``title``, so
code generators name types after the definitions, not after field names.

``$defs`` holds every message and payload model, the common envelope (``WSMessage``), the
ack result of each request (``RequestResults`` maps request type → result definition, and
``AckPayload.result`` is one of them), the filter names of each subscription kind as enums,
and ``ErrorCode`` with its names (``x-enum-varnames`` and ``tsEnumNames``).
``$defs/ClientMessage`` and ``$defs/ServerMessage`` are the two directions (``oneOf`` with a
``discriminator`` on ``type``), and the document itself accepts either (``anyOf``). Rules
pydantic cannot express are added here, from the models themselves: ``auth`` carries its
credentials either flat or in ``payload``, never both, and each ``subscribe:*`` type takes
its own filter names.
Output is deterministic: sorted keys, 2-space indent, a trailing newline.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from shared.errors import ErrorCode
from shared.protocol import (
    ACK_RESULTS,
    PROTOCOL_VERSION,
    AgentEventFilter,
    AuthPayload,
    LogsFilter,
    MetricsFilter,
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

#: Subscribe type → (definition name, the names its ``filters`` may hold).
_FILTERS: dict[str, tuple[str, Any]] = {
    "subscribe:agent": ("AgentEventFilter", AgentEventFilter),
    "subscribe:metrics": ("MetricsFilter", MetricsFilter),
    "subscribe:logs": ("LogsFilter", LogsFilter),
}

#: The definitions of the two shapes of ``auth``.
AUTH_SHAPES = ("AuthMessageWithPayload", "AuthMessageFlat")

#: Prefix of the definition of a model as a client sends it, when that differs.
CLIENT_PREFIX = "Client"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def _may_be_none(schema: CoreSchema) -> bool:
    """Whether a field with this core schema can hold ``None`` (and is then not sent)."""
    if schema["type"] == "default":
        return _may_be_none(schema["schema"])
    return schema["type"] in ("nullable", "none", "any")


class WireSchema(GenerateJsonSchema):
    """Pydantic's JSON Schema, made to say what travels (see the module docstring)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        # A title per property makes generators emit one alias per field name (``Id1``…).
        return False

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        # ``None`` is never sent: it is the field's absence (``encode`` drops it).
        return self.generate_inner(schema["schema"])

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        if self.mode == "serialization":
            return not _may_be_none(field["schema"])
        return super().field_is_required(field, total)

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if self.mode == "serialization":
            return self.generate_inner(schema["schema"])  # always sent: no default to apply
        generated = super().default_schema(schema)
        if "default" in generated and generated["default"] is None:
            del generated["default"]
        return generated


def _error_code_schema(generated: dict[str, Any]) -> dict[str, Any]:
    schema = dict(generated)
    codes = list(ErrorCode)
    schema["enum"] = [int(c) for c in codes]
    schema["x-enum-varnames"] = [c.name for c in codes]
    schema["tsEnumNames"] = [c.name for c in codes]
    rows = "\n".join(f"| {int(c)} | {c.name} | {_ERROR_GROUPS[int(c) // 1000]} |" for c in codes)
    schema["description"] = (
        f"{schema.get('description', '').strip()}\n\n| code | name | group |\n|---|---|---|\n{rows}"
    ).strip()
    return schema


def _auth_shapes(defs: dict[str, Any]) -> None:
    """``auth`` is one of two shapes, each a definition of its own that forbids the other's
    fields: ``{type, payload: {token, clientId, …}}`` or ``{type, token, clientId,
    sessionId?}`` (the credentials the model also takes at the top level)."""
    auth, payload = defs["AuthMessage"], defs[AuthPayload.__name__]
    flat_fields = [name for name in payload["properties"] if name in auth["properties"]]
    envelope = {k: v for k, v in auth["properties"].items() if k not in flat_fields}
    with_payload = {
        **copy.deepcopy(auth),
        "title": AUTH_SHAPES[0],
        "description": "`auth` with the credentials in `payload` (the only shape for `positions`).",
        "properties": envelope,
        "required": ["type", "payload"],
    }
    flat = {
        **copy.deepcopy(auth),
        "title": AUTH_SHAPES[1],
        "description": "`auth` with the credentials at the top level.",
        "properties": {
            **{k: v for k, v in envelope.items() if k != "payload"},
            **{name: copy.deepcopy(payload["properties"][name]) for name in flat_fields},
        },
        "required": ["type", *payload["required"]],
    }
    defs.update({AUTH_SHAPES[0]: with_payload, AUTH_SHAPES[1]: flat})
    defs["AuthMessage"] = {
        "title": "AuthMessage",
        "description": auth["description"],
        "oneOf": [_ref(name) for name in AUTH_SHAPES],
    }


def _subscribe_messages(defs: dict[str, Any]) -> None:
    """One definition per ``subscribe:*`` type, each with its own filter names (an enum);
    ``SubscribeMessage`` is their union. ``agentId`` is only in ``subscribe:agent``'s (the
    gateway ignores it in the others)."""
    generic, payload = defs["SubscribeMessage"], defs["SubscribePayload"]
    names = []
    for kind, (filter_name, values) in _FILTERS.items():
        stem = "Subscribe" + kind.removeprefix("subscribe:").capitalize()
        variant_payload = copy.deepcopy(payload)
        variant_payload["title"] = f"{stem}Payload"
        variant_payload["properties"]["filters"]["items"] = _ref(filter_name)
        if kind != "subscribe:agent":
            del variant_payload["properties"]["agentId"]
        message = copy.deepcopy(generic)
        message["title"] = f"{stem}Message"
        message["properties"]["type"] = {"const": kind, "type": "string"}
        message["properties"]["payload"] = _ref(f"{stem}Payload")
        defs[f"{stem}Payload"], defs[f"{stem}Message"] = variant_payload, message
        defs[filter_name] = {
            "title": filter_name,
            "description": f"A filter name of `{kind}` (docs/protocol.md, Subscriptions and filters).",
            "type": "string",
            "enum": list(typing.get_args(values)),
        }
        names.append((kind, f"{stem}Message"))
    payload["properties"]["filters"]["items"] = {
        "anyOf": [_ref(name) for name, _ in _FILTERS.values()]
    }
    defs["SubscribeMessage"] = {
        "title": "SubscribeMessage",
        "description": "`subscribe:agent`, `subscribe:metrics` or `subscribe:logs`.",
        "oneOf": [_ref(name) for _, name in names],
        "discriminator": {
            "propertyName": "type",
            "mapping": {kind: f"#/$defs/{name}" for kind, name in names},
        },
    }
    client = defs["ClientMessage"]
    client["oneOf"] = [
        variant
        for ref in client["oneOf"]
        for variant in (
            [_ref(name) for _, name in names] if ref == _ref("SubscribeMessage") else [ref]
        )
    ]
    client["discriminator"]["mapping"].update({kind: f"#/$defs/{name}" for kind, name in names})


def _result_defs(defs: dict[str, Any]) -> None:
    """``RequestResults`` (request type → result definition) and ``AckPayload.result``."""
    names = sorted({model.__name__ for model in ACK_RESULTS.values()})
    defs["RequestResults"] = {
        "title": "RequestResults",
        "description": (
            "Not a message: for each request type, the definition of its ack's "
            "`payload.result` on success."
        ),
        "type": "object",
        "properties": {kind: _ref(model.__name__) for kind, model in ACK_RESULTS.items()},
        "required": list(ACK_RESULTS),
        "additionalProperties": False,
    }
    defs["AckPayload"]["properties"]["result"] = {
        "description": "On success: the request's result (RequestResults names which).",
        "anyOf": [_ref(n) for n in names],
    }


def _name_directions(doc: dict[str, Any]) -> None:
    """Pydantic names a model whose validation and serialization schemas differ ``X-Input``
    and ``X-Output``: here they become ``ClientX`` and ``X`` (titles and refs included)."""
    defs: dict[str, Any] = doc["$defs"]
    renames: dict[str, str] = {}
    for key in list(defs):
        if key.endswith("-Output"):
            renames[key] = key.removesuffix("-Output")
        elif key.endswith("-Input"):
            renames[key] = CLIENT_PREFIX + key.removesuffix("-Input")
    for old, new in renames.items():
        assert new not in defs, f"{new} would be defined twice"
        defs[new] = defs.pop(old)
        defs[new]["title"] = new
    refs = {f"#/$defs/{old}": f"#/$defs/{new}" for old, new in renames.items()}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return refs.get(node, node) if isinstance(node, str) else node

    doc.update(walk(doc))


def protocol_schema() -> dict[str, Any]:
    """The protocol's JSON Schema as a dict (see the module docstring for its layout)."""
    inputs: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
        ("client", "validation", client_message_adapter),
        ("server", "serialization", server_message_adapter),
        ("envelope", "serialization", TypeAdapter(WSMessage)),
    ]
    inputs += [(m.__name__, "serialization", TypeAdapter(m)) for m in set(ACK_RESULTS.values())]
    unions, doc = TypeAdapter.json_schemas(
        inputs, ref_template="#/$defs/{model}", schema_generator=WireSchema
    )
    doc["$defs"]["ClientMessage"] = {
        "title": "ClientMessage",
        "description": "Every message a client may send (client → server).",
        **unions[("client", "validation")],
    }
    doc["$defs"]["ServerMessage"] = {
        "title": "ServerMessage",
        "description": "Every message the server sends (server → client).",
        **unions[("server", "serialization")],
    }
    _name_directions(doc)
    defs: dict[str, Any] = doc["$defs"]
    defs["ErrorCode"] = _error_code_schema(defs["ErrorCode"])
    _auth_shapes(defs)
    _subscribe_messages(defs)
    _result_defs(defs)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:teamdash:websocket-protocol:{PROTOCOL_VERSION}",
        "title": TITLE,
        "description": (
            f"{TITLE}, version {PROTOCOL_VERSION}. Generated from shared/protocol.py by "
            "`python -m shared.schema --write`; do not edit. A frame is one JSON object: "
            "a ClientMessage (client → server) or a ServerMessage (server → client). "
            "Optional fields are left out, never null; a server message always has the "
            "fields its definition requires. Human-readable guide: docs/protocol.md."
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
