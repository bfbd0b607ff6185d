// The TypeScript client of the Team Dashboard gateway: `DashboardWebSocket`.
//
// How it works: one `DashboardWebSocket` owns one WebSocket at a time. `connect()` opens it,
// sends `auth` and resolves with the `connection:status`. Every later frame is parsed once
// and handled in order: `ping` is answered with `pong`, an `ack` settles the promise of its
// request (by `messageId`), and topic events are routed — each topic's `SeenWindow` drops
// duplicates by `(epoch, offset)`, its newest position is what a resume sends back in
// `auth.payload.positions`, and each `Subscription` of the topic whose filters accept the
// event gets it (a subscription buffers what arrives before its first listener).
// When the connection drops (anything but a close by the user or a 1008 policy close —
// unless TOKEN_EXPIRED with a token provider), pending requests fail with
// `ConnectionLostError` (they may or may not have been carried out: nothing is re-sent) and
// the client reconnects with the spec's backoff (1, 2, 4, 8, 16, then 30 s, each ± jitter)
// and resumes the session (`sessionId` + `positions`); the server restores the
// subscriptions with the same ids, so handles keep working. A session that could not be
// resumed is re-created and every subscription is made again (a `missed` state event says
// that events in between were lost). The token is refreshed in place before it expires
// when the client has a token provider.
import {
  closeError,
  AUTH_CODES,
  ConnectionLostError,
  DashboardError,
  RequestTimeoutError,
} from "./errors.js";
import {
  backoffDelay,
  DEFAULT_BACKOFF_MS,
  expectedTopic,
  filterAccepts,
  metricsSections,
  newId,
  positionOf,
  SeenWindow,
  tokenExpiresAt,
  topicOf,
  type DashboardEvent,
  type SubscriptionKind,
  type TopicEvent,
} from "./core.js";
import {
  ErrorCode,
  type AckPayload,
  type AgentCommandPayload,
  type AgentCommandResult,
  type AgentControlResult,
  type AgentEventFilter,
  type AgentPermissionPayload,
  type AgentPermissionResult,
  type AgentRef,
  type AuthPayload,
  type ConnectionStatusPayload,
  type CreateAgentPayload,
  type CreateAgentResult,
  type LogsFilter,
  type MetricsFilter,
  type RequestResults,
  type ServerMessage,
  type StreamPosition,
  type SubscribeAgentPayload,
  type SubscribeLogsPayload,
  type SubscribeMetricsPayload,
  type AgentHistoryPayload,
  type AgentHistoryResult,
  type AgentInfo,
  type AgentListPayload,
  type AgentListResult,
  type SubscriptionGapMessage,
  type TerminateAgentPayload,
  type TokenRefreshResult,
  type UnsubscribePayload,
} from "./protocol.js";

/** Largest message the gateway accepts (bigger ones close the connection with 1009). */
export const MAX_MESSAGE_BYTES = 1024 * 1024;
/** Positions sent in `auth` at most (the server's limit). */
export const MAX_POSITIONS = 200;
/** As `agent:history`'s `before` (with no `after`): an offset past every event, so the page
 * is the newest one. */
export const NEWEST = Number.MAX_SAFE_INTEGER;
/** Events buffered per subscription before its first listener (the oldest are dropped beyond). */
export const DEFAULT_QUEUE_SIZE = 10_000;

/** The payload of each request type (what `request(type, payload)` takes). */
export interface RequestPayloads {
  auth: AuthPayload;
  "agent:create": CreateAgentPayload;
  "agent:command": AgentCommandPayload;
  "agent:pause": AgentRef;
  "agent:resume": AgentRef;
  "agent:terminate": TerminateAgentPayload;
  "agent:permission": AgentPermissionPayload;
  "subscribe:agent": SubscribeAgentPayload;
  "subscribe:metrics": SubscribeMetricsPayload;
  "subscribe:logs": SubscribeLogsPayload;
  unsubscribe: UnsubscribePayload;
  "agent:list": AgentListPayload;
  "agent:history": AgentHistoryPayload;
}
export type RequestType = keyof RequestResults;
// Fails to compile when the schema gains a request type this map does not have (or loses one).
const requestTypesMatch: [RequestType] extends [keyof RequestPayloads]
  ? [keyof RequestPayloads] extends [RequestType]
    ? true
    : never
  : never = true;
void requestTypesMatch;

/** The part of a WebSocket the client uses (the browser's, Node 22's, or the `ws` package's). */
interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}
/** A WebSocket class: `globalThis.WebSocket` (browsers, Node >= 22) or `ws`'s on Node 20. */
export type WebSocketConstructor = new (url: string) => object;
export type TokenProvider = () => string | Promise<string>;

export interface DashboardOptions {
  /** The gateway's WebSocket URL, e.g. `ws://localhost:3001/ws`. */
  url: string;
  /** A JWT, or a function returning one (asked again before every connection and refresh). */
  token: string | TokenProvider;
  /** The `clientId` sent in `auth` (default: a random one). */
  clientId?: string;
  /** `payload` (default): `{type, payload: {token, clientId, …}}`; `flat`: `{type, token,
   * clientId, sessionId?}` (no `positions`: a resume then starts from the server's cursor). */
  authShape?: "payload" | "flat";
  /** Resume this session on the first connection (e.g. saved from `sessionId` and `positions`). */
  sessionId?: string;
  positions?: Record<string, StreamPosition>;
  /** Reconnect and resume when the connection drops (default true). */
  reconnect?: boolean;
  /** Delays before reconnection attempts, ms (the last repeats); default 1, 2, 4, 8, 16, 30 s. */
  backoffMs?: readonly number[];
  /** Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter] (default 0.2). */
  jitter?: number;
  /** Give up after that many failed reconnection attempts (default: never). */
  maxAttempts?: number;
  /** How long a request waits for its ack, or for the connection while reconnecting (30 s). */
  requestTimeoutMs?: number;
  /** How long opening a connection and authenticating may take (10 s). */
  connectTimeoutMs?: number;
  /** Without any frame from the gateway for this long the connection is replaced (default
   * 2.5 × `heartbeatIntervalMs` + 1 s). */
  deadAfterMs?: number;
  /** Refresh the token this long before it expires (120 s; needs a token provider). */
  refreshBeforeExpiryMs?: number;
  /** Events a subscription buffers before its first listener (10 000). */
  queueSize?: number;
  /** The WebSocket class (default `globalThis.WebSocket`; on Node 20 pass `ws`'s). */
  WebSocket?: WebSocketConstructor;
  /** The jitter's random source (tests). */
  random?: () => number;
}

