// DashboardWebSocket against a real stack: Redis, two gateways behind HAProxy, an agent
// runner with the fixture agents of tests/agents/models.toml, the metrics collector.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { WebSocket } from "ws";

import {
  DashboardError,
  DashboardWebSocket,
  ErrorCode,
  NEWEST,
  type AgentHistoryResult,
  type DashboardEvent,
  type DashboardOptions,
  type StateEvent,
} from "../src/index.js";
import { Stack, t, waitFor } from "./stack.js";

let stack: Stack;
const clients: DashboardWebSocket[] = [];

before(async () => {
  stack = await Stack.start();
});

after(async () => {
  for (const c of clients) c.close();
  await stack?.stop();
});

/** A socket that records what the client sends (a real `ws` socket otherwise). */
class RecordingWebSocket extends WebSocket {
  static sent: string[] = [];
  override send(data: string): void {
    RecordingWebSocket.sent.push(data);
    super.send(data);
  }
}

function client(options: Partial<DashboardOptions> = {}): DashboardWebSocket {
  const c = new DashboardWebSocket({
    url: stack.url,
    token: stack.token,
    WebSocket,
    backoffMs: [50, 100, 200, 400, 800, 1000],
    requestTimeoutMs: t(20_000),
    ...options,
  });
  clients.push(c);
  return c;
}

function states(c: DashboardWebSocket): StateEvent[] {
  const seen: StateEvent[] = [];
  c.on("state", (s) => seen.push(s));
  return seen;
}

/** `tick N` lines of an agent's stdout, in arrival order, and whether it stopped. */
function ticks(events: DashboardEvent[]): { ticks: number[]; stopped: boolean } {
  let text = "";
  let stopped = false;
  for (const e of events) {
    if (e.type === "agent:output") text += e.payload.data;
    if (e.type === "agent:status" && (e.payload.status === "stopped" || e.payload.status === "crashed")) stopped = true;
  }
  const lines = text.split("\n").filter((l) => l.startsWith("tick "));
  return { ticks: lines.map((l) => Number(l.split(" ")[1])), stopped };
}

describe("connecting", () => {
  it("authenticates with the payload shape and with the flat shape", async () => {
    for (const authShape of ["payload", "flat"] as const) {
      const c = client({ authShape });
      const seen = states(c);
      const status = await c.connect();
      assert.equal(status.status, "authenticated");
      assert.equal(status.resumed, false);
      assert.equal(c.userId, "ts-admin");
      assert.deepEqual(seen.map((s) => s.state), ["connecting", "open"]);
      c.close();
    }
  });

  it("rejects a bad token with AUTH_FAILED", async () => {
    const c = client({ token: "not-a-jwt", reconnect: false });
    await assert.rejects(c.connect(), (e: unknown) => e instanceof DashboardError && e.code === ErrorCode.AUTH_FAILED);
  });

  it("resumes a saved session with its positions", async () => {
    const first = client();
    await first.connect();
    const sub = await first.subscribeMetrics({ filters: ["system"] });
    const got: DashboardEvent[] = [];
    sub.on((e) => got.push(e));
    await waitFor(() => got.length >= 2, "two metrics updates");
    first.close();
    const second = client({ sessionId: first.sessionId as string, positions: first.positions });
    const status = await second.connect();
    assert.equal(status.resumed, true);
    assert.equal(status.sessionId, first.sessionId);
    assert.deepEqual(status.subscriptions?.map((s) => s.subscriptionId), [sub.id]);
  });
});

