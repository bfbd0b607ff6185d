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
import { closeError, AUTH_CODES, ConnectionLostError, DashboardError, RequestTimeoutError, } from "./errors.js";
import { backoffDelay, DEFAULT_BACKOFF_MS, expectedTopic, filterAccepts, metricsSections, newId, positionOf, SeenWindow, tokenExpiresAt, topicOf, } from "./core.js";
import { ErrorCode, } from "./protocol.js";
/** Largest message the gateway accepts (bigger ones close the connection with 1009). */
export const MAX_MESSAGE_BYTES = 1024 * 1024;
/** Positions sent in `auth` at most (the server's limit). */
export const MAX_POSITIONS = 200;
/** As `agent:history`'s `before` (with no `after`): an offset past every event, so the page
 * is the newest one. */
export const NEWEST = Number.MAX_SAFE_INTEGER;
/** Events buffered per subscription before its first listener (the oldest are dropped beyond). */
export const DEFAULT_QUEUE_SIZE = 10_000;
// Fails to compile when the schema gains a request type this map does not have (or loses one).
const requestTypesMatch = true;
void requestTypesMatch;
/**
 * One subscription. Add listeners with `on()`; events that arrive before the first listener
 * are buffered (up to `queueSize`, then the oldest are dropped and counted in `dropped`).
 * `id` is the server's subscription id: the same across a resumed reconnect, a new one if
 * the session had to be re-created.
 */