/** A connection state change, given to `on("state", …)` listeners. */
export type StateEvent =
  | { state: "connecting"; attempt: number }
  | { state: "open"; status: ConnectionStatusPayload }
  | { state: "reconnecting"; attempt: number; delayMs: number; code: number; reason: string }
  | { state: "resumed"; status: ConnectionStatusPayload }
  | {
      state: "missed";
      /** `not-recovered`: the resume (or a subscribe `since`, on `topic`) could not replay
       * `missed` events; `new-session`: the session was gone and a subscription that had
       * received nothing yet was made again (nothing to replay from); `events-lost`/
       * `epoch-changed`: a `subscription:gap` on `topic`. */
      reason: "not-recovered" | "new-session" | "events-lost" | "epoch-changed";
      missed?: number;
      topic?: string;
    }
  | { state: "token-refreshed"; expiresAt: number }
  | { state: "closed" }
  | { state: "failed"; error: DashboardError };

type Listener<T> = (value: T) => void;

/** What every `subscribe*` takes. */
export interface SubscribeOptions<E extends DashboardEvent> {
  /** Called with every event (and `subscription:gap` notice) of the subscription. */
  onEvent?: Listener<E | SubscriptionGapMessage>;
  /** Catch up from this position of the topic (e.g. an `agent:list` or `agent:history`
   * result's `position`; `{ offset: 0 }`: everything retained) instead of starting live. */
  since?: StreamPosition;
}
type Filter = AgentEventFilter | MetricsFilter | LogsFilter;

interface Pending {
  type: string;
  resolve: (result: object) => void;
  reject: (error: DashboardError) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
  /** Run when the ack succeeds, before any later frame is handled (so a subscription exists
   * before its first event is routed). */
  onSuccess: ((result: object) => void) | undefined;
}

/**
 * One subscription. Add listeners with `on()`; events that arrive before the first listener
 * are buffered (up to `queueSize`, then the oldest are dropped and counted in `dropped`).
 * `id` is the server's subscription id: the same across a resumed reconnect, a new one if
 * the session had to be re-created.
 */
export class Subscription<E extends DashboardEvent = DashboardEvent> {
  id: string;
  topic: string;
  /** Every `subscription:gap` notice this subscription got (also given to listeners). */
  readonly gaps: SubscriptionGapMessage[] = [];
  dropped = 0;
  /** Made with `since`: the events after it that the server no longer retained (0: none),
   * and whether the catch-up was complete (`false`: some were missed or the topic's epoch
   * changed — refetch). Undefined without `since`. */
  missed: number | undefined;
  recovered: boolean | undefined;
  private readonly listeners = new Set<Listener<E | SubscriptionGapMessage>>();
  private buffer: (E | SubscriptionGapMessage)[] = [];
  private seen = new SeenWindow();
  private ended = false;

  /** @internal — made by `DashboardWebSocket.subscribe*`. */
  constructor(
    private readonly client: DashboardWebSocket,
    id: string,
    topic: string,
    readonly kind: SubscriptionKind,
    readonly agentId: string | undefined,
    readonly filters: readonly Filter[],
    private readonly queueSize: number,
  ) {
    this.id = id;
    this.topic = topic;
  }

  get active(): boolean {
    return !this.ended;
  }

  /** Call `listener` with every event of this subscription (buffered ones first); returns
   * a function that removes it. */
  on(listener: Listener<E | SubscriptionGapMessage>): () => void {
    this.listeners.add(listener);
    const buffered = this.buffer;
    this.buffer = [];
    for (const event of buffered) listener(event);
    return () => this.listeners.delete(listener);
  }

  /** Stop the subscription on the server; listeners get nothing more. */
  async unsubscribe(): Promise<void> {
    if (!this.ended) await this.client.unsubscribe(this.id);
  }

  /** @internal */
  offer(event: DashboardEvent): void {
    if (this.ended || !filterAccepts(this.kind, this.filters, event)) return;
    const pos = positionOf(event);
    if (pos !== undefined && !this.seen.add(...pos)) return;
    const out = event.type === "metrics:update" ? metricsSections(event, this.filters as MetricsFilter[]) : event;
    this.emit(out as E);
  }

  /** @internal */
  gap(notice: SubscriptionGapMessage): void {
    this.seen.reset(notice.payload.position);
    this.gaps.push(notice);
    this.emit(notice);
  }

  /** @internal */
  end(): void {
    this.ended = true;
    this.listeners.clear();
    this.buffer = [];
  }

  /** @internal — a re-created session gave this subscription a new id. */
  renew(id: string, topic: string): void {
    this.id = id;
    this.topic = topic;
    this.seen = new SeenWindow();
  }

