// The Team Dashboard TypeScript SDK: the client, its errors, its pure rules, and every
// protocol type (generated from docs/protocol.schema.json).
export * from "./protocol.js";
export * from "./errors.js";
export { backoffDelay, DEFAULT_BACKOFF_MS, eventKind, filterAccepts, metricsSections, positionOf, SeenWindow, SEEN_WINDOW, tokenExpiresAt, topicOf, } from "./core.js";
export * from "./client.js";
