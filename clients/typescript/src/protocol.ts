// Generated from docs/protocol.schema.json by scripts/generate-types.mjs: do not edit.
// After a protocol change: `python -m shared.schema --write`, then `npm run generate`.

/** The protocol version these types describe. */
export const PROTOCOL_VERSION = "1.0.0";

/**
 * Team Dashboard WebSocket protocol, version 1.0.0. Generated from shared/protocol.py by `python -m shared.schema --write`; do not edit. A frame is one JSON object: a ClientMessage (client → server) or a ServerMessage (server → client). Optional fields are left out, never null; a server message always has the fields its definition requires. Human-readable guide: docs/protocol.md.
 */
export type ProtocolMessage = ClientMessage | ServerMessage;

export interface AckMessage {
  id: string;
  metadata?: Metadata;
  payload: AckPayload;
  timestamp: number;
  type: "ack";
}

export interface AckPayload {
  code?: ErrorCode;
  error?: string;
  messageId: string;
  /**
   * On success: the request's result (RequestResults names which).
   */
  result?: AgentCommandResult | AgentControlResult | AgentHistoryResult | AgentListResult | AgentPermissionResult | CreateAgentResult | SubscribeResult | TokenRefreshResult | UnsubscribeResult;
  success: boolean;
}

export interface AgentCommandMessage {
  id?: string;
  metadata?: Metadata;
  payload: AgentCommandPayload;
  timestamp?: number;
  type: "agent:command";
}

export interface AgentCommandPayload {
  agentId: string;
  command: string;
  interactive?: boolean;
  timeout?: number;
  wait?: "delivered" | "completed";
}

export interface AgentCommandResult {
  agentId: string;
  timeoutEnforced?: boolean;
  turn?: TurnEndEvent;
}

export interface AgentControlMessage {
  id?: string;
  metadata?: Metadata;
  payload: AgentRef;
  timestamp?: number;
  type: "agent:pause" | "agent:resume";
}

/**
 * The result of `agent:pause`, `agent:resume` and `agent:terminate`.
 */
export interface AgentControlResult {
  agentId: string;
}

export interface AgentCreatedMessage {
  id: string;
  metadata?: Metadata;
  payload: AgentCreatedPayload;
  timestamp: number;
  type: "agent:created";
}

export interface AgentCreatedPayload {
  agentId: string;
  name: string;
  pid: number;
  startTime: number;
}

export interface AgentErrorDetail {
  code: string;
  errorCode?: number;
  message: string;
  stack?: string;
}

export interface AgentErrorMessage {
  id: string;
  metadata?: Metadata;
  payload: AgentErrorPayload;
  timestamp: number;
  type: "agent:error";
}

export interface AgentErrorPayload {
  agentId: string;
  error: AgentErrorDetail;
}

/**
 * A filter name of `subscribe:agent` (docs/protocol.md, Subscriptions and filters).
 */
export type AgentEventFilter = "stdout" | "stderr" | "status" | "error" | "created";

/**
 * `agent:history` (an addition to the spec): one page of an agent's durable
 * transcript, the same events a live subscriber got, with their positions.
 */
export interface AgentHistoryMessage {
  id?: string;
  metadata?: Metadata;
  payload: AgentHistoryPayload;
  timestamp?: number;
  type: "agent:history";
}

export interface AgentHistoryPayload {
  after?: number;
  agentId: string;
  before?: number;
  filters?: Array<"stdout" | "stderr" | "status" | "error" | "created">;
  limit?: number;
}

/**
 * One page of `agent:history`.
 */
export interface AgentHistoryResult {
  events: Array<AgentOutputMessage | AgentStatusMessage | AgentErrorMessage | AgentCreatedMessage>;
  missed: number;
  next?: number;
  position: StreamPosition;
  prev?: number;
}

/**
 * One agent of `agent:list` (the spec's `AgentInfo`, from the agent registry).
 */
export interface AgentInfo {
  agentId: string;
  endTime?: number;
  exitCode?: number;
  lastActivity?: number;
  limits: AgentLimits;
  model: string;
  name: string;
  owner: string;
  pid?: number;
  reason?: string;
  runner: string;
  signal?: string;
  startTime?: number;
  status: "starting" | "running" | "paused" | "stopping" | "stopped" | "crashed";
  uptime?: number;
  usage?: AgentUsage;
  workspace?: string;
}