  private emit(event: E | SubscriptionGapMessage): void {
    if (this.listeners.size === 0) {
      if (this.buffer.length >= this.queueSize) {
        this.buffer.shift();
        this.dropped += 1;
      }
      this.buffer.push(event);
      return;
    }
    for (const listener of this.listeners) listener(event);
  }
}

export type AgentSubscriptionEvent = Exclude<TopicEvent, { type: "metrics:update" | "system:alert" }>;
export type MetricsSubscriptionEvent = Extract<TopicEvent, { type: "metrics:update" }>;
export type LogsSubscriptionEvent = Extract<TopicEvent, { type: "system:alert" }>;

/** A client of the Team Dashboard gateway (see the module comment for how it works). */
export class DashboardWebSocket {
  readonly url: string;
  readonly clientId: string;
  /** The session (set by `connection:status`; sent back when reconnecting). */
  sessionId: string | undefined;
  /** The last `connection:status` payload. */
  status: ConnectionStatusPayload | undefined;
  /** Successful reconnections so far. */
  reconnects = 0;

  private token: string | TokenProvider;
  private readonly options: Required<
    Pick<
      DashboardOptions,
      "authShape" | "reconnect" | "backoffMs" | "jitter" | "requestTimeoutMs" | "connectTimeoutMs" | "refreshBeforeExpiryMs" | "queueSize" | "random"
    >
  > &
    Pick<DashboardOptions, "maxAttempts" | "deadAfterMs">;
  private readonly Socket: new (url: string) => object;
  private ws: WebSocketLike | undefined;
  private readonly pending = new Map<string, Pending>();
  private readonly subs = new Map<string, Subscription>();
  private readonly topics = new Map<string, SeenWindow>();
  private readonly eventIds = new Set<string>();
  private readonly stateListeners = new Set<Listener<StateEvent>>();
  private readonly eventListeners = new Set<Listener<DashboardEvent>>();
  private connectWaiters: (() => void)[] = [];
  private started = false;
  private closing = false;
  private failure: DashboardError | undefined;
  private deadTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  /** The expiry the refresh timer is set for (undefined: the token's expiry is unknown). */
  private refreshFor: number | undefined;
  private sleepTimer: { timer: ReturnType<typeof setTimeout>; wake: () => void } | undefined;

  constructor(options: DashboardOptions) {
    const backoffMs = options.backoffMs ?? DEFAULT_BACKOFF_MS;
    const jitter = options.jitter ?? 0.2;
    if (backoffMs.length === 0 || backoffMs.some((d) => d < 0)) {
      throw new RangeError("backoffMs must be a non-empty list of delays >= 0");
    }
    if (!(jitter >= 0 && jitter < 1)) throw new RangeError("jitter must be in [0, 1)");
    const Socket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (Socket === undefined) {
      throw new TypeError("no WebSocket here (Node < 22): pass one, e.g. { WebSocket } from 'ws'");
    }
    this.Socket = Socket;
    this.url = options.url;
    this.token = options.token;
    this.clientId = options.clientId ?? `ts-${newId().slice(0, 12)}`;
    this.sessionId = options.sessionId;
    this.options = {
      authShape: options.authShape ?? "payload",
      reconnect: options.reconnect ?? true,
      backoffMs,
      jitter,
      requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      refreshBeforeExpiryMs: options.refreshBeforeExpiryMs ?? 120_000,
      queueSize: options.queueSize ?? DEFAULT_QUEUE_SIZE,
      random: options.random ?? Math.random,
      ...(options.maxAttempts !== undefined ? { maxAttempts: options.maxAttempts } : {}),
      ...(options.deadAfterMs !== undefined ? { deadAfterMs: options.deadAfterMs } : {}),
    };
    for (const [topic, pos] of Object.entries(options.positions ?? {})) {
      const window = new SeenWindow();
      if (pos.epoch !== undefined) window.add(pos.epoch, pos.offset);
      this.topics.set(topic, window);
    }
  }

  // -- properties ---------------------------------------------------------------------
  get connected(): boolean {
    return this.ws !== undefined;
  }

  get gatewayId(): string | undefined {
    return this.status?.gatewayId;
  }

  get userId(): string | undefined {
    return this.status?.userId;
  }

  get subscriptions(): Subscription[] {
    return [...this.subs.values()];
  }

  /** Topic → position of the newest event received (sent in `auth` on resume). */
  get positions(): Record<string, StreamPosition> {
    const out: Record<string, StreamPosition> = {};
    for (const [topic, window] of this.topics) {
      const pos = window.position;
      if (pos !== undefined) out[topic] = pos;
    }
    return out;
  }

  /** Listen to connection state changes, or to every event received (each once). Returns a
   * function that removes the listener. */
  on(what: "state", listener: Listener<StateEvent>): () => void;
  on(what: "event", listener: Listener<DashboardEvent>): () => void;
  on(what: "state" | "event", listener: Listener<StateEvent> | Listener<DashboardEvent>): () => void {
    const set = (what === "state" ? this.stateListeners : this.eventListeners) as Set<unknown>;
    set.add(listener);
    return () => set.delete(listener);
  }

  // -- lifecycle ------------------------------------------------------------------------
  /**
   * Open the connection and authenticate (resuming `sessionId` if given). Rejects with a
   * `DashboardError` (AUTH_FAILED, TOKEN_EXPIRED, …) when `auth` is refused, with
   * `ConnectionLostError` when the gateway cannot be reached: no retry here, reconnection
   * applies to a connection that was established once.
   */
  async connect(): Promise<ConnectionStatusPayload> {
    if (this.started) throw new Error("this client was already connected; create a new one");
    this.started = true;
    this.notify({ state: "connecting", attempt: 0 });
    const status = await this.open();
    this.notify({ state: status.resumed ? "resumed" : "open", status });
    this.reportRecovery(status);
    return status;
  }

