// Generated from docs/protocol.schema.json by scripts/generate-types.mjs: do not edit.
// After a protocol change: `python -m shared.schema --write`, then `npm run generate`.
/** The protocol version these types describe. */
export const PROTOCOL_VERSION = "1.0.0";
/**
 * Numeric error codes: the spec's `ErrorCode` enum, plus the agent errors 2005-2009
 * (an addition: how an agent's turn failed, which no spec code says truthfully).
 *
 * | code | name | group |
 * |---|---|---|
 * | 1001 | AUTH_FAILED | Authentication |
 * | 1002 | TOKEN_EXPIRED | Authentication |
 * | 1003 | INSUFFICIENT_PERMISSIONS | Authentication |
 * | 2001 | AGENT_NOT_FOUND | Agent |
 * | 2002 | AGENT_SPAWN_FAILED | Agent |
 * | 2003 | AGENT_LIMIT_EXCEEDED | Agent |
 * | 2004 | AGENT_COMMAND_TIMEOUT | Agent |
 * | 2005 | AGENT_TURN_FAILED | Agent |
 * | 2006 | AGENT_AUTH_REQUIRED | Agent |
 * | 2007 | AGENT_RATE_LIMITED | Agent |
 * | 2008 | AGENT_API_UNREACHABLE | Agent |
 * | 2009 | AGENT_API_ERROR | Agent |
 * | 3001 | RESOURCE_EXHAUSTED | System |
 * | 3002 | SERVICE_UNAVAILABLE | System |
 * | 3003 | INTERNAL_ERROR | System |
 * | 4001 | INVALID_MESSAGE | Protocol |
 * | 4002 | UNSUPPORTED_TYPE | Protocol |
 * | 4003 | RATE_LIMIT_EXCEEDED | Protocol |
 */
export var ErrorCode;
(function (ErrorCode) {
    ErrorCode[ErrorCode["AUTH_FAILED"] = 1001] = "AUTH_FAILED";
    ErrorCode[ErrorCode["TOKEN_EXPIRED"] = 1002] = "TOKEN_EXPIRED";
    ErrorCode[ErrorCode["INSUFFICIENT_PERMISSIONS"] = 1003] = "INSUFFICIENT_PERMISSIONS";
    ErrorCode[ErrorCode["AGENT_NOT_FOUND"] = 2001] = "AGENT_NOT_FOUND";
    ErrorCode[ErrorCode["AGENT_SPAWN_FAILED"] = 2002] = "AGENT_SPAWN_FAILED";
    ErrorCode[ErrorCode["AGENT_LIMIT_EXCEEDED"] = 2003] = "AGENT_LIMIT_EXCEEDED";
    ErrorCode[ErrorCode["AGENT_COMMAND_TIMEOUT"] = 2004] = "AGENT_COMMAND_TIMEOUT";
    ErrorCode[ErrorCode["AGENT_TURN_FAILED"] = 2005] = "AGENT_TURN_FAILED";
    ErrorCode[ErrorCode["AGENT_AUTH_REQUIRED"] = 2006] = "AGENT_AUTH_REQUIRED";
    ErrorCode[ErrorCode["AGENT_RATE_LIMITED"] = 2007] = "AGENT_RATE_LIMITED";
    ErrorCode[ErrorCode["AGENT_API_UNREACHABLE"] = 2008] = "AGENT_API_UNREACHABLE";
    ErrorCode[ErrorCode["AGENT_API_ERROR"] = 2009] = "AGENT_API_ERROR";
    ErrorCode[ErrorCode["RESOURCE_EXHAUSTED"] = 3001] = "RESOURCE_EXHAUSTED";
    ErrorCode[ErrorCode["SERVICE_UNAVAILABLE"] = 3002] = "SERVICE_UNAVAILABLE";
    ErrorCode[ErrorCode["INTERNAL_ERROR"] = 3003] = "INTERNAL_ERROR";
    ErrorCode[ErrorCode["INVALID_MESSAGE"] = 4001] = "INVALID_MESSAGE";
    ErrorCode[ErrorCode["UNSUPPORTED_TYPE"] = 4002] = "UNSUPPORTED_TYPE";
    ErrorCode[ErrorCode["RATE_LIMIT_EXCEEDED"] = 4003] = "RATE_LIMIT_EXCEEDED";
})(ErrorCode || (ErrorCode = {}));
