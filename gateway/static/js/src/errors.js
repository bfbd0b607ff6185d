import { ErrorCode } from "./protocol.js";
/**
 * A request or the connection failed. `code` is the spec's numeric {@link ErrorCode}: the
 * one in the server's `ack`, or one chosen by the client for a local failure.
 */
export class DashboardError extends Error {
    code;
    /** The `id` of the request this error answers, when there is one. */
    messageId;
    constructor(code, message, messageId) {
        super(message);
        this.name = "DashboardError";
        this.code = code;
        this.messageId = messageId;
    }
    /** The code's name, e.g. `AGENT_NOT_FOUND`. */
    get codeName() {
        return ErrorCode[this.code] ?? String(this.code);
    }
}
/**
 * The connection is gone (or could not be opened) and this request got no ack
 * (SERVICE_UNAVAILABLE). A request already sent may or may not have been carried out: it is
 * not re-sent automatically.
 */
export class ConnectionLostError extends DashboardError {
    constructor(message, messageId) {
        super(ErrorCode.SERVICE_UNAVAILABLE, message, messageId);
        this.name = "ConnectionLostError";
    }
}
/** No ack within `requestTimeoutMs` (SERVICE_UNAVAILABLE). */
export class RequestTimeoutError extends DashboardError {
    constructor(message, messageId) {
        super(ErrorCode.SERVICE_UNAVAILABLE, message, messageId);
        this.name = "RequestTimeoutError";
    }
}
/** Errors of an `auth` that reconnecting with the same credentials cannot fix. */
export const AUTH_CODES = new Set([
    ErrorCode.AUTH_FAILED,
    ErrorCode.TOKEN_EXPIRED,
    ErrorCode.INSUFFICIENT_PERMISSIONS,
]);
/**
 * The error a close stands for: 1008 names the ErrorCode in its reason (`TOKEN_EXPIRED`,
 * `AUTH_FAILED: …`); any other close is a lost connection.
 */
export function closeError(code, reason) {
    if (code === 1008) {
        const name = reason.split(":", 1)[0]?.trim() ?? "";
        const known = ErrorCode[name];
        return new DashboardError(typeof known === "number" ? known : ErrorCode.AUTH_FAILED, `the gateway closed the connection (1008 ${reason})`.trim());
    }
    return new ConnectionLostError(`the gateway closed the connection (${code} ${reason})`.trim());
}