  /** Close the connection (1000) and stop: pending requests fail with `ConnectionLostError`,
   * subscriptions end. The session stays resumable on the server until it expires. */
  close(): void {
    if (this.closing) return;
    this.closing = true;
    this.stopTimers();
    const ws = this.ws;
    this.ws = undefined;
    if (ws !== undefined) {
      detach(ws);
      ws.close(1000, "client closed");
    }
    this.failPending(new ConnectionLostError("the client was closed"));
    this.endAll();
    this.wakeWaiters();
    this.notify({ state: "closed" });
  }

  // -- requests -------------------------------------------------------------------------
  /**
   * Send a request and resolve with its ack's `result` (typed per request). Rejects with a
   * `DashboardError` carrying the ack's code, `ConnectionLostError` if the connection
   * dropped before the ack, `RequestTimeoutError` after `ackTimeoutMs` (default
   * `requestTimeoutMs`; `null`: no limit once sent). While the client is reconnecting the
   * request waits for the new connection. A request refused with TOKEN_EXPIRED is retried
   * once after a token refresh when the client has a token provider.
   */
  async request<T extends RequestType>(
    type: T,
    payload: RequestPayloads[T],
    onSuccess?: (result: RequestResults[T]) => void,
    ackTimeoutMs: number | null = this.options.requestTimeoutMs,
  ): Promise<RequestResults[T]> {
    try {
      return await this.requestOnce(type, payload, onSuccess, ackTimeoutMs);
    } catch (e) {
      if (!(e instanceof DashboardError) || e.code !== ErrorCode.TOKEN_EXPIRED || typeof this.token === "string" || type === "auth") {
        throw e;
      }
    }
    await this.refreshToken();
    return this.requestOnce(type, payload, onSuccess, ackTimeoutMs);
  }

  /** Create an agent; resolves once the runner has started it (`agentId`, `pid`). */
  createAgent(payload: CreateAgentPayload): Promise<CreateAgentResult> {
    return this.request("agent:create", payload);
  }

  /**
   * Write `command` to the agent's stdin; its output arrives as events on `agent:{id}`. By
   * default the ack says it was delivered. With `wait: "completed"` it resolves when the
   * command's turn ended (`result.turn`: its `turn_end` event) and rejects with a
   * `DashboardError` carrying the failure's code (AGENT_AUTH_REQUIRED, AGENT_RATE_LIMITED,
   * AGENT_TURN_FAILED…, AGENT_COMMAND_TIMEOUT, AGENT_NOT_FOUND when the agent ended first,
   * SERVICE_UNAVAILABLE when its runner died); the ack is then awaited `timeoutMs` plus
   * `requestTimeoutMs`, or without a limit when there is no `timeoutMs`.
   */
  sendCommand(
    agentId: string,
    command: string,
    options: { timeoutMs?: number; interactive?: boolean; wait?: AgentCommandPayload["wait"] } = {},
  ): Promise<AgentCommandResult> {
    const completes = options.wait === "completed";
    const limit = options.timeoutMs !== undefined ? options.timeoutMs + this.options.requestTimeoutMs : null;
    return this.request(
      "agent:command",
      {
        agentId,
        command,
        ...(options.timeoutMs !== undefined ? { timeout: options.timeoutMs } : {}),
        ...(options.interactive !== undefined ? { interactive: options.interactive } : {}),
        ...(options.wait !== undefined ? { wait: options.wait } : {}),
      },
      undefined,
      completes ? limit : this.options.requestTimeoutMs,
    );
  }

  pause(agentId: string): Promise<AgentControlResult> {
    return this.request("agent:pause", { agentId });
  }

  resume(agentId: string): Promise<AgentControlResult> {
    return this.request("agent:resume", { agentId });
  }

  terminate(agentId: string, options: { force?: boolean } = {}): Promise<AgentControlResult> {
    return this.request("agent:terminate", { agentId, ...(options.force ? { force: true } : {}) });
  }

  /** Answer an agent's `permission_request` event (its `requestId`): allow or deny the
   * tool use; a deny may say why. */
  answerPermission(
    agentId: string,
    requestId: string,
    decision: "allow" | "deny",
    message?: string,
  ): Promise<AgentPermissionResult> {
    return this.request("agent:permission", {
      agentId,
      requestId,
      decision,
      ...(message !== undefined ? { message } : {}),
    });
  }

  // -- state: the agent list and an agent's history ------------------------------------
  /** One page of the agents you may see (`agent:list`), ordered by start time. Pass its
   * `next` as `after` for the next page; subscribe to the `agents` topic `since` the first
   * page's `position` to follow every later change (see `listAllAgents`). */
  listAgents(payload: AgentListPayload = {}): Promise<AgentListResult> {
    return this.request("agent:list", payload);
  }

  /** Every page of `agent:list` for `payload`, in order (`for await … of`); each page is
   * read afresh, with its own `position`. */
  async *agentPages(payload: AgentListPayload = {}): AsyncGenerator<AgentListResult, void, undefined> {
    let after = payload.after;
    do {
      const page = await this.listAgents({ ...payload, ...(after !== undefined ? { after } : {}) });
      yield page;
      after = page.next;
    } while (after !== undefined);
  }

  /**
   * All agents matching `payload` (every page) and the `agents` topic position they
   * reflect: the first page's, so a change made while later pages were read is not lost.
   * Then `subscribeAgent({ since: position })` gets every later lifecycle event exactly
   * once; some may already show in the list — each carries the agent's whole new status,
   * so applying it again is harmless.
   */
  async listAllAgents(payload: Omit<AgentListPayload, "after"> = {}): Promise<{ agents: AgentInfo[]; position: StreamPosition }> {
    const agents = new Map<string, AgentInfo>();
    let position: StreamPosition | undefined;
    for await (const page of this.agentPages(payload)) {
      position ??= page.position;
      for (const agent of page.agents) agents.set(agent.agentId, agent);
    }
    return { agents: [...agents.values()], position: position as StreamPosition };
  }

