/** The spec's reconnection delays (ms); the last one repeats. */
export const DEFAULT_BACKOFF_MS = [1000, 2000, 4000, 8000, 16000, 30000];
/** Offsets remembered per topic for duplicate detection (the server replays at most 1000). */
export const SEEN_WINDOW = 2048;
/**
 * The delay before reconnection attempt `attempt` (0-based): `backoffMs[attempt]` (the last
 * value repeats) times a random factor in `[1 - jitter, 1 + jitter]`.
 */
export function backoffDelay(backoffMs, attempt, jitter, random = Math.random) {
    if (backoffMs.length === 0)
        throw new RangeError("backoff needs at least one delay");
    const base = backoffMs[Math.min(attempt, backoffMs.length - 1)];
    return Math.max(0, base * (1 + jitter * (2 * random() - 1)));
}
/**
 * Which offsets of one topic were received, to drop duplicates (docs/protocol.md, "Positions
 * and duplicates"): an event is new when its `(epoch, offset)` was not seen, whatever the
 * highest offset — a new subscription's replay legitimately delivers offsets below ones
 * already received. Offsets more than `size` below the highest count as seen (the server
 * never replays that far back). A new epoch starts a new history; events of an epoch that
 * was left are dropped.
 */
export class SeenWindow {
    size;
    epoch;
    last = 0;
    seen = new Set();
    oldEpochs = new Set();
    constructor(size = SEEN_WINDOW) {
        this.size = size;
    }
    /** Record the event; true if it had not been seen before. */
    add(epoch, offset) {
        if (epoch !== this.epoch) {
            if (this.oldEpochs.has(epoch))
                return false;
            if (this.epoch !== undefined)
                this.oldEpochs.add(this.epoch);
            this.epoch = epoch;
            this.last = 0;
            this.seen.clear();
        }
        if (this.seen.has(offset) || offset <= this.last - this.size)
            return false;
        this.seen.add(offset);
        if (offset > this.last) {
            this.last = offset;
            if (this.seen.size > 2 * this.size) {
                const floor = this.last - this.size;
                this.seen = new Set([...this.seen].filter((o) => o > floor));
            }
        }
        return true;
    }
    /** A gap: delivery goes on after `position` (a new epoch becomes the topic's current one). */
    reset(position) {
        const { epoch, offset } = position;
        if (epoch === undefined)
            return;
        if (epoch !== this.epoch) {
            if (this.epoch !== undefined)
                this.oldEpochs.add(this.epoch);
            this.oldEpochs.delete(epoch);
            this.epoch = epoch;
            this.last = offset;
            this.seen.clear();
        }
        else if (offset > this.last) {
            this.last = offset;
        }
    }
    /** The position of the newest event received (what a resume continues after). */
    get position() {
        if (this.epoch === undefined || this.last <= 0)
            return undefined;
        return { offset: this.last, epoch: this.epoch };
    }
}
/** The filter name of an agent event: its output stream, or `status`/`error`/`created`. */
export function eventKind(event) {
    switch (event.type) {
        case "agent:output":
            return event.payload.stream;
        case "agent:status":
            return "status";
        case "agent:error":
            return "error";
        case "agent:created":
            return "created";
        default:
            return event.type;
    }
}
const LEVELS = new Set(["info", "warning", "error", "critical"]);
/**
 * The server's filter rules (docs/protocol.md, "Subscriptions and filters"), applied on the
 * client to route an event to the subscriptions that asked for it (the server sends an
 * event once per connection, not once per subscription).
 */
export function filterAccepts(kind, filters, event) {
    const wanted = new Set(filters);
    if (kind === "agent") {
        if (!event.type.startsWith("agent:"))
            return false;
        return wanted.size === 0 || wanted.has(eventKind(event));
    }
    if (kind === "metrics")
        return event.type === "metrics:update";
    if (event.type !== "system:alert")
        return false;
    const levels = [...wanted].filter((f) => LEVELS.has(f));
    const categories = [...wanted].filter((f) => !LEVELS.has(f));
    if (levels.length > 0 && !levels.includes(event.payload.level))
        return false;
    return categories.length === 0 || categories.includes(event.payload.category);
}
/** The update with only the sections a `subscribe:metrics` filter asked for. */
export function metricsSections(event, filters) {
    const keep = new Set(filters);
    if (keep.size === 0 || keep.size === 2)
        return event;
    const payload = { ...event.payload };
    if (!keep.has("system"))
        delete payload.system;
    if (!keep.has("agents"))
        delete payload.agents;
    return { ...event, payload };
}
/** The event's topic: `metadata.topic`, or derived from its type. */
export function topicOf(event) {
    if (event.type === "subscription:gap")
        return event.payload.topic;
    if (event.metadata?.topic !== undefined)
        return event.metadata.topic;
    if (event.type === "metrics:update")
        return "metrics";
    if (event.type === "system:alert")
        return "logs";
    return `agent:${event.payload.agentId}`;
}
/** `[epoch, offset]` of a topic event, undefined when the server sent no position. */
export function positionOf(event) {
    const meta = event.metadata;
    if (meta?.epoch === undefined || meta.offset === undefined)
        return undefined;
    return [meta.epoch, meta.offset];
}
/** The topic a subscription of `kind` follows. */
export function expectedTopic(kind, agentId) {
    if (kind === "agent")
        return agentId !== undefined ? `agent:${agentId}` : "agents";
    return kind;
}
/**
 * The `exp` of a JWT in Unix ms, or undefined when it cannot be read. Not a verification:
 * only to refresh the token before the gateway ends the connection at its expiry.
 */
export function tokenExpiresAt(token) {
    const part = token.split(".")[1];
    if (part === undefined)
        return undefined;
    try {
        const base64 = part.replaceAll("-", "+").replaceAll("_", "/");
        const claims = JSON.parse(atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4)));
        const exp = claims.exp;
        return typeof exp === "number" ? exp * 1000 : undefined;
    }
    catch {
        return undefined;
    }
}
/** A fresh message id (UUID v4 text). */
export function newId() {
    const c = globalThis.crypto;
    if (c?.randomUUID !== undefined)
        return c.randomUUID();
    // crypto.randomUUID exists only in secure contexts (https, localhost): fall back.
    const bytes = new Uint8Array(16);
    if (c?.getRandomValues !== undefined)
        c.getRandomValues(bytes);
    else
        for (let i = 0; i < 16; i++)
            bytes[i] = Math.floor(Math.random() * 256);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
