// The pure rules of the SDK, without sockets.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  backoffDelay,
  closeError,
  ConnectionLostError,
  DEFAULT_BACKOFF_MS,
  ErrorCode,
  filterAccepts,
  metricsSections,
  SeenWindow,
  tokenExpiresAt,
  topicOf,
  type MetricsUpdateMessage,
  type SystemAlertMessage,
  type AgentOutputMessage,
} from "../src/index.js";

describe("backoffDelay", () => {
  it("follows the spec: 1, 2, 4, 8, 16, then 30 s repeatedly", () => {
    const delays = [0, 1, 2, 3, 4, 5, 6, 7].map((a) => backoffDelay(DEFAULT_BACKOFF_MS, a, 0.2, () => 0.5));
    assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  });

  it("jitters within ± jitter", () => {
    assert.equal(backoffDelay([1000], 0, 0.2, () => 0), 800);
    assert.equal(backoffDelay([1000], 0, 0.2, () => 1), 1200);
    assert.throws(() => backoffDelay([], 0, 0.2), RangeError);
  });
});

describe("SeenWindow", () => {
  it("keeps a replay below the highest offset and drops what was seen", () => {
    const w = new SeenWindow();
    const got = [10, 8, 9, 10, 8, 11].map((o) => w.add("e1", o));
    assert.deepEqual(got, [true, true, true, false, false, true]);
    assert.deepEqual(w.position, { offset: 11, epoch: "e1" });
  });

  it("starts a new history on a new epoch and drops the old epoch's events", () => {
    const w = new SeenWindow();
    assert.equal(w.add("e1", 5), true);
    assert.equal(w.add("e2", 1), true);
    assert.equal(w.add("e1", 6), false);
    assert.deepEqual(w.position, { offset: 1, epoch: "e2" });
  });

  it("treats offsets older than the window as seen", () => {
    const w = new SeenWindow(10);
    assert.equal(w.add("e", 100), true);
    assert.equal(w.add("e", 90), false);
    assert.equal(w.add("e", 91), true);
  });

  it("continues after a gap's position, in a new epoch too", () => {
    const w = new SeenWindow();
    w.add("e1", 3);
    w.reset({ offset: 50, epoch: "e1" });
    assert.deepEqual(w.position, { offset: 50, epoch: "e1" });
    w.reset({ offset: 0, epoch: "e2" });
    assert.equal(w.add("e2", 1), true);
    assert.equal(w.add("e1", 51), false);
  });
});

const output = (stream: "stdout" | "stderr"): AgentOutputMessage => ({
  id: "o",
  type: "agent:output",
  timestamp: 1,
  payload: { agentId: "a", stream, data: "x", timestamp: 1, sequence: 1 },
  metadata: { topic: "agent:a", offset: 1, epoch: "e" },
});
const alert = (level: SystemAlertMessage["payload"]["level"], category: SystemAlertMessage["payload"]["category"]): SystemAlertMessage => ({
  id: "l",
  type: "system:alert",
  timestamp: 1,
  payload: { level, category, message: "m" },
});

describe("filters", () => {
  it("apply the server's rules", () => {
    assert.equal(filterAccepts("agent", ["stdout"], output("stdout")), true);
    assert.equal(filterAccepts("agent", ["stdout"], output("stderr")), false);
    assert.equal(filterAccepts("agent", [], output("stderr")), true);
    assert.equal(filterAccepts("logs", ["critical", "security"], alert("critical", "security")), true);
    assert.equal(filterAccepts("logs", ["critical", "security"], alert("critical", "resource")), false);
    assert.equal(filterAccepts("logs", ["error", "critical"], alert("error", "agent")), true);
    assert.equal(filterAccepts("metrics", [], output("stdout")), false);
  });

  it("keep the metrics sections asked for", () => {
    const update: MetricsUpdateMessage = {
      id: "m",
      type: "metrics:update",
      timestamp: 1,
      payload: { agents: [], system: { cpu: { usage: 1, cores: 2 }, memory: { total: 1, used: 1, available: 0, percent: 100 }, disk: { total: 1, used: 1, percent: 100 }, network: { bytesIn: 0, bytesOut: 0, packetsIn: 0, packetsOut: 0 } } },
    };
    assert.deepEqual(Object.keys(metricsSections(update, ["agents"]).payload), ["agents"]);
    assert.equal(metricsSections(update, []), update);
    assert.equal(topicOf(update), "metrics");
  });
});

describe("tokens and closes", () => {
  it("reads a JWT's exp", () => {
    const claims = Buffer.from(JSON.stringify({ sub: "u", exp: 1700000000 })).toString("base64url");
    assert.equal(tokenExpiresAt(`h.${claims}.s`), 1700000000 * 1000);
    assert.equal(tokenExpiresAt("opaque"), undefined);
  });

  it("maps a 1008 reason to its error code", () => {
    assert.equal(closeError(1008, "TOKEN_EXPIRED").code, ErrorCode.TOKEN_EXPIRED);
    assert.equal(closeError(1008, "RATE_LIMIT_EXCEEDED: slow down").code, ErrorCode.RATE_LIMIT_EXCEEDED);
    assert.ok(closeError(1001, "going away") instanceof ConnectionLostError);
  });
});