  /** One page of an agent's durable transcript (`agent:history`), oldest event first, the
   * events exactly as a subscriber got them. `after` a page's `next` reads the newer page,
   * `before` its `prev` the older one; `missed` counts events the transcript no longer
   * keeps. Subscribe `since` the page's `position` to go on live. */
  async agentHistory(payload: AgentHistoryPayload): Promise<AgentHistoryResult> {
    const page = await this.request("agent:history", payload);
    // The gateway sends an absent `next`/`prev` as null (the schema says absent): as absent,
    // or a page loop would send `before: null` — read from the oldest — forever.
    if (page.next == null) delete page.next;
    if (page.prev == null) delete page.prev;
    return page;
  }

  /** Pages of an agent's history (`for await … of`): `backward` from the newest page (or
   * from `payload.before`) to the oldest kept, following `prev`; `forward` from the oldest
   * (or from `payload.after`) to the newest, following `next`. The first page's `position`
   * is where a subscription goes on live. */
  async *historyPages(
    payload: AgentHistoryPayload,
    direction: "backward" | "forward" = "backward",
  ): AsyncGenerator<AgentHistoryResult, void, undefined> {
    const { after, before, ...rest } = payload;
    const backward = direction === "backward";
    let cursor = backward ? (before ?? NEWEST) : after;
    for (;;) {
      const page = await this.agentHistory({ ...rest, ...(cursor === undefined ? {} : backward ? { before: cursor } : { after: cursor }) });
      yield page;
      cursor = backward ? page.prev : page.next;
      if (cursor === undefined) return;
    }
  }

  /** With `agentId`: that agent's output, status and errors (topic `agent:{id}`); without:
   * lifecycle events of every agent you may see (topic `agents`). With `since` (a position
   * of that topic: an `agent:list` or `agent:history` result's `position`) the subscription
   * first gets the retained events after it, then live ones: each event after `since`
   * exactly once (`sub.recovered` says whether the catch-up was complete). */
  subscribeAgent(options: SubscribeOptions<AgentSubscriptionEvent> & { agentId?: string; filters?: AgentEventFilter[] } = {}): Promise<Subscription<AgentSubscriptionEvent>> {
    return this.subscribeKind("agent", options.agentId, options.filters ?? [], options);
  }

  /** `metrics:update` events (topic `metrics`); `filters`: `system`, `agents`. */
  subscribeMetrics(options: SubscribeOptions<MetricsSubscriptionEvent> & { filters?: MetricsFilter[] } = {}): Promise<Subscription<MetricsSubscriptionEvent>> {
    return this.subscribeKind("metrics", undefined, options.filters ?? [], options);
  }

  /** `system:alert` events (topic `logs`); `filters`: levels and/or categories. */
  subscribeLogs(options: SubscribeOptions<LogsSubscriptionEvent> & { filters?: LogsFilter[] } = {}): Promise<Subscription<LogsSubscriptionEvent>> {
    return this.subscribeKind("logs", undefined, options.filters ?? [], options);
  }

  /** Stop a subscription (its listeners get nothing more). */
  async unsubscribe(subscriptionId: string): Promise<void> {
    await this.request("unsubscribe", { subscriptionId }, () => {
      this.subs.get(subscriptionId)?.end();
      this.subs.delete(subscriptionId);
    });
  }

  /**
   * Send a new `auth` on the live connection (same user, fresh token: `token`, or the token
   * provider's): the session and subscriptions continue. Resolves with `expiresAt`. With a
   * token string, the new one is also used for later reconnections.
   */
  async refreshToken(token?: string): Promise<TokenRefreshResult> {
    const fresh = token ?? (await this.getToken());
    const result = await this.requestOnce("auth", { token: fresh, clientId: this.clientId }, undefined, this.options.requestTimeoutMs);
    if (typeof this.token === "string") this.token = fresh;
    this.scheduleRefresh(result.expiresAt);
    this.notify({ state: "token-refreshed", expiresAt: result.expiresAt });
    return result;
  }

  // -- internals: requests ----------------------------------------------------------------
  private async requestOnce<T extends RequestType>(
    type: T,
    payload: RequestPayloads[T],
    onSuccess: ((result: RequestResults[T]) => void) | undefined,
    ackTimeoutMs: number | null,
  ): Promise<RequestResults[T]> {
    const start = Date.now();
    const deadline = start + this.options.requestTimeoutMs;
    const id = newId();
    const text = JSON.stringify(this.message(id, type, payload));
    const size = new TextEncoder().encode(text).length;
    if (size > MAX_MESSAGE_BYTES) {
      throw new DashboardError(
        ErrorCode.INVALID_MESSAGE,
        `${type} is ${size} bytes; the gateway accepts at most ${MAX_MESSAGE_BYTES} (split it)`,
        id,
      );
    }
    const ws = await this.waitConnected(deadline, type);
    return new Promise<RequestResults[T]>((resolve, reject) => {
      // The wait for a connection counts against the ack's time.
      const timer =
        ackTimeoutMs === null
          ? undefined
          : setTimeout(() => {
              this.pending.delete(id);
              reject(new RequestTimeoutError(`no ack for ${type} within ${ackTimeoutMs} ms`, id));
            }, Math.max(start + ackTimeoutMs - Date.now(), 0));
      this.pending.set(id, {
        type,
        resolve: resolve as (result: object) => void,
        reject,
        timer,
        onSuccess: onSuccess as ((result: object) => void) | undefined,
      });
      try {
        ws.send(text);
      } catch {
        this.settle(id, new ConnectionLostError(`the connection closed before ${type} could be sent`, id));
      }
    });
  }