describe("requests", () => {
  it("settles every request by its ack, typed, with the error code on failure", async () => {
    const c = client();
    await c.connect();
    const created = await c.createAgent({ name: "echo", model: "echo", workspace: "echo" });
    assert.match(created.agentId, /^[0-9a-f-]{36}$/);
    assert.ok(created.pid > 0);
    const events: DashboardEvent[] = [];
    const sub = await c.subscribeAgent({ agentId: created.agentId, filters: ["stdout", "status"], onEvent: (e) => events.push(e) });
    assert.equal(sub.topic, `agent:${created.agentId}`);
    const command = await c.sendCommand(created.agentId, "hello from typescript");
    assert.equal(command.agentId, created.agentId);
    await waitFor(
      () => events.some((e) => e.type === "agent:output" && e.payload.data.includes("hello from typescript")),
      "the echo",
    );
    assert.deepEqual(await c.pause(created.agentId), { agentId: created.agentId });
    assert.deepEqual(await c.resume(created.agentId), { agentId: created.agentId });
    await assert.rejects(
      c.sendCommand("no-such-agent", "x"),
      (e: unknown) => e instanceof DashboardError && e.code === ErrorCode.AGENT_NOT_FOUND && e.codeName === "AGENT_NOT_FOUND",
    );
    await assert.rejects(
      c.request("subscribe:metrics", { filters: ["stdout" as never] }),
      (e: unknown) => e instanceof DashboardError && e.code === ErrorCode.INVALID_MESSAGE,
    );
    assert.deepEqual(await c.terminate(created.agentId, { force: true }), { agentId: created.agentId });
    await waitFor(() => events.some((e) => e.type === "agent:status" && e.payload.status === "stopped"), "stopped");
    await sub.unsubscribe();
    assert.equal(sub.active, false);
    assert.deepEqual(c.subscriptions, []);
  });

  it("waits for a command's turn with wait: completed, the ack's time growing to match", async () => {
    const c = client();
    await c.connect();
    const created = await c.createAgent({ name: "key", model: "claude-key", workspace: "turn" });
    const done = await c.sendCommand(created.agentId, "hello", { wait: "completed" });
    assert.deepEqual(done.turn, {
      kind: "turn_end",
      success: true,
      durationMs: 976,
      costUsd: 0.000398,
      usage: { inputTokens: 12, outputTokens: 5, cachedInputTokens: 0 },
    });
    const asker = await c.createAgent({ name: "ask", model: "claude-ask", workspace: "turn-late" });
    // Its turn waits for a permission decision: the command's timeout ends it, after the
    // client's usual ack time, which must not cut it short.
    const quick = client({ requestTimeoutMs: t(1_000) });
    await quick.connect();
    await assert.rejects(
      quick.sendCommand(asker.agentId, "write late.txt", { wait: "completed", timeoutMs: t(3_000) }),
      (e: unknown) => e instanceof DashboardError && e.code === ErrorCode.AGENT_COMMAND_TIMEOUT,
    );
    const loggedOut = await c.createAgent({ name: "nologin", model: "claude", workspace: "turn-auth" });
    await assert.rejects(
      c.sendCommand(loggedOut.agentId, "hello", { wait: "completed" }),
      (e: unknown) =>
        e instanceof DashboardError &&
        e.code === ErrorCode.AGENT_AUTH_REQUIRED &&
        e.message.startsWith("Claude Code is not logged in"),
    );
    for (const id of [created.agentId, asker.agentId, loggedOut.agentId]) {
      await c.terminate(id, { force: true });
    }
  });

  it("delivers only the metrics sections a subscription asked for", async () => {
    const c = client();
    await c.connect();
    const got: DashboardEvent[] = [];
    await c.subscribeMetrics({ filters: ["system"], onEvent: (e) => got.push(e) });
    await waitFor(() => got.length >= 1, "a metrics update");
    const [first] = got;
    assert.ok(first?.type === "metrics:update");
    assert.ok(first.payload.system !== undefined && first.payload.system.cpu.cores > 0);
    assert.equal(first.payload.agents, undefined);
  });
});

describe("the agent list", () => {
  it("pages through every agent, in the order of a single page", async () => {
    // An operator lists only their own agents: exactly these three.
    const c = client({ token: await stack.mintToken("ts-pager", ["operator"]) });
    await c.connect();
    const made = [];
    for (const name of ["list-a", "list-b", "list-c"]) made.push((await c.createAgent({ name, model: "echo", workspace: name })).agentId);
    const whole = await c.listAgents({ limit: 1000 });
    assert.equal(whole.next, undefined);
    assert.equal(whole.total, 3);
    assert.deepEqual(whole.agents.map((a) => a.agentId), made, "ordered by start time");
    const pages = [];
    for await (const page of c.agentPages({ limit: 2 })) pages.push(page);
    assert.deepEqual(pages.map((p) => p.agents.map((a) => a.agentId)), [made.slice(0, 2), made.slice(2)]);
    assert.ok(pages[0]?.next !== undefined && pages[1]?.next === undefined);
    const all = await c.listAllAgents({ limit: 2 });
    assert.deepEqual(all.agents.map((a) => a.agentId), made);
    assert.equal(all.position.epoch, pages[0]?.position.epoch);
    await assert.rejects(
      c.listAgents({ after: "not-a-next" }),
      (e: unknown) => e instanceof DashboardError && e.code === ErrorCode.INVALID_MESSAGE,
    );
    for (const agentId of made) await c.terminate(agentId, { force: true });
  });

  it("list, then subscribe since its position: every later change exactly once", async () => {
    const maker = client({ token: await stack.mintToken("ts-since", ["operator"]) });
    await maker.connect();
    const before = await maker.createAgent({ name: "since-old", model: "echo", workspace: "since-old" });
    const viewer = client();
    await viewer.connect();
    const { agents, position } = await viewer.listAllAgents();
    assert.ok(agents.some((a) => a.agentId === before.agentId));
    // Changes between the list and the subscription: the catch-up must deliver them.
    const later = await maker.createAgent({ name: "since-new", model: "echo", workspace: "since-new" });
    await maker.terminate(before.agentId);
    const events: DashboardEvent[] = [];
    const sub = await viewer.subscribeAgent({ since: position, onEvent: (e) => events.push(e) });
    assert.equal(sub.topic, "agents");
    assert.equal(sub.recovered, true);
    assert.equal(sub.missed, 0);
    // And a live one after the subscription.
    await maker.terminate(later.agentId);
    const stopped = (id: string): boolean => events.some((e) => e.type === "agent:status" && e.payload.agentId === id && e.payload.status === "stopped");
    await waitFor(() => stopped(before.agentId) && stopped(later.agentId), "both agents stopped");
    const offsets = events.flatMap((e) => (e.type === "subscription:gap" ? [] : [e.metadata?.offset as number]));
    assert.deepEqual(offsets, [...new Set(offsets)].sort((a, b) => a - b), "each event once, in order");
    assert.ok(offsets.every((o) => o > position.offset), "nothing the list already reflected");
    assert.ok(events.some((e) => e.type === "agent:created" && e.payload.agentId === later.agentId));
    assert.ok(!events.some((e) => e.type === "agent:created" && e.payload.agentId === before.agentId));
  });
});