export interface AgentLimits {
  cpu?: number;
  memory?: number;
}

/**
 * `agent:list` (an addition to the spec): the agents the caller may see, paged,
 * with the position of the `agents` topic the list reflects.
 */
export interface AgentListMessage {
  id?: string;
  metadata?: Metadata;
  payload?: AgentListPayload;
  timestamp?: number;
  type: "agent:list";
}

export interface AgentListPayload {
  after?: string;
  includeEnded?: boolean;
  limit?: number;
  owner?: string;
  status?: Array<"starting" | "running" | "paused" | "stopping" | "stopped" | "crashed">;
}

export interface AgentListResult {
  agents: AgentInfo[];
  next?: string;
  position: StreamPosition;
  total: number;
}

export interface AgentMetrics {
  agentId: string;
  /**
   * Percent of one core (can exceed 100 on several cores).
   */
  cpu: number;
  /**
   * Resident bytes of the agent's whole process tree.
   */
  memory: number;
  /**
   * The user who created the agent. An operator's updates list only their own agents (unless the gateway lets operators see all agents).
   */
  owner?: string;
  threads: number;
}

export interface AgentOutputMessage {
  id: string;
  metadata?: Metadata;
  payload: AgentOutputPayload;
  timestamp: number;
  type: "agent:output";
}

export interface AgentOutputPayload {
  agentId: string;
  data: string;
  event?: TextEvent | SessionEvent | ToolCallEvent | ToolResultEvent | TurnEndEvent | RetryEvent | PermissionRequestEvent | PermissionResolvedEvent | InputRequestEvent | NoticeEvent;
  raw?: string;
  rawTruncated?: boolean;
  sequence: number;
  stream: "stdout" | "stderr";
  timestamp: number;
}

/**
 * `agent:permission`: answer a `permission_request` (an addition to the spec);
 * the owner (operator) or an admin only.
 */
export interface AgentPermissionMessage {
  id?: string;
  metadata?: Metadata;
  payload: AgentPermissionPayload;
  timestamp?: number;
  type: "agent:permission";
}

export interface AgentPermissionPayload {
  agentId: string;
  decision: "allow" | "deny";
  message?: string;
  requestId: string;
}

/**
 * The result of `agent:permission`: the answer reached the agent.
 */
export interface AgentPermissionResult {
  agentId: string;
  tool: string;
}

/**
 * `agent:create` `payload.permissions`: the CLI's permission mode and the tools it
 * may use without asking. Each value must be in the model's operator-set allow-list
 * (`allowed_permission_modes` / `allowable_tools` in the model configuration), else
 * the create fails with AGENT_SPAWN_FAILED.
 */
export interface AgentPermissions {
  allowedTools?: string[];
  mode?: string;
}

export interface AgentRef {
  agentId: string;
}

export interface AgentStatusDetails {
  exitCode?: number;
  lastActivity?: number;
  pid?: number;
  reason?: string;
  runnerId?: string;
  signal?: string;
  /**
   * Milliseconds since the agent started.
   */
  uptime?: number;
}

export interface AgentStatusMessage {
  id: string;
  metadata?: Metadata;
  payload: AgentStatusPayload;
  timestamp: number;
  type: "agent:status";
}

export interface AgentStatusPayload {
  agentId: string;
  details?: AgentStatusDetails;
  status: "starting" | "running" | "paused" | "stopping" | "stopped" | "crashed";
}

/**
 * An agent's latest resource sample (its runner samples every
 * `TEAMDASH_STATS_INTERVAL_S`).
 */
export interface AgentUsage {
  cpu: number;
  memory: number;
  sampledAt: number;
  threads: number;
}

/**
 * `auth`: must be the first message, within 5 s of connecting. Both shapes of the spec
 * are accepted: `{type, token, clientId}` and `{type, payload: {token, clientId}}`; after
 * parsing, `payload` always holds the credentials.
 */
export type AuthMessage = AuthMessageWithPayload | AuthMessageFlat;

/**
 * `auth` with the credentials at the top level.
 */
export interface AuthMessageFlat {
  clientId: string;
  id?: string;
  metadata?: Metadata;
  sessionId?: string;
  timestamp?: number;
  token: string;
  type: "auth";
}