export class Subscription {
    client;
    kind;
    agentId;
    filters;
    queueSize;
    id;
    topic;
    /** Every `subscription:gap` notice this subscription got (also given to listeners). */
    gaps = [];
    dropped = 0;
    /** Made with `since`: the events after it that the server no longer retained (0: none),
     * and whether the catch-up was complete (`false`: some were missed or the topic's epoch
     * changed — refetch). Undefined without `since`. */
    missed;
    recovered;
    listeners = new Set();
    buffer = [];
    seen = new SeenWindow();
    ended = false;
    /** @internal — made by `DashboardWebSocket.subscribe*`. */
    constructor(client, id, topic, kind, agentId, filters, queueSize) {
        this.client = client;
        this.kind = kind;
        this.agentId = agentId;
        this.filters = filters;
        this.queueSize = queueSize;
        this.id = id;
        this.topic = topic;
    }
    get active() {
        return !this.ended;
    }
    /** Call `listener` with every event of this subscription (buffered ones first); returns
     * a function that removes it. */
    on(listener) {
        this.listeners.add(listener);
        const buffered = this.buffer;
        this.buffer = [];
        for (const event of buffered)
            listener(event);
        return () => this.listeners.delete(listener);
    }
    /** Stop the subscription on the server; listeners get nothing more. */
    async unsubscribe() {
        if (!this.ended)
            await this.client.unsubscribe(this.id);
    }
    /** @internal */
    offer(event) {
        if (this.ended || !filterAccepts(this.kind, this.filters, event))
            return;
        const pos = positionOf(event);
        if (pos !== undefined && !this.seen.add(...pos))
            return;
        const out = event.type === "metrics:update" ? metricsSections(event, this.filters) : event;
        this.emit(out);
    }
    /** @internal */
    gap(notice) {
        this.seen.reset(notice.payload.position);
        this.gaps.push(notice);
        this.emit(notice);
    }
    /** @internal */
    end() {
        this.ended = true;
        this.listeners.clear();
        this.buffer = [];
    }
    /** @internal — a re-created session gave this subscription a new id. */
    renew(id, topic) {
        this.id = id;
        this.topic = topic;
        this.seen = new SeenWindow();
    }
    emit(event) {
        if (this.listeners.size === 0) {
            if (this.buffer.length >= this.queueSize) {
                this.buffer.shift();
                this.dropped += 1;
            }
            this.buffer.push(event);
            return;
        }
        for (const listener of this.listeners)
            listener(event);
    }
}
/** A client of the Team Dashboard gateway (see the module comment for how it works). */
export class DashboardWebSocket {
    url;
    clientId;
    /** The session (set by `connection:status`; sent back when reconnecting). */
    sessionId;
    /** The last `connection:status` payload. */
    status;
    /** Successful reconnections so far. */
    reconnects = 0;
    token;
    options;
    Socket;
    ws;
    pending = new Map();
    subs = new Map();
    topics = new Map();
    eventIds = new Set();
    stateListeners = new Set();
    eventListeners = new Set();
    connectWaiters = [];
    started = false;
    closing = false;
    failure;
    deadTimer;
    refreshTimer;
    /** The expiry the refresh timer is set for (undefined: the token's expiry is unknown). */
    refreshFor;
    sleepTimer;
    constructor(options) {
        const backoffMs = options.backoffMs ?? DEFAULT_BACKOFF_MS;
        const jitter = options.jitter ?? 0.2;
        if (backoffMs.length === 0 || backoffMs.some((d) => d < 0)) {
            throw new RangeError("backoffMs must be a non-empty list of delays >= 0");
        }
        if (!(jitter >= 0 && jitter < 1))
            throw new RangeError("jitter must be in [0, 1)");
        const Socket = options.WebSocket ?? globalThis.WebSocket;
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
            if (pos.epoch !== undefined)
                window.add(pos.epoch, pos.offset);
            this.topics.set(topic, window);
        }
    }
    // -- properties ---------------------------------------------------------------------
    get connected() {
        return this.ws !== undefined;
    }
    get gatewayId() {
        return this.status?.gatewayId;
    }
    get userId() {
        return this.status?.userId;
    }
    get subscriptions() {
        return [...this.subs.values()];
    }
    /** Topic → position of the newest event received (sent in `auth` on resume). */
    get positions() {
        const out = {};
        for (const [topic, window] of this.topics) {
            const pos = window.position;
            if (pos !== undefined)
                out[topic] = pos;
        }
        return out;
    }
    on(what, listener) {
        const set = (what === "state" ? this.stateListeners : this.eventListeners);
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
    async connect() {
        if (this.started)
            throw new Error("this client was already connected; create a new one");
        this.started = true;
        this.notify({ state: "connecting", attempt: 0 });
        const status = await this.open();
        this.notify({ state: status.resumed ? "resumed" : "open", status });
        this.reportRecovery(status);
        return status;
    }
    /** Close the connection (1000) and stop: pending requests fail with `ConnectionLostError`,
     * subscriptions end. The session stays resumable on the server until it expires. */
    close() {
        if (this.closing)
            return;
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
    async request(type, payload, onSuccess, ackTimeoutMs = this.options.requestTimeoutMs) {
        try {
            return await this.requestOnce(type, payload, onSuccess, ackTimeoutMs);
        }
        catch (e) {
            if (!(e instanceof DashboardError) || e.code !== ErrorCode.TOKEN_EXPIRED || typeof this.token === "string" || type === "auth") {
                throw e;
            }
        }
        await this.refreshToken();
        return this.requestOnce(type, payload, onSuccess, ackTimeoutMs);
    }
    /** Create an agent; resolves once the runner has started it (`agentId`, `pid`). */
    createAgent(payload) {
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
    sendCommand(agentId, command, options = {}) {
        const completes = options.wait === "completed";
        const limit = options.timeoutMs !== undefined ? options.timeoutMs + this.options.requestTimeoutMs : null;
        return this.request("agent:command", {
            agentId,
            command,
            ...(options.timeoutMs !== undefined ? { timeout: options.timeoutMs } : {}),
            ...(options.interactive !== undefined ? { interactive: options.interactive } : {}),
            ...(options.wait !== undefined ? { wait: options.wait } : {}),
        }, undefined, completes ? limit : this.options.requestTimeoutMs);
    }
    pause(agentId) {
        return this.request("agent:pause", { agentId });
    }
    resume(agentId) {
        return this.request("agent:resume", { agentId });
    }
    terminate(agentId, options = {}) {
        return this.request("agent:terminate", { agentId, ...(options.force ? { force: true } : {}) });
    }
    /** Answer an agent's `permission_request` event (its `requestId`): allow or deny the
     * tool use; a deny may say why. */
    answerPermission(agentId, requestId, decision, message) {
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
    listAgents(payload = {}) {
        return this.request("agent:list", payload);
    }
    /** Every page of `agent:list` for `payload`, in order (`for await … of`); each page is
     * read afresh, with its own `position`. */
    async *agentPages(payload = {}) {
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
    async listAllAgents(payload = {}) {
        const agents = new Map();
        let position;
        for await (const page of this.agentPages(payload)) {
            position ??= page.position;
            for (const agent of page.agents)
                agents.set(agent.agentId, agent);
        }
        return { agents: [...agents.values()], position: position };
    }
    /** One page of an agent's durable transcript (`agent:history`), oldest event first, the
     * events exactly as a subscriber got them. `after` a page's `next` reads the newer page,
     * `before` its `prev` the older one; `missed` counts events the transcript no longer
     * keeps. Subscribe `since` the page's `position` to go on live. */
    async agentHistory(payload) {
        const page = await this.request("agent:history", payload);
        // The gateway sends an absent `next`/`prev` as null (the schema says absent): as absent,
        // or a page loop would send `before: null` — read from the oldest — forever.
        if (page.next == null)
            delete page.next;
        if (page.prev == null)
            delete page.prev;
        return page;
    }
    /** Pages of an agent's history (`for await … of`): `backward` from the newest page (or
     * from `payload.before`) to the oldest kept, following `prev`; `forward` from the oldest
     * (or from `payload.after`) to the newest, following `next`. The first page's `position`
     * is where a subscription goes on live. */
    async *historyPages(payload, direction = "backward") {
        const { after, before, ...rest } = payload;
        const backward = direction === "backward";
        let cursor = backward ? (before ?? NEWEST) : after;
        for (;;) {
            const page = await this.agentHistory({ ...rest, ...(cursor === undefined ? {} : backward ? { before: cursor } : { after: cursor }) });
            yield page;
            cursor = backward ? page.prev : page.next;
            if (cursor === undefined)
                return;
        }
    }
    /** With `agentId`: that agent's output, status and errors (topic `agent:{id}`); without:
     * lifecycle events of every agent you may see (topic `agents`). With `since` (a position
     * of that topic: an `agent:list` or `agent:history` result's `position`) the subscription
     * first gets the retained events after it, then live ones: each event after `since`
     * exactly once (`sub.recovered` says whether the catch-up was complete). */
    subscribeAgent(options = {}) {
        return this.subscribeKind("agent", options.agentId, options.filters ?? [], options);
    }
    /** `metrics:update` events (topic `metrics`); `filters`: `system`, `agents`. */
    subscribeMetrics(options = {}) {
        return this.subscribeKind("metrics", undefined, options.filters ?? [], options);
    }
    /** `system:alert` events (topic `logs`); `filters`: levels and/or categories. */
    subscribeLogs(options = {}) {
        return this.subscribeKind("logs", undefined, options.filters ?? [], options);
    }
    /** Stop a subscription (its listeners get nothing more). */
    async unsubscribe(subscriptionId) {
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
    async refreshToken(token) {
        const fresh = token ?? (await this.getToken());
        const result = await this.requestOnce("auth", { token: fresh, clientId: this.clientId }, undefined, this.options.requestTimeoutMs);
        if (typeof this.token === "string")
            this.token = fresh;
        this.scheduleRefresh(result.expiresAt);
        this.notify({ state: "token-refreshed", expiresAt: result.expiresAt });
        return result;
    }
    // -- internals: requests ----------------------------------------------------------------
    async requestOnce(type, payload, onSuccess, ackTimeoutMs) {
        const start = Date.now();
        const deadline = start + this.options.requestTimeoutMs;
        const id = newId();
        const text = JSON.stringify(this.message(id, type, payload));
        const size = new TextEncoder().encode(text).length;
        if (size > MAX_MESSAGE_BYTES) {
            throw new DashboardError(ErrorCode.INVALID_MESSAGE, `${type} is ${size} bytes; the gateway accepts at most ${MAX_MESSAGE_BYTES} (split it)`, id);
        }
        const ws = await this.waitConnected(deadline, type);
        return new Promise((resolve, reject) => {
            // The wait for a connection counts against the ack's time.
            const timer = ackTimeoutMs === null
                ? undefined
                : setTimeout(() => {
                    this.pending.delete(id);
                    reject(new RequestTimeoutError(`no ack for ${type} within ${ackTimeoutMs} ms`, id));
                }, Math.max(start + ackTimeoutMs - Date.now(), 0));
            this.pending.set(id, {
                type,
                resolve: resolve,
                reject,
                timer,
                onSuccess: onSuccess,
            });
            try {
                ws.send(text);
            }
            catch {
                this.settle(id, new ConnectionLostError(`the connection closed before ${type} could be sent`, id));
            }
        });
    }
    message(id, type, payload) {
        if (type === "auth" && this.options.authShape === "flat") {
            const { token, clientId, sessionId } = payload;
            return { id, type, timestamp: Date.now(), token, clientId, ...(sessionId !== undefined ? { sessionId } : {}) };
        }
        return { id, type, timestamp: Date.now(), payload };
    }
    waitConnected(deadline, type) {
        return new Promise((resolve, reject) => {
            const check = () => {
                if (this.failure !== undefined)
                    reject(this.failure);
                else if (this.closing || !this.started)
                    reject(new ConnectionLostError("the client is not connected"));
                else if (this.ws !== undefined)
                    resolve(this.ws);
                else
                    return false;
                return true;
            };
            if (check())
                return;
            const timer = setTimeout(() => {
                this.connectWaiters = this.connectWaiters.filter((w) => w !== waiter);
                reject(new RequestTimeoutError(`not reconnected within ${this.options.requestTimeoutMs} ms; ${type} not sent`));
            }, Math.max(deadline - Date.now(), 0));
            const waiter = () => {
                if (check())
                    clearTimeout(timer);
                else
                    this.connectWaiters.push(waiter);
            };
            this.connectWaiters.push(waiter);
        });
    }
    wakeWaiters() {
        const waiters = this.connectWaiters;
        this.connectWaiters = [];
        for (const waiter of waiters)
            waiter();
    }
    settle(id, outcome) {
        const pending = this.pending.get(id);
        if (pending === undefined)
            return;
        this.pending.delete(id);
        clearTimeout(pending.timer);
        if (outcome instanceof DashboardError) {
            pending.reject(outcome);
        }
        else {
            pending.onSuccess?.(outcome.result);
            pending.resolve(outcome.result);
        }
    }
    failPending(error) {
        for (const [id, pending] of [...this.pending]) {
            const err = error instanceof ConnectionLostError && !this.closing
                ? new ConnectionLostError(`the connection dropped before the ack of ${pending.type} arrived; it may or may not have been carried out`, id)
                : error;
            this.settle(id, err);
        }
    }
    // -- internals: subscriptions -----------------------------------------------------------
    async subscribeKind(kind, agentId, filters, options, existing) {
        let made;
        // A re-made subscription (new session) gets the position of the newest event received on
        // its topic from `resubscribe`, never its first `since`: what came after that was
        // delivered already, and would be again.
        const since = options.since;
        const payload = {
            ...(agentId !== undefined ? { agentId } : {}),
            ...(filters.length > 0 ? { filters: [...filters] } : {}),
            ...(since !== undefined ? { since } : {}),
        };
        await this.request(`subscribe:${kind}`, payload, (result) => {
            const topic = result.topic || expectedTopic(kind, agentId);
            if (existing !== undefined) {
                this.subs.delete(existing.id);
                existing.renew(result.subscriptionId, topic);
                made = existing;
            }
            else {
                made = new Subscription(this, result.subscriptionId, topic, kind, agentId, filters, this.options.queueSize);
                if (options.onEvent !== undefined)
                    made.on(options.onEvent);
            }
            made.missed = result.missed;
            made.recovered = result.recovered;
            this.subs.set(made.id, made);
        });
        if (since !== undefined && made?.recovered === false) {
            this.notify({ state: "missed", reason: "not-recovered", topic: made.topic, ...(made.missed !== undefined ? { missed: made.missed } : {}) });
        }
        return made;
    }
    /** After a reconnection on a new session (the old one was gone): subscribe again, each
     * from the newest event received on its topic, so what was published meanwhile is
     * replayed. A `missed` state event tells what could not be: `not-recovered` on a topic, or
     * `new-session` when a subscription had received nothing yet (no position to start from). */
    async resubscribe() {
        const positions = this.positions;
        let unknown = false;
        for (const sub of [...this.subs.values()]) {
            const since = positions[sub.topic];
            unknown ||= since === undefined;
            try {
                await this.subscribeKind(sub.kind, sub.agentId, sub.filters, since !== undefined ? { since } : {}, sub);
            }
            catch (e) {
                if (e instanceof ConnectionLostError)
                    return; // the next reconnection tries again
                this.subs.delete(sub.id);
                sub.end();
            }
        }
        if (unknown)
            this.notify({ state: "missed", reason: "new-session" });
    }
    endAll() {
        for (const sub of this.subs.values())
            sub.end();
    }
    // -- internals: connection --------------------------------------------------------------
    async getToken() {
        return typeof this.token === "string" ? this.token : String(await this.token());
    }
    authPayload(token) {
        if (this.sessionId === undefined)
            return { token, clientId: this.clientId };
        const current = this.positions;
        // The server takes at most MAX_POSITIONS; the subscribed topics matter most.
        const wanted = [...this.subs.values()].map((s) => s.topic).filter((t) => t in current);
        const topics = [...new Set([...wanted, ...Object.keys(current)])].slice(0, MAX_POSITIONS);
        const positions = Object.fromEntries(topics.map((t) => [t, current[t]]));
        return {
            token,
            clientId: this.clientId,
            sessionId: this.sessionId,
            ...(topics.length > 0 && this.options.authShape === "payload" ? { positions } : {}),
        };
    }
    /** One connection attempt: connect, `auth`, wait for `connection:status`. */
    async open() {
        let token;
        try {
            token = await this.getToken();
        }
        catch (e) {
            throw new ConnectionLostError(`the token provider failed: ${String(e)}`);
        }
        const ws = new this.Socket(this.url);
        const authId = newId();
        const status = await new Promise((resolve, reject) => {
            const fail = (error) => {
                clearTimeout(timer);
                detach(ws);
                ws.close();
                reject(error);
            };
            const timer = setTimeout(() => fail(new ConnectionLostError(`no answer to auth from ${this.url} within ${this.options.connectTimeoutMs} ms`)), this.options.connectTimeoutMs);
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
                }
                else if (msg?.type === "ack" && msg.payload.messageId === authId && !msg.payload.success) {
                    fail(ackError(msg.payload, "authentication failed"));
                }
            };
        });
        return status;
    }
    attach(ws, status, token) {
        this.ws = ws;
        this.status = status;
        this.sessionId = status.sessionId;
        ws.onmessage = (event) => this.onFrame(ws, event.data);
        ws.onclose = (event) => this.onClosed(ws, event.code, event.reason);
        this.armDeadTimer(ws);
        const expiresAt = tokenExpiresAt(token);
        if (expiresAt !== undefined)
            this.scheduleRefresh(expiresAt);
        this.wakeWaiters();
    }
    reportRecovery(status) {
        if (status.resumed && status.recovered === false) {
            this.notify({ state: "missed", reason: "not-recovered", missed: status.missed });
        }
    }
    onClosed(ws, code, reason) {
        if (ws !== this.ws)
            return;
        this.ws = undefined;
        detach(ws);
        clearTimeout(this.deadTimer);
        this.failPending(new ConnectionLostError("connection lost"));
        if (this.closing)
            return;
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
    terminalClose(code, reason) {
        if (code !== 1008)
            return undefined;
        const error = closeError(code, reason);
        if (error.code === ErrorCode.TOKEN_EXPIRED && typeof this.token !== "string")
            return undefined;
        return error;
    }
    async reconnectLoop(code, reason) {
        for (let attempt = 0; !this.closing;) {
            if (this.options.maxAttempts !== undefined && attempt >= this.options.maxAttempts) {
                this.giveUp(new ConnectionLostError(`gave up after ${attempt} reconnection attempts`));
                return;
            }
            const delayMs = backoffDelay(this.options.backoffMs, attempt, this.options.jitter, this.options.random);
            attempt += 1;
            this.notify({ state: "reconnecting", attempt, delayMs, code, reason });
            await this.sleep(delayMs);
            if (this.closing)
                return;
            this.notify({ state: "connecting", attempt });
            let status;
            try {
                status = await this.open();
            }
            catch (e) {
                const error = e instanceof DashboardError ? e : new ConnectionLostError(String(e));
                if (AUTH_CODES.has(error.code) && !(error.code === ErrorCode.TOKEN_EXPIRED && typeof this.token !== "string")) {
                    this.giveUp(error);
                    return;
                }
                continue;
            }
            if (this.closing)
                return;
            this.reconnects += 1;
            if (status.resumed) {
                this.notify({ state: "resumed", status });
                this.reportRecovery(status);
            }
            else {
                this.notify({ state: "open", status });
                if (this.subs.size > 0)
                    await this.resubscribe();
            }
            return;
        }
    }
    sleep(ms) {
        return new Promise((resolve) => {
            const wake = () => {
                this.sleepTimer = undefined;
                resolve();
            };
            this.sleepTimer = { timer: setTimeout(wake, ms), wake };
        });
    }
    giveUp(error) {
        this.failure = error;
        this.stopTimers();
        this.failPending(error);
        this.endAll();
        this.wakeWaiters();
        this.notify({ state: "failed", error });
    }
    stopTimers() {
        clearTimeout(this.deadTimer);
        clearTimeout(this.refreshTimer);
        if (this.sleepTimer !== undefined) {
            clearTimeout(this.sleepTimer.timer);
            this.sleepTimer.wake();
        }
    }
    armDeadTimer(ws) {
        clearTimeout(this.deadTimer);
        const interval = this.status?.heartbeatIntervalMs ?? 30_000;
        const after = this.options.deadAfterMs ?? 2.5 * interval + 1000;
        this.deadTimer = setTimeout(() => {
            // Nothing from the gateway (not even its heartbeat): the connection is dead. Closing
            // it cleanly could wait for a peer that is gone, so it is dropped here and now.
            if (ws !== this.ws)
                return;
            ws.close(4000, "no frame from the gateway");
            this.onClosed(ws, 1006, `nothing from the gateway for ${after} ms`);
        }, after);
    }
    scheduleRefresh(expiresAt) {
        clearTimeout(this.refreshTimer);
        this.refreshFor = undefined;
        if (typeof this.token === "string" || this.closing)
            return; // no way to get a new token
        this.refreshFor = expiresAt;
        const delay = Math.min(Math.max(expiresAt - this.options.refreshBeforeExpiryMs - Date.now(), 0), 2 ** 31 - 1);
        this.refreshTimer = setTimeout(() => {
            this.refreshToken().catch(() => {
                // Not refreshed (no connection, the provider failed): try again shortly while the
                // token is still valid; past its expiry the reconnect gets a fresh one anyway.
                if (Date.now() + 5000 < expiresAt)
                    this.scheduleRefresh(Math.min(expiresAt, Date.now() + 5000 + this.options.refreshBeforeExpiryMs));
            });
        }, delay);
    }
    // -- internals: reading -----------------------------------------------------------------
    onFrame(ws, data) {
        this.armDeadTimer(ws);
        const msg = parse(data);
        if (msg === undefined)
            return;
        switch (msg.type) {
            case "ack": {
                const p = msg.payload;
                this.settle(p.messageId, p.success ? { result: p.result ?? {} } : ackError(p, "request failed"));
                return;
            }
            case "ping":
                try {
                    ws.send(JSON.stringify({
                        id: newId(),
                        type: "pong",
                        timestamp: Date.now(),
                        payload: { timestamp: msg.payload.timestamp },
                        metadata: { correlationId: msg.id },
                    }));
                }
                catch {
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
                if (msg.type === "system:alert" &&
                    msg.payload.category === "security" &&
                    msg.payload.level === "warning" &&
                    msg.metadata?.topic === undefined &&
                    typeof this.token !== "string" &&
                    this.refreshFor === undefined) {
                    // The gateway's warning that this connection's token expires soon, and the token's
                    // own expiry could not be read (so no refresh is scheduled): refresh now. With a
                    // known expiry the timer decides (the warning may come earlier than
                    // refreshBeforeExpiryMs, for every new short-lived token again).
                    this.refreshToken().catch(() => undefined);
                }
                this.route(msg);
        }
    }
    onGap(notice) {
        const p = notice.payload;
        const window = this.topics.get(p.topic) ?? new SeenWindow();
        this.topics.set(p.topic, window);
        window.reset(p.position);
        const named = new Set(p.subscriptionIds);
        for (const sub of this.subs.values()) {
            if (sub.topic === p.topic && (named.size === 0 || named.has(sub.id)))
                sub.gap(notice);
        }
        this.notify({ state: "missed", reason: p.reason, topic: p.topic, ...(p.missed !== undefined ? { missed: p.missed } : {}) });
        for (const listener of this.eventListeners)
            listener(notice);
    }
    route(event) {
        const topic = topicOf(event);
        const pos = positionOf(event);
        let window = this.topics.get(topic);
        if (pos !== undefined && window === undefined) {
            window = new SeenWindow();
            this.topics.set(topic, window);
        }
        const isNew = pos === undefined || window.add(...pos);
        for (const sub of this.subs.values()) {
            if (sub.topic === topic)
                sub.offer(event);
        }
        if (isNew && this.eventListeners.size > 0 && this.firstCopy(event.id)) {
            for (const listener of this.eventListeners)
                listener(event);
        }
    }
    /** False for an event id seen recently (the same agent event on `agent:{id}` and `agents`). */
    firstCopy(id) {
        if (this.eventIds.has(id))
            return false;
        this.eventIds.add(id);
        if (this.eventIds.size > 2048) {
            const oldest = this.eventIds.values().next().value;
            this.eventIds.delete(oldest);
        }
        return true;
    }
    notify(event) {
        for (const listener of this.stateListeners) {
            try {
                listener(event);
            }
            catch (e) {
                console.error("teamdash: a state listener failed", e); // must not break the connection
            }
        }
    }
}
function detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = null;
    // Not null: Node's `ws` throws an "error" event nobody listens to (e.g. closing a socket
    // that is still connecting).
    ws.onerror = () => undefined;
}
/** A server frame as a typed message, or undefined: one odd frame (say, from a newer
 * server) must not break the connection. */
function parse(data) {
    if (typeof data !== "string")
        return undefined; // the protocol uses text frames only
    try {
        const msg = JSON.parse(data);
        return typeof msg === "object" && msg !== null && "type" in msg ? msg : undefined;
    }
    catch {
        return undefined;
    }
}
function ackError(p, fallback) {
    return new DashboardError(p.code ?? ErrorCode.INTERNAL_ERROR, p.error ?? fallback, p.messageId);
}