describe("an agent's history", () => {
  it("history, then subscribe since its position, then scroll back: every line exactly once", async () => {
    const c = client({ token: await stack.mintToken("ts-history", ["operator"]) });
    await c.connect();
    const { agentId } = await c.createAgent({ name: "ticker", model: "ticker", workspace: "history" });
    // While the agent prints (and printed some before its newest page): its newest page, then
    // live from the page's position.
    let newest: AgentHistoryResult;
    do {
      newest = await c.agentHistory({ agentId, before: NEWEST, limit: 100 });
    } while (newest.prev === undefined || newest.prev < 30);
    assert.equal(newest.events.length, 100);
    assert.equal(newest.next, undefined, "the newest page");
    const live: DashboardEvent[] = [];
    const sub = await c.subscribeAgent({ agentId, since: newest.position, onEvent: (e) => live.push(e) });
    assert.equal(sub.recovered, true);
    await waitFor(() => ticks(live).stopped, "the ticker to finish", t(60_000));
    // Then back from the page before it, to the oldest event kept.
    const older: DashboardEvent[][] = [];
    for await (const page of c.historyPages({ agentId, before: newest.prev, limit: 10 })) older.unshift(page.events);
    assert.ok(older.length >= 2, `${older.length} older pages`);
    const all = [...older.flat(), ...newest.events, ...live];
    assert.deepEqual(ticks(all).ticks, Array.from({ length: 3000 }, (_, i) => i + 1), "every line exactly once, in order");
    const offsets = all.map((e) => e.metadata?.offset);
    assert.deepEqual(offsets, Array.from({ length: all.length }, (_, i) => i + 1), "every event of the topic once, in order");

    // Forward from the oldest: the same events, the last page at the newest.
    const forward = [];
    for await (const page of c.historyPages({ agentId, limit: 1000 }, "forward")) forward.push(page);
    assert.deepEqual(forward.flatMap((p) => p.events.map((e) => e.metadata?.offset)), offsets);
    assert.equal(forward.at(-1)?.next, undefined);
    assert.equal(forward.at(-1)?.position.offset, offsets.length);
    // Filtered: a page holds the matching events of `limit` read, so follow `next`.
    const statuses = [];
    for await (const page of c.historyPages({ agentId, limit: 1000, filters: ["status"] }, "forward")) statuses.push(...page.events);
    assert.deepEqual(
      statuses.map((e) => (e.type === "agent:status" ? e.payload.status : e.type)),
      ["starting", "running", "stopped"],
      "only the events the filter names",
    );
  });

  it("refuses an unknown agent and another operator's agent with the spec's codes", async () => {
    const alice = client({ token: await stack.mintToken("ts-alice", ["operator"]) });
    const bob = client({ token: await stack.mintToken("ts-bob", ["operator"]) });
    await Promise.all([alice.connect(), bob.connect()]);
    const { agentId } = await alice.createAgent({ name: "mine", model: "echo", workspace: "mine" });
    await assert.rejects(
      bob.agentHistory({ agentId }),
      (e: unknown) => e instanceof DashboardError && e.code === ErrorCode.INSUFFICIENT_PERMISSIONS,
    );
    await assert.rejects(
      bob.agentHistory({ agentId: "no-such-agent" }),
      (e: unknown) => e instanceof DashboardError && e.code === ErrorCode.AGENT_NOT_FOUND,
    );
    await alice.terminate(agentId, { force: true });
  });
});