  private message(id: string, type: RequestType | "auth", payload: object): object {
    if (type === "auth" && this.options.authShape === "flat") {
      const { token, clientId, sessionId } = payload as AuthPayload;
      return { id, type, timestamp: Date.now(), token, clientId, ...(sessionId !== undefined ? { sessionId } : {}) };
    }
    return { id, type, timestamp: Date.now(), payload };
  }

  private waitConnected(deadline: number, type: string): Promise<WebSocketLike> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        if (this.failure !== undefined) reject(this.failure);
        else if (this.closing || !this.started) reject(new ConnectionLostError("the client is not connected"));
        else if (this.ws !== undefined) resolve(this.ws);
        else return false;
        return true;
      };
      if (check()) return;
      const timer = setTimeout(() => {
        this.connectWaiters = this.connectWaiters.filter((w) => w !== waiter);
        reject(new RequestTimeoutError(`not reconnected within ${this.options.requestTimeoutMs} ms; ${type} not sent`));
      }, Math.max(deadline - Date.now(), 0));
      const waiter = (): void => {
        if (check()) clearTimeout(timer);
        else this.connectWaiters.push(waiter);
      };
      this.connectWaiters.push(waiter);
    });
  }

  private wakeWaiters(): void {
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const waiter of waiters) waiter();
  }

  private settle(id: string, outcome: DashboardError | { result: object }): void {
    const pending = this.pending.get(id);
    if (pending === undefined) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if (outcome instanceof DashboardError) {
      pending.reject(outcome);
    } else {
      pending.onSuccess?.(outcome.result);
      pending.resolve(outcome.result);
    }
  }

  private failPending(error: DashboardError): void {
    for (const [id, pending] of [...this.pending]) {
      const err =
        error instanceof ConnectionLostError && !this.closing
          ? new ConnectionLostError(
              `the connection dropped before the ack of ${pending.type} arrived; it may or may not have been carried out`,
              id,
            )
          : error;
      this.settle(id, err);
    }
  }

  // -- internals: subscriptions -----------------------------------------------------------
  private async subscribeKind<E extends DashboardEvent>(
    kind: SubscriptionKind,
    agentId: string | undefined,
    filters: readonly Filter[],
    options: SubscribeOptions<E>,
    existing?: Subscription,
  ): Promise<Subscription<E>> {
    let made: Subscription | undefined;
    // A re-made subscription (new session) gets the position of the newest event received on
    // its topic from `resubscribe`, never its first `since`: what came after that was
    // delivered already, and would be again.
    const since = options.since;
    const payload = {
      ...(agentId !== undefined ? { agentId } : {}),
      ...(filters.length > 0 ? { filters: [...filters] } : {}),
      ...(since !== undefined ? { since } : {}),
    };
    await this.request(`subscribe:${kind}`, payload as RequestPayloads[`subscribe:${typeof kind}`], (result) => {
      const topic = result.topic || expectedTopic(kind, agentId);
      if (existing !== undefined) {
        this.subs.delete(existing.id);
        existing.renew(result.subscriptionId, topic);
        made = existing;
      } else {
        made = new Subscription(this, result.subscriptionId, topic, kind, agentId, filters, this.options.queueSize);
        if (options.onEvent !== undefined) made.on(options.onEvent as Listener<DashboardEvent>);
      }
      made.missed = result.missed;
      made.recovered = result.recovered;
      this.subs.set(made.id, made);
    });
    if (since !== undefined && made?.recovered === false) {
      this.notify({ state: "missed", reason: "not-recovered", topic: made.topic, ...(made.missed !== undefined ? { missed: made.missed } : {}) });
    }
    return made as unknown as Subscription<E>;
  }

  /** After a reconnection on a new session (the old one was gone): subscribe again, each
   * from the newest event received on its topic, so what was published meanwhile is
   * replayed. A `missed` state event tells what could not be: `not-recovered` on a topic, or
   * `new-session` when a subscription had received nothing yet (no position to start from). */
  private async resubscribe(): Promise<void> {
    const positions = this.positions;
    let unknown = false;
    for (const sub of [...this.subs.values()]) {
      const since = positions[sub.topic];
      unknown ||= since === undefined;
      try {
        await this.subscribeKind(sub.kind, sub.agentId, sub.filters, since !== undefined ? { since } : {}, sub);
      } catch (e) {
        if (e instanceof ConnectionLostError) return; // the next reconnection tries again
        this.subs.delete(sub.id);
        sub.end();
      }
    }
    if (unknown) this.notify({ state: "missed", reason: "new-session" });
  }

  private endAll(): void {
    for (const sub of this.subs.values()) sub.end();
  }

  // -- internals: connection --------------------------------------------------------------
  private async getToken(): Promise<string> {
    return typeof this.token === "string" ? this.token : String(await this.token());
  }

  private authPayload(token: string): AuthPayload {
    if (this.sessionId === undefined) return { token, clientId: this.clientId };
    const current = this.positions;
    // The server takes at most MAX_POSITIONS; the subscribed topics matter most.
    const wanted = [...this.subs.values()].map((s) => s.topic).filter((t) => t in current);
    const topics = [...new Set([...wanted, ...Object.keys(current)])].slice(0, MAX_POSITIONS);
    const positions = Object.fromEntries(topics.map((t) => [t, current[t] as StreamPosition]));
    return {
      token,
      clientId: this.clientId,
      sessionId: this.sessionId,
      ...(topics.length > 0 && this.options.authShape === "payload" ? { positions } : {}),
    };
  }

  /** One connection attempt: connect, `auth`, wait for `connection:status`. */
  private async open(): Promise<ConnectionStatusPayload> {
    let token: string;
    try {
      token = await this.getToken();
    } catch (e) {
      throw new ConnectionLostError(`the token provider failed: ${String(e)}`);
    }
    const ws = new this.Socket(this.url) as WebSocketLike;
    const authId = newId();
    const status = await new Promise<ConnectionStatusPayload>((resolve, reject) => {
      const fail = (error: DashboardError): void => {
        clearTimeout(timer);
        detach(ws);
        ws.close();
        reject(error);
      };
      const timer = setTimeout(
        () => fail(new ConnectionLostError(`no answer to auth from ${this.url} within ${this.options.connectTimeoutMs} ms`)),
        this.options.connectTimeoutMs,
      );
      ws.onopen = () => ws.send(JSON.stringify(this.message(authId, "auth", this.authPayload(token))));
      ws.onerror = () => undefined; // the close that follows says what happened
      ws.onclose = (event) => {
        clearTimeout(timer);
        reject(event.code === 1006 ? new ConnectionLostError(`cannot connect to ${this.url}`) : closeError(event.code, event.reason));
      };
      ws.onmessage = (event) => {
        const msg = parse(event.data);
        if (msg?.type === "connection:status") {
          clearTimeout(timer);
          this.attach(ws, msg.payload, token);
          resolve(msg.payload);
        } else if (msg?.type === "ack" && msg.payload.messageId === authId && !msg.payload.success) {
          fail(ackError(msg.payload, "authentication failed"));
        }
      };
    });
    return status;
  }

  private attach(ws: WebSocketLike, status: ConnectionStatusPayload, token: string): void {
    this.ws = ws;
    this.status = status;
    this.sessionId = status.sessionId;
    ws.onmessage = (event) => this.onFrame(ws, event.data);
    ws.onclose = (event) => this.onClosed(ws, event.code, event.reason);
    this.armDeadTimer(ws);
    const expiresAt = tokenExpiresAt(token);
    if (expiresAt !== undefined) this.scheduleRefresh(expiresAt);
    this.wakeWaiters();
  }

  private reportRecovery(status: ConnectionStatusPayload): void {
    if (status.resumed && status.recovered === false) {
      this.notify({ state: "missed", reason: "not-recovered", missed: status.missed });
    }
  }

  private onClosed(ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this.ws) return;
    this.ws = undefined;
    detach(ws);
    clearTimeout(this.deadTimer);
    this.failPending(new ConnectionLostError("connection lost"));
    if (this.closing) return;
    const terminal = this.terminalClose(code, reason);
    if (terminal !== undefined || !this.options.reconnect) {
      this.giveUp(terminal ?? new ConnectionLostError(`connection closed (${code} ${reason})`));
      return;
    }
    void this.reconnectLoop(code, reason);
  }

  /** A close that reconnecting cannot fix: 1008 (auth refused, flooding), unless
   * TOKEN_EXPIRED and a token provider can give a fresh token. After a 1009 (message too
   * big) the session is fine: the message is never re-sent (and the client refuses such
   * messages before sending them), so it reconnects like the Python SDK. */
  private terminalClose(code: number, reason: string): DashboardError | undefined {
    if (code !== 1008) return undefined;
    const error = closeError(code, reason);
    if (error.code === ErrorCode.TOKEN_EXPIRED && typeof this.token !== "string") return undefined;
    return error;
  }

  private async reconnectLoop(code: number, reason: string): Promise<void> {
    for (let attempt = 0; !this.closing; ) {
      if (this.options.maxAttempts !== undefined && attempt >= this.options.maxAttempts) {
        this.giveUp(new ConnectionLostError(`gave up after ${attempt} reconnection attempts`));
        return;
      }
      const delayMs = backoffDelay(this.options.backoffMs, attempt, this.options.jitter, this.options.random);
      attempt += 1;
      this.notify({ state: "reconnecting", attempt, delayMs, code, reason });
      await this.sleep(delayMs);
      if (this.closing) return;
      this.notify({ state: "connecting", attempt });
      let status: ConnectionStatusPayload;
      try {
        status = await this.open();
      } catch (e) {
        const error = e instanceof DashboardError ? e : new ConnectionLostError(String(e));
        if (AUTH_CODES.has(error.code) && !(error.code === ErrorCode.TOKEN_EXPIRED && typeof this.token !== "string")) {
          this.giveUp(error);
          return;
        }
        continue;
      }
      if (this.closing) return;
      this.reconnects += 1;
      if (status.resumed) {
        this.notify({ state: "resumed", status });
        this.reportRecovery(status);
      } else {
        this.notify({ state: "open", status });
        if (this.subs.size > 0) await this.resubscribe();
      }
      return;
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = (): void => {
        this.sleepTimer = undefined;
        resolve();
      };
      this.sleepTimer = { timer: setTimeout(wake, ms), wake };
    });
  }

  private giveUp(error: DashboardError): void {
    this.failure = error;
    this.stopTimers();
    this.failPending(error);
    this.endAll();
    this.wakeWaiters();
    this.notify({ state: "failed", error });
  }

  private stopTimers(): void {
    clearTimeout(this.deadTimer);
    clearTimeout(this.refreshTimer);
    if (this.sleepTimer !== undefined) {
      clearTimeout(this.sleepTimer.timer);
      this.sleepTimer.wake();
    }
  }

  private armDeadTimer(ws: WebSocketLike): void {
    clearTimeout(this.deadTimer);
    const interval = this.status?.heartbeatIntervalMs ?? 30_000;
    const after = this.options.deadAfterMs ?? 2.5 * interval + 1000;
    this.deadTimer = setTimeout(() => {
      // Nothing from the gateway (not even its heartbeat): the connection is dead. Closing
      // it cleanly could wait for a peer that is gone, so it is dropped here and now.
      if (ws !== this.ws) return;
      ws.close(4000, "no frame from the gateway");
      this.onClosed(ws, 1006, `nothing from the gateway for ${after} ms`);
    }, after);
  }

  private scheduleRefresh(expiresAt: number): void {
    clearTimeout(this.refreshTimer);
    this.refreshFor = undefined;
    if (typeof this.token === "string" || this.closing) return; // no way to get a new token
    this.refreshFor = expiresAt;
    const delay = Math.min(Math.max(expiresAt - this.options.refreshBeforeExpiryMs - Date.now(), 0), 2 ** 31 - 1);
    this.refreshTimer = setTimeout(() => {
      this.refreshToken().catch(() => {
        // Not refreshed (no connection, the provider failed): try again shortly while the
        // token is still valid; past its expiry the reconnect gets a fresh one anyway.
        if (Date.now() + 5000 < expiresAt) this.scheduleRefresh(Math.min(expiresAt, Date.now() + 5000 + this.options.refreshBeforeExpiryMs));
      });
    }, delay);
  }

  // -- internals: reading -----------------------------------------------------------------
  private onFrame(ws: WebSocketLike, data: unknown): void {
    this.armDeadTimer(ws);
    const msg = parse(data);
    if (msg === undefined) return;
    switch (msg.type) {
      case "ack": {
        const p = msg.payload;
        this.settle(p.messageId, p.success ? { result: p.result ?? {} } : ackError(p, "request failed"));
        return;
      }
      case "ping":
        try {
          ws.send(
            JSON.stringify({
              id: newId(),
              type: "pong",
              timestamp: Date.now(),
              payload: { timestamp: msg.payload.timestamp },
              metadata: { correlationId: msg.id },
            }),
          );
        } catch {
          // closing: the close handler takes over
        }
        return;
      case "pong":
        return;
      case "connection:status":
        this.status = msg.payload;
        this.sessionId = msg.payload.sessionId;
        return;
      case "subscription:gap":
        this.onGap(msg);
        return;
      default:
        if (
          msg.type === "system:alert" &&
          msg.payload.category === "security" &&
          msg.payload.level === "warning" &&
          msg.metadata?.topic === undefined &&
          typeof this.token !== "string" &&
          this.refreshFor === undefined
        ) {
          // The gateway's warning that this connection's token expires soon, and the token's
          // own expiry could not be read (so no refresh is scheduled): refresh now. With a
          // known expiry the timer decides (the warning may come earlier than
          // refreshBeforeExpiryMs, for every new short-lived token again).
          this.refreshToken().catch(() => undefined);
        }
        this.route(msg);
    }
  }

  private onGap(notice: SubscriptionGapMessage): void {
    const p = notice.payload;
    const window = this.topics.get(p.topic) ?? new SeenWindow();
    this.topics.set(p.topic, window);
    window.reset(p.position);
    const named = new Set(p.subscriptionIds);
    for (const sub of this.subs.values()) {
      if (sub.topic === p.topic && (named.size === 0 || named.has(sub.id))) sub.gap(notice);
    }
    this.notify({ state: "missed", reason: p.reason, topic: p.topic, ...(p.missed !== undefined ? { missed: p.missed } : {}) });
    for (const listener of this.eventListeners) listener(notice);
  }

  private route(event: TopicEvent): void {
    const topic = topicOf(event);
    const pos = positionOf(event);
    let window = this.topics.get(topic);
    if (pos !== undefined && window === undefined) {
      window = new SeenWindow();
      this.topics.set(topic, window);
    }
    const isNew = pos === undefined || (window as SeenWindow).add(...pos);
    for (const sub of this.subs.values()) {
      if (sub.topic === topic) sub.offer(event);
    }
    if (isNew && this.eventListeners.size > 0 && this.firstCopy(event.id)) {
      for (const listener of this.eventListeners) listener(event);
    }
  }

  /** False for an event id seen recently (the same agent event on `agent:{id}` and `agents`). */
  private firstCopy(id: string): boolean {
    if (this.eventIds.has(id)) return false;
    this.eventIds.add(id);
    if (this.eventIds.size > 2048) {
      const oldest = this.eventIds.values().next().value as string;
      this.eventIds.delete(oldest);
    }
    return true;
  }

  private notify(event: StateEvent): void {
    for (const listener of this.stateListeners) {
      try {
        listener(event);
      } catch (e) {
        console.error("teamdash: a state listener failed", e); // must not break the connection
      }
    }
  }
}

function detach(ws: WebSocketLike): void {
  ws.onopen = ws.onmessage = ws.onclose = null;
  // Not null: Node's `ws` throws an "error" event nobody listens to (e.g. closing a socket
  // that is still connecting).
  ws.onerror = () => undefined;
}

/** A server frame as a typed message, or undefined: one odd frame (say, from a newer
 * server) must not break the connection. */
function parse(data: unknown): ServerMessage | undefined {
  if (typeof data !== "string") return undefined; // the protocol uses text frames only
  try {
    const msg: unknown = JSON.parse(data);
    return typeof msg === "object" && msg !== null && "type" in msg ? (msg as ServerMessage) : undefined;
  } catch {
    return undefined;
  }
}

function ackError(p: AckPayload, fallback: string): DashboardError {
  return new DashboardError(p.code ?? ErrorCode.INTERNAL_ERROR, p.error ?? fallback, p.messageId);
}