/**
 * `auth` with the credentials in `payload` (the only shape for `positions`).
 */
export interface AuthMessageWithPayload {
  id?: string;
  metadata?: Metadata;
  payload: AuthPayload;
  timestamp?: number;
  type: "auth";
}

export interface AuthPayload {
  clientId: string;
  positions?: { [key: string]: StreamPosition };
  sessionId?: string;
  token: string;
}

/**
 * `ping` / `pong`, in both directions.
 */
export interface ClientHeartbeatMessage {
  id?: string;
  metadata?: Metadata;
  payload?: ClientHeartbeatPayload;
  timestamp?: number;
  type: "ping" | "pong";
}

export interface ClientHeartbeatPayload {
  timestamp?: number;
}

/**
 * Every message a client may send (client → server).
 */
export type ClientMessage = AuthMessage | CreateAgentMessage | AgentCommandMessage | TerminateAgentMessage | AgentControlMessage | SubscribeAgentMessage | SubscribeMetricsMessage | SubscribeLogsMessage | UnsubscribeMessage | ClientHeartbeatMessage | AgentPermissionMessage | AgentListMessage | AgentHistoryMessage;

export interface ConnectionStatusMessage {
  id: string;
  metadata?: Metadata;
  payload: ConnectionStatusPayload;
  timestamp: number;
  type: "connection:status";
}

export interface ConnectionStatusPayload {
  gatewayId: string;
  heartbeatIntervalMs: number;
  missed: number;
  protocolVersion: string;
  recovered?: boolean;
  replayed: number;
  resumed: boolean;
  roles?: string[];
  sessionId: string;
  status: "authenticated";
  subscriptions?: RestoredSubscription[];
  userId: string;
}

export interface CpuMetrics {
  cores: number;
  /**
   * Degrees Celsius.
   */
  temperature?: number;
  /**
   * Percent of all cores, 0-100.
   */
  usage: number;
}

export interface CreateAgentMessage {
  id?: string;
  metadata?: Metadata;
  payload: CreateAgentPayload;
  timestamp?: number;
  type: "agent:create";
}

export interface CreateAgentPayload {
  environment?: { [key: string]: string };
  model: string;
  name: string;
  permissions?: AgentPermissions;
  resourceLimits?: ResourceLimits;
  workspace: string;
}

export interface CreateAgentResult {
  agentId: string;
  pid: number;
}

export interface DiskMetrics {
  percent: number;
  total: number;
  used: number;
}

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
export enum ErrorCode {
  AUTH_FAILED = 1001,
  TOKEN_EXPIRED = 1002,
  INSUFFICIENT_PERMISSIONS = 1003,
  AGENT_NOT_FOUND = 2001,
  AGENT_SPAWN_FAILED = 2002,
  AGENT_LIMIT_EXCEEDED = 2003,
  AGENT_COMMAND_TIMEOUT = 2004,
  AGENT_TURN_FAILED = 2005,
  AGENT_AUTH_REQUIRED = 2006,
  AGENT_RATE_LIMITED = 2007,
  AGENT_API_UNREACHABLE = 2008,
  AGENT_API_ERROR = 2009,
  RESOURCE_EXHAUSTED = 3001,
  SERVICE_UNAVAILABLE = 3002,
  INTERNAL_ERROR = 3003,
  INVALID_MESSAGE = 4001,
  UNSUPPORTED_TYPE = 4002,
  RATE_LIMIT_EXCEEDED = 4003,
}

/**
 * `ping` / `pong`, in both directions.
 */
export interface HeartbeatMessage {
  id: string;
  metadata?: Metadata;
  payload: HeartbeatPayload;
  timestamp: number;
  type: "ping" | "pong";
}

export interface HeartbeatPayload {
  timestamp: number;
}

/**
 * A terminal tool printed a prompt and waits for a reply: answer with an
 * `agent:command` (its text is typed as the reply).
 */
export interface InputRequestEvent {
  kind: "input_request";
  prompt: string;
}

/**
 * A filter name of `subscribe:logs` (docs/protocol.md, Subscriptions and filters).
 */
export type LogsFilter = "info" | "warning" | "error" | "critical" | "resource" | "performance" | "security" | "agent";

export interface MemoryMetrics {
  available: number;
  percent: number;
  total: number;
  used: number;
}