describe("keeping the connection", () => {
  it("answers the server's heartbeat", async () => {
    RecordingWebSocket.sent = [];
    const c = client({ WebSocket: RecordingWebSocket });
    const seen = states(c);
    const status = await c.connect();
    assert.equal(status.heartbeatIntervalMs, 1000);
    // The gateway closes a connection silent for two intervals: three pongs outlive that.
    const pongs = (): number => RecordingWebSocket.sent.filter((s) => (JSON.parse(s) as { type: string }).type === "pong").length;
    await waitFor(() => pongs() >= 3, "three pongs", t(10_000));
    assert.equal(c.connected, true);
    assert.equal(c.reconnects, 0);
    assert.deepEqual(seen.map((s) => s.state), ["connecting", "open"]);
  });

  it("refreshes a short-lived token before it expires", async () => {
    const c = client({ token: () => stack.mintToken("ts-admin", ["admin"], 4), refreshBeforeExpiryMs: 2500 });
    const seen = states(c);
    await c.connect();
    const firstExpiry = Date.now() + 4000;
    await waitFor(() => seen.some((s) => s.state === "token-refreshed"), "a refresh", t(10_000));
    // Past the first token's expiry the connection would have been closed (1008) unrefreshed.
    await waitFor(() => Date.now() > firstExpiry + 1000, "the first token's expiry", t(10_000));
    const sub = await c.subscribeLogs({ filters: ["critical"] });
    assert.ok(sub.active);
    assert.equal(c.reconnects, 0);
    assert.ok(!seen.some((s) => s.state === "reconnecting"));
  });

  /** A client following a ticker agent (3,000 lines), 400 lines in. */
  async function tickerUnderWay(): Promise<{ c: DashboardWebSocket; seen: StateEvent[]; events: DashboardEvent[] }> {
    const c = client();
    const seen = states(c);
    await c.connect();
    const agent = await c.createAgent({ name: "ticker", model: "ticker", workspace: "ticker" });
    const events: DashboardEvent[] = [];
    await c.subscribeAgent({ agentId: agent.agentId, filters: ["stdout", "status"], onEvent: (e) => events.push(e) });
    await waitFor(() => ticks(events).ticks.length >= 400, "400 ticks");
    return { c, seen, events };
  }

  async function restartGateways(): Promise<void> {
    await stack.command({ cmd: "restart_gateway", index: 0 });
    await stack.command({ cmd: "restart_gateway", index: 1 });
  }

  it("gets every line exactly once across a gateway killed mid-stream", async () => {
    const { c, seen, events } = await tickerUnderWay();
    const victim = c.gatewayId as string;
    await stack.command({ cmd: "kill_gateway", gatewayId: victim });
    await waitFor(() => ticks(events).stopped, "the ticker to finish", t(60_000));
    const got = ticks(events).ticks;
    assert.ok(got.length < 3000 || c.reconnects >= 1);
    assert.deepEqual(got, Array.from({ length: 3000 }, (_, i) => i + 1), "every line exactly once, in order");
    assert.ok(c.reconnects >= 1);
    assert.notEqual(c.gatewayId, victim);
    const names = seen.map((s) => s.state);
    assert.ok(names.includes("reconnecting") && names.includes("resumed"), names.join(","));
    const sequences = events.flatMap((e) => (e.type === "agent:output" ? [e.payload.sequence] : []));
    assert.deepEqual(sequences, [...new Set(sequences)].sort((a, b) => a - b));
    await restartGateways();
  });

  it("replays what was published while a lost session was gone", async () => {
    const { c, seen, events } = await tickerUnderWay();
    // The session is gone (as if it had expired) and then the connection: the client gets a
    // new session and subscribes again from the newest line it received.
    await stack.command({ cmd: "forget_session", sessionId: c.sessionId as string });
    await stack.command({ cmd: "kill_gateway", gatewayId: c.gatewayId as string });
    await waitFor(() => ticks(events).stopped, "the ticker to finish", t(60_000));
    assert.deepEqual(ticks(events).ticks, Array.from({ length: 3000 }, (_, i) => i + 1), "every line exactly once, in order");
    const names = seen.map((s) => s.state);
    assert.ok(names.lastIndexOf("open") > names.indexOf("reconnecting"), names.join(",")); // a new session
    assert.ok(names.indexOf("reconnecting") > 0 && !names.includes("resumed") && !names.includes("missed"), names.join(","));
    await restartGateways();
  });
});
