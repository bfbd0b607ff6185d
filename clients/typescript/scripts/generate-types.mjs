#!/usr/bin/env node
// Generates src/protocol.ts (the protocol's TypeScript types) from docs/protocol.schema.json.
//
//   node scripts/generate-types.mjs          write src/protocol.ts
//   node scripts/generate-types.mjs --check  exit 1 if src/protocol.ts is not what the schema gives
//
// A small generator on purpose: it understands exactly the JSON Schema that shared/schema.py
// writes and fails on any keyword it does not know, instead of guessing. Every definition
// becomes one named type: an object an `interface`, ErrorCode (with `tsEnumNames`) an `enum`,
// anything else a `type` alias; validation-only keywords (lengths, patterns, ranges, `not`)
// constrain values, not types, and are left to the server. No dependencies: it runs on plain
// Node, so the drift test needs no `npm ci`.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const SCHEMA_PATH = resolve(here, "../../../docs/protocol.schema.json");
export const OUTPUT_PATH = resolve(here, "../src/protocol.ts");

const TYPE_KEYWORDS = new Set([
  "$ref", "const", "enum", "anyOf", "oneOf", "type", "properties", "required",
  "additionalProperties", "items",
]);
const IGNORED_KEYWORDS = new Set([
  "title", "description", "examples", "default", "discriminator", "not",
  "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
  "exclusiveMaximum", "minItems", "maxItems", "maxProperties", "propertyNames",
  "x-enum-varnames", "tsEnumNames",
]);
const ROOT_KEYWORDS = new Set(["$schema", "$id", "$defs", "x-protocol-version"]);

function fail(where, what) {
  throw new Error(`${where}: ${what} (scripts/generate-types.mjs does not know it)`);
}

function checkKeywords(node, where, root = false) {
  for (const key of Object.keys(node)) {
    if (!TYPE_KEYWORDS.has(key) && !IGNORED_KEYWORDS.has(key) && !(root && ROOT_KEYWORDS.has(key))) {
      fail(where, `unsupported keyword ${JSON.stringify(key)}`);
    }
  }
}

function refName(ref, where) {
  if (!ref.startsWith("#/$defs/")) fail(where, `unsupported $ref ${ref}`);
  return ref.slice("#/$defs/".length);
}

function comment(text, indent) {
  if (!text) return "";
  // The models' docstrings use reStructuredText literals (``x``); TSDoc uses `x`.
  const lines = text.replaceAll("``", "`").replaceAll("*/", "*\\/").trimEnd().split("\n");
  return `${indent}/**\n${lines.map((l) => `${indent} *${l ? ` ${l}` : ""}`).join("\n")}\n${indent} */\n`;
}

function propertyKey(name) {
  return /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(name) ? name : JSON.stringify(name);
}

function union(types) {
  return [...new Set(types)].join(" | ");
}

function typeOf(node, where, indent) {
  checkKeywords(node, where);
  if (node.$ref !== undefined) return refName(node.$ref, where);
  if ("const" in node) return JSON.stringify(node.const);
  if (node.enum !== undefined) return union(node.enum.map((v) => JSON.stringify(v)));
  const branches = node.anyOf ?? node.oneOf;
  if (branches !== undefined) {
    return union(branches.map((b, i) => {
      const t = typeOf(b, `${where}/${i}`, indent);
      return t.includes(" | ") || t.includes("\n") ? `(${t})` : t;
    }));
  }
  switch (node.type) {
    case "string":
      return "string";
    case "integer":
    case "number":
      return "number";
    case "boolean":
      return "boolean";
    case "array": {
      if (node.items === undefined) fail(where, "an array without items");
      const item = typeOf(node.items, `${where}/items`, indent);
      return /^[A-Za-z0-9_"]+$/.test(item) ? `${item}[]` : `Array<${item}>`;
    }
    case "object":
      return objectType(node, where, indent);
    case undefined:
      if (Object.keys(node).every((k) => IGNORED_KEYWORDS.has(k))) return "unknown";
      fail(where, "a schema without a type");
      break;
    default:
      fail(where, `type ${JSON.stringify(node.type)}`);
  }
  return "never";
}

function objectType(node, where, indent) {
  const extra = node.additionalProperties;
  if (node.properties === undefined) {
    if (extra === false) return "Record<string, never>";
    const value = extra === undefined || extra === true ? "unknown" : typeOf(extra, `${where}/additionalProperties`, indent);
    return `{ [key: string]: ${value} }`;
  }
  if (extra !== false) fail(where, "an object with properties that allows others");
  const required = new Set(node.required ?? []);
  const inner = `${indent}  `;
  const fields = Object.entries(node.properties).map(([name, sub]) => {
    const t = typeOf(sub, `${where}/properties/${name}`, inner);
    const optional = required.has(name) ? "" : "?";
    return `${comment(sub.description, inner)}${inner}${propertyKey(name)}${optional}: ${t};`;
  });
  for (const name of required) {
    if (!(name in node.properties)) fail(where, `required ${name} is not a property`);
  }
  return `{\n${fields.join("\n")}\n${indent}}`;
}

function declaration(name, node) {
  const where = `#/$defs/${name}`;
  const doc = comment(node.description, "");
  if (node.tsEnumNames !== undefined) {
    if (!Array.isArray(node.enum) || node.enum.length !== node.tsEnumNames.length) {
      fail(where, "tsEnumNames that do not match enum");
    }
    const members = node.enum.map((v, i) => `  ${node.tsEnumNames[i]} = ${JSON.stringify(v)},`);
    return `${doc}export enum ${name} {\n${members.join("\n")}\n}\n`;
  }
  if (node.type === "object" && node.properties !== undefined) {
    return `${doc}export interface ${name} ${objectType(node, where, "")}\n`;
  }
  return `${doc}export type ${name} = ${typeOf(node, where, "")};\n`;
}

/** The TypeScript source for a parsed schema document. */
export function generate(schema) {
  checkKeywords(schema, "#", true);
  const version = schema["x-protocol-version"];
  const parts = [
    "// Generated from docs/protocol.schema.json by scripts/generate-types.mjs: do not edit.\n" +
      "// After a protocol change: `python -m shared.schema --write`, then `npm run generate`.\n",
    `/** The protocol version these types describe. */\nexport const PROTOCOL_VERSION = ${JSON.stringify(version)};\n`,
    `${comment(schema.description, "")}export type ProtocolMessage = ${typeOf({ anyOf: schema.anyOf }, "#", "")};\n`,
  ];
  for (const name of Object.keys(schema.$defs).sort()) {
    if (!/^[A-Z][A-Za-z0-9]*$/.test(name)) fail(`#/$defs/${name}`, "a definition name that is no identifier");
    parts.push(declaration(name, schema.$defs[name]));
  }
  return parts.join("\n");
}

function main(argv) {
  const text = generate(JSON.parse(readFileSync(SCHEMA_PATH, "utf8")));
  if (argv.includes("--check")) {
    let committed = "";
    try {
      committed = readFileSync(OUTPUT_PATH, "utf8");
    } catch {
      // missing: reported below like any difference
    }
    if (committed !== text) {
      console.error(
        "clients/typescript/src/protocol.ts is out of date with docs/protocol.schema.json: " +
          "run `npm run generate` in clients/typescript and commit the result.",
      );
      return 1;
    }
    console.log("src/protocol.ts matches docs/protocol.schema.json");
    return 0;
  }
  writeFileSync(OUTPUT_PATH, text);
  console.log(`wrote ${OUTPUT_PATH}`);
  return 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = main(process.argv.slice(2));
}