/**
 * Envelope metadata. `topic`, `offset` and `epoch` are set by the server on every
 * event it delivers from a topic: together they are the event's position, which a client
 * sends back (through its session) to resume exactly where it left off.
 */
export interface Metadata {
  agentId?: string;
  correlationId?: string;
  epoch?: string;
  offset?: number;
  priority?: "low" | "normal" | "high";
  topic?: string;
}

/**
 * A filter name of `subscribe:metrics` (docs/protocol.md, Subscriptions and filters).
 */
export type MetricsFilter = "system" | "agents";

export interface MetricsUpdateMessage {
  id: string;
  metadata?: Metadata;
  payload: MetricsUpdatePayload;
  timestamp: number;
  type: "metrics:update";
}

export interface MetricsUpdatePayload {
  agents?: AgentMetrics[];
  system?: SystemMetrics;
}

export interface NetworkMetrics {
  bytesIn: number;
  bytesInPerSec?: number;
  bytesOut: number;
  bytesOutPerSec?: number;
  packetsIn: number;
  packetsOut: number;
}

/**
 * Anything else the CLI reported that a person may want to see (`data`), or a line
 * the driver does not know (then `data` is empty and `raw` holds it).
 */
export interface NoticeEvent {
  kind: "notice";
}

/**
 * The agent waits for a decision: answer with `agent:permission` naming
 * `requestId`. Until then the agent's turn does not go on.
 */
export interface PermissionRequestEvent {
  kind: "permission_request";
  requestId: string;
  summary: string;
  tool: string;
}

/**
 * A permission request was answered (`allow` / `deny`) or withdrawn by the CLI
 * (`cancelled`): a frontend removes its prompt.
 */
export interface PermissionResolvedEvent {
  decision: "allow" | "deny" | "cancelled";
  kind: "permission_resolved";
  requestId: string;
}

/**
 * Not a message: for each request type, the definition of its ack's `payload.result` on success.
 */
export interface RequestResults {
  "agent:command": AgentCommandResult;
  "agent:create": CreateAgentResult;
  "agent:history": AgentHistoryResult;
  "agent:list": AgentListResult;
  "agent:pause": AgentControlResult;
  "agent:permission": AgentPermissionResult;
  "agent:resume": AgentControlResult;
  "agent:terminate": AgentControlResult;
  auth: TokenRefreshResult;
  "subscribe:agent": SubscribeResult;
  "subscribe:logs": SubscribeResult;
  "subscribe:metrics": SubscribeResult;
  unsubscribe: UnsubscribeResult;
}

export interface ResourceLimits {
  /**
   * Cores
   */
  cpu: number;
  /**
   * MB
   */
  memory: number;
}

/**
 * A subscription a resumed session got back (same id as before the disconnect).
 */
export interface RestoredSubscription {
  filters?: string[];
  kind: "agent" | "metrics" | "logs";
  subscriptionId: string;
  topic: string;
}

/**
 * The CLI retries its API call. One such event per attempt: a frontend shows the
 * latest one of the turn in place of the previous (it is one "retrying" line, updated).
 */
export interface RetryEvent {
  attempt: number;
  delayMs?: number;
  error?: string;
  kind: "retry";
  maxRetries?: number;
  status?: number;
}

/**
 * Every message the server sends (server → client).
 */
export type ServerMessage = AgentStatusMessage | AgentOutputMessage | AgentCreatedMessage | AgentErrorMessage | MetricsUpdateMessage | SystemAlertMessage | AckMessage | HeartbeatMessage | ConnectionStatusMessage | SubscriptionGapMessage;

/**
 * The CLI started (or continued) its session.
 */
export interface SessionEvent {
  kind: "session";
  model?: string;
  permissionMode?: string;
  sessionId?: string;
}

/**
 * The position of the last event a client received on a topic (from its metadata).
 */
export interface StreamPosition {
  epoch?: string;
  offset: number;
}

export interface SubscribeAgentMessage {
  id?: string;
  metadata?: Metadata;
  payload?: SubscribeAgentPayload;
  timestamp?: number;
  type: "subscribe:agent";
}

export interface SubscribeAgentPayload {
  agentId?: string;
  filters?: AgentEventFilter[];
  since?: StreamPosition;
}

export interface SubscribeLogsMessage {
  id?: string;
  metadata?: Metadata;
  payload?: SubscribeLogsPayload;
  timestamp?: number;
  type: "subscribe:logs";
}

export interface SubscribeLogsPayload {
  filters?: LogsFilter[];
  since?: StreamPosition;
}

/**
 * `subscribe:agent`, `subscribe:metrics` or `subscribe:logs`.
 */
export type SubscribeMessage = SubscribeAgentMessage | SubscribeMetricsMessage | SubscribeLogsMessage;

export interface SubscribeMetricsMessage {
  id?: string;
  metadata?: Metadata;
  payload?: SubscribeMetricsPayload;
  timestamp?: number;
  type: "subscribe:metrics";
}

export interface SubscribeMetricsPayload {
  filters?: MetricsFilter[];
  since?: StreamPosition;
}

export interface SubscribePayload {
  agentId?: string;
  filters?: Array<AgentEventFilter | MetricsFilter | LogsFilter>;
  since?: StreamPosition;
}

export interface SubscribeResult {
  missed?: number;
  recovered?: boolean;
  subscriptionId: string;
  topic: string;
}

export interface SubscriptionGapMessage {
  id: string;
  metadata?: Metadata;
  payload: SubscriptionGapPayload;
  timestamp: number;
  type: "subscription:gap";
}

/**
 * Events of a topic this connection follows were lost before they could be delivered
 * (an extension: see docs/protocol.md, "Subscription gaps").
 */
export interface SubscriptionGapPayload {
  missed?: number;
  position: StreamPosition;
  reason: "events-lost" | "epoch-changed";
  since?: StreamPosition;
  subscriptionIds: string[];
  topic: string;
}

export interface SystemAlertMessage {
  id: string;
  metadata?: Metadata;
  payload: SystemAlertPayload;
  timestamp: number;
  type: "system:alert";
}

export interface SystemAlertPayload {
  category: "resource" | "performance" | "security" | "agent";
  details?: { [key: string]: unknown };
  level: "info" | "warning" | "error" | "critical";
  message: string;
}

export interface SystemMetrics {
  cpu: CpuMetrics;
  disk: DiskMetrics;
  memory: MemoryMetrics;
  network: NetworkMetrics;
}

export interface TerminateAgentMessage {
  id?: string;
  metadata?: Metadata;
  payload: TerminateAgentPayload;
  timestamp?: number;
  type: "agent:terminate";
}

export interface TerminateAgentPayload {
  agentId: string;
  force?: boolean;
}

/**
 * The assistant's text (also in `data`).
 */
export interface TextEvent {
  kind: "text";
  text: string;
}

/**
 * The result of an `auth` on a live connection (a token refresh).
 */
export interface TokenRefreshResult {
  endedSubscriptions?: string[];
  expiresAt: number;
}

/**
 * The agent calls a tool: its name and a short summary of the input (a path, a
 * command line), never the whole input.
 */
export interface ToolCallEvent {
  kind: "tool_call";
  name: string;
  summary: string;
  toolUseId?: string;
}

/**
 * A tool call's result: whether it succeeded and its first line.
 */
export interface ToolResultEvent {
  kind: "tool_result";
  success: boolean;
  summary: string;
  toolUseId?: string;
}

/**
 * The end of a command's turn (`metadata.correlationId` = the command's id when the
 * runner knows it). When `success` is false an `agent:error` with the same
 * correlation id and `errorCode` says why.
 */
export interface TurnEndEvent {
  costUsd?: number;
  durationMs?: number;
  error?: string;
  errorCode?: string;
  kind: "turn_end";
  success: boolean;
  usage?: TurnUsage;
}

export interface TurnUsage {
  cachedInputTokens?: number;
  inputTokens?: number;
  outputTokens?: number;
}

export interface UnsubscribeMessage {
  id?: string;
  metadata?: Metadata;
  payload: UnsubscribePayload;
  timestamp?: number;
  type: "unsubscribe";
}

export interface UnsubscribePayload {
  subscriptionId: string;
}

export interface UnsubscribeResult {
  subscriptionId: string;
}

/**
 * The base envelope (spec: `WSMessage<T>`). Concrete messages narrow `type` and
 * `payload`; the field order here is the order on the wire.
 */
export interface WSMessage {
  id: string;
  metadata?: Metadata;
  payload?: unknown;
  timestamp: number;
  type: string;
}
