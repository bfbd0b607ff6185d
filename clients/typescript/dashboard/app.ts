// The dashboard page served by the gateway (`/dashboard/`), built on the SDK. Compiled by
// `npm run build:dashboard` into gateway/static/js/ (committed; `npm test` checks it is
// current). Everything it shows comes from the SDK's events: no polling, no other origin.
import {
  DashboardError,
  DashboardWebSocket,
  positionOf,
  SeenWindow,
  type AgentHistoryResult,
  type AgentInfo,
  type AgentSubscriptionEvent,
  type LogsSubscriptionEvent,
  type MetricsSubscriptionEvent,
  type StateEvent,
  type StreamPosition,
  type Subscription,
  type SubscriptionGapMessage,
} from "../src/index.js";

const TOKEN_KEY = "teamdash.token";
const CHART_POINTS = 60;
const FLUSH_MS = 50;
/** Events per history page (the newest one when a pane opens, then one per scroll-back). */
const HISTORY_PAGE = 200;
/** Scrolled this close to the top of a pane, its previous history page is loaded. */
const SCROLL_BACK_PX = 40;
const ENDED: ReadonlySet<string> = new Set(["stopped", "crashed"]);

function $(id: string): HTMLElement {
  const el = document.getElementById(id);
  if (el === null) throw new Error(`the page has no #${id}`);
  return el;
}

function input(id: string): HTMLInputElement {
  return $(id) as HTMLInputElement;
}

function el(tag: string, className: string, text: string): HTMLElement {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

/** The token and WebSocket path from the URL fragment (`#token=…&ws=/ws`): a fragment never
 * reaches the server or its logs. It is moved to sessionStorage and removed from the URL. */
function takeFragment(): { token: string | null; wsPath: string } {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token !== null) {
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname);
  }
  return { token: token ?? sessionStorage.getItem(TOKEN_KEY), wsPath: params.get("ws") ?? "/ws" };
}

/** A plain-output line, and its stream. */
interface OpenLine {
  stream: string;
  line: HTMLElement;
}

/** Where rendering plain output stands: the last line when its chunk did not end with a
 * newline (the next chunk goes on with it). */
interface LineState {
  partial: OpenLine | undefined;
}

interface AgentRow extends LineState {
  name: string;
  status: string;
  item: HTMLElement;
  output: HTMLElement | undefined;
  subscription: Subscription<AgentSubscriptionEvent> | undefined;
  /** The (epoch, offset) of every event shown in the pane: the history page and the
   * subscription's catch-up could both hold an event, the pane shows it once. */
  seen: SeenWindow;
  /** The older history pages, newest first (undefined: none left, or no history). */
  older: AsyncGenerator<AgentHistoryResult, void, undefined> | undefined;
  loading: boolean;
  /** The first line of the oldest page shown, when it began with plain output: an older
   * page whose last chunk ended mid-line goes on with it. */
  head: OpenLine | undefined;
}

class Dashboard {
  private readonly agents = new Map<string, AgentRow>();
  private selected: string | undefined;
  private lifecycle: Subscription<AgentSubscriptionEvent> | undefined;
  private readonly series = { cpu: [] as number[], memory: [] as number[] };
  private readonly alertCounts = new Map<string, number>();
  /** Permission prompts shown, by request id, and the requests already answered. */
  private readonly prompts = new Map<string, HTMLElement>();
  private readonly answered = new Set<string>();
  private readonly pending = new Map<HTMLElement, HTMLElement[]>();
  private flushTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly client: DashboardWebSocket) {}

  async start(): Promise<void> {
    this.client.on("state", (event: StateEvent) => this.onState(event));
    await this.client.connect();
    $("signin").hidden = true;
    $("main").hidden = false;
    this.wireForms();
    await this.watchAgents();
    await this.client.subscribeMetrics({ filters: ["system"], onEvent: (event) => this.onMetrics(event) });
    await this.client.subscribeLogs({ onEvent: (event) => this.onAlert(event) });
  }

  // -- connection -----------------------------------------------------------------------
  private onState(event: StateEvent): void {
    const badge = $("conn");
    badge.dataset.state = event.state;
    badge.textContent = event.state;
    let line: string = event.state;
    if (event.state === "open" || event.state === "resumed") {
      $("conn-detail").textContent = `${event.status.userId} on ${event.status.gatewayId}`;
      $("conn-detail").dataset.gateway = event.status.gatewayId;
      line += ` (${event.status.gatewayId}${event.status.resumed ? `, ${event.status.replayed} replayed` : ""})`;
    } else if (event.state === "reconnecting") {
      line += ` in ${Math.round(event.delayMs)} ms (closed ${event.code})`;
    } else if (event.state === "missed") {
      line += `: ${event.reason}${event.missed !== undefined ? `, ${event.missed} events` : ""}${event.topic !== undefined ? ` on ${event.topic}` : ""}`;
      // A gap on one topic reaches its pane as `subscription:gap`; a resume that could not
      // replay everything concerns every pane, a catch-up `since` that could not its own.
      for (const [id, row] of this.agents) {
        if (event.topic === undefined || (event.reason === "not-recovered" && event.topic === `agent:${id}`)) {
          this.queue(row, [el("div", "line error gap", `events missed (${line})`)]);
        }
      }
      // Lifecycle events were lost: the list is read again.
      if (event.topic === undefined || event.topic === "agents") this.act(this.watchAgents());
    } else if (event.state === "failed") {
      line += `: ${event.error.message}`;
    }
    const log = $("conn-log");
    log.prepend(el("li", `conn-${event.state}`, `${new Date().toLocaleTimeString()} ${line}`));
  }

  // -- agents ---------------------------------------------------------------------------
  /** The list, then the `agents` lifecycle topic since the list's position: every change
   * after the list exactly once (one the list already shows is applied again, harmlessly).
   * Called again when lifecycle events were lost: the new subscription replaces the old. */
  private async watchAgents(): Promise<void> {
    const old = this.lifecycle;
    const { position } = await this.listAgents();
    this.lifecycle = await this.client.subscribeAgent({ since: position, onEvent: (event) => this.onLifecycle(event) });
    if (old?.active === true) await old.unsubscribe();
  }

  /** Show every agent of `agent:list` (ended ones too), all pages; resolves with the list. */
  private async listAgents(): Promise<{ agents: AgentInfo[]; position: StreamPosition }> {
    const list = await this.client.listAllAgents({ includeEnded: true });
    for (const agent of list.agents) {
      this.agentRow(agent.agentId, agent.name);
      this.setStatus(agent.agentId, agent.status);
    }
    return list;
  }

  private onLifecycle(event: AgentSubscriptionEvent | SubscriptionGapMessage): void {
    if (event.type === "agent:created") this.agentRow(event.payload.agentId, event.payload.name);
    else if (event.type === "agent:status") this.setStatus(event.payload.agentId, event.payload.status);
  }

  private agentRow(agentId: string, name: string): AgentRow {
    let row = this.agents.get(agentId);
    if (row === undefined) {
      const item = el("li", "agent", name);
      item.dataset.agent = agentId;
      item.append(el("span", "status", ""));
      item.addEventListener("click", () => void this.select(agentId));
      $("agents").append(item);
      row = {
        name,
        status: "",
        item,
        output: undefined,
        subscription: undefined,
        partial: undefined,
        seen: new SeenWindow(),
        older: undefined,
        loading: false,
        head: undefined,
      };
      this.agents.set(agentId, row);
    }
    return row;
  }

  private setStatus(agentId: string, status: string): void {
    const row = this.agentRow(agentId, agentId);
    row.status = status;
    row.item.dataset.status = status;
    row.item.classList.toggle("ended", ENDED.has(status));
    const badge = row.item.querySelector(".status");
    if (badge !== null) badge.textContent = status;
  }

  private async select(agentId: string): Promise<void> {
    const row = this.agents.get(agentId);
    if (row === undefined) return;
    this.selected = agentId;
    for (const [id, other] of this.agents) {
      other.item.setAttribute("aria-selected", String(id === agentId));
      if (other.output !== undefined) other.output.hidden = id !== agentId;
    }
    $("output-title").textContent = `Output: ${row.name}`;
    if (row.output === undefined) await this.openPane(agentId, row);
  }

  /** A new output pane: the newest history page, then the subscription since its
   * position, so every line is shown once whatever happens in between; scrolling to the
   * top loads the page before. */
  private async openPane(agentId: string, row: AgentRow): Promise<void> {
    const output = el("div", "output", "");
    output.dataset.agent = agentId;
    const older = el("button", "older", "earlier output") as HTMLButtonElement;
    older.type = "button";
    older.hidden = true;
    older.addEventListener("click", () => void this.scrollBack(row));
    output.append(older);
    output.addEventListener("scroll", () => {
      if (output.scrollTop < SCROLL_BACK_PX) void this.scrollBack(row);
    });
    $("outputs").append(output);
    row.output = output;
    const pages = this.client.historyPages({ agentId, limit: HISTORY_PAGE });
    let since: StreamPosition | undefined;
    try {
      const first = await pages.next();
      if (!first.done) {
        since = first.value.position;
        output.append(...this.historyLines(row, first.value, row, true));
        if (first.value.prev !== undefined) row.older = pages;
        else older.after(historyStart());
      }
    } catch (e) {
      output.append(el("div", "line error", `no history: ${describe(e)}`));
    }
    older.hidden = row.older === undefined;
    output.scrollTop = output.scrollHeight;
    row.subscription = await this.client.subscribeAgent({
      agentId,
      ...(since !== undefined ? { since } : {}),
      onEvent: (event) => this.render(row, event),
    });
  }

  /** Prepend the previous history page to the pane, keeping what is in view in place. */
  private async scrollBack(row: AgentRow): Promise<void> {
    const output = row.output;
    if (row.loading || row.older === undefined || output === undefined) return;
    row.loading = true;
    const older = output.querySelector(".older") as HTMLElement;
    try {
      const page = await row.older.next();
      if (page.done || page.value.prev === undefined) row.older = undefined;
      const lines: HTMLElement[] = [];
      if (!page.done) {
        const state: LineState = { partial: undefined };
        const head = row.head;
        lines.push(...this.historyLines(row, page.value, state, false));
        // The page's last chunk ended mid-line: the line goes on in the first one shown.
        if (state.partial !== undefined && head !== undefined && head.stream === state.partial.stream) {
          state.partial.line.textContent += head.line.textContent ?? "";
          head.line.remove();
        }
      }
      if (row.older === undefined) lines.unshift(historyStart());
      const height = output.scrollHeight;
      older.after(...lines);
      output.scrollTop += output.scrollHeight - height;
    } catch (e) {
      older.after(el("div", "line error", `no earlier history: ${describe(e)}`));
      row.older = undefined;
    } finally {
      row.loading = false;
      older.hidden = row.older === undefined;
    }
  }

  /** The readable lines of a history page (oldest first), rendered with `state`; its first
   * plain line becomes the pane's head. The `newest` page's events are marked as shown
   * (older pages hold only events before everything shown). */
  private historyLines(row: AgentRow, page: AgentHistoryResult, state: LineState, newest: boolean): HTMLElement[] {
    const lines: HTMLElement[] = [];
    row.head = undefined;
    for (const event of page.events) {
      const pos = positionOf(event);
      if (newest && pos !== undefined) row.seen.add(...pos);
      const open = state.partial;
      const out = this.line(state, event, false);
      const produced = out === undefined ? [] : out instanceof HTMLElement ? [out] : out;
      if (lines.length === 0 && produced.length > 0 && open === undefined && event.type === "agent:output" && event.payload.event === undefined) {
        row.head = { stream: event.payload.stream, line: produced[0] as HTMLElement };
      }
      lines.push(...produced);
    }
    if (page.missed > 0) lines.unshift(el("div", "line error gap", `${page.missed} earlier events no longer kept`));
    return lines;
  }

  /** Queue the event's readable lines for its pane. */
  private render(row: AgentRow, event: AgentSubscriptionEvent | SubscriptionGapMessage): void {
    if (event.type === "subscription:gap") {
      row.seen.reset(event.payload.position);
    } else {
      const pos = positionOf(event);
      if (pos !== undefined && !row.seen.add(...pos)) return; // shown from the history page
    }
    const line = this.line(row, event, true);
    if (line !== undefined) this.queue(row, line instanceof HTMLElement ? [line] : line);
  }

  /** Lines reach the page in batches, every FLUSH_MS: one layout per batch, not per event,
   * so a fast agent (or a replay of a thousand events after a reconnect) does not keep the
   * page busy for seconds, which would also delay its heartbeat answers. */
  private queue(row: AgentRow, lines: HTMLElement[]): void {
    if (row.output === undefined || lines.length === 0) return;
    const pending = this.pending.get(row.output);
    if (pending === undefined) this.pending.set(row.output, [...lines]);
    else pending.push(...lines);
    this.flushTimer ??= setTimeout(() => this.flush(), FLUSH_MS);
  }

  private flush(): void {
    this.flushTimer = undefined;
    for (const [output, lines] of this.pending) {
      // The pane follows the end unless the user scrolled up.
      const atEnd = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
      output.append(...lines);
      if (atEnd) output.scrollTop = output.scrollHeight;
    }
    this.pending.clear();
  }

  /** Plain output, one element per line: a chunk may end mid-line, the next one goes on
   * with it. */
  private rawOutput(row: LineState, stream: string, data: string): HTMLElement[] {
    const parts = data.split("\n");
    const out: HTMLElement[] = [];
    const first = parts.shift() ?? "";
    if (row.partial !== undefined && row.partial.stream === stream) row.partial.line.textContent += first;
    else if (first !== "" || parts.length > 0) out.push(el("div", `line ${stream}`, first));
    for (const part of parts) out.push(el("div", `line ${stream}`, part));
    // `data` ending with "\n" leaves an empty last element: drop it, no line is open.
    if (data.endsWith("\n")) {
      const last = out.pop();
      if (last !== undefined && last.textContent !== "") out.push(last);
      row.partial = undefined;
    } else {
      const line = out.at(-1) ?? row.partial?.line;
      row.partial = line === undefined ? undefined : { stream, line };
    }
    return out;
  }

  /** The readable lines of an event; a `live` status also updates the agents list. */
  private line(row: LineState, event: AgentSubscriptionEvent | SubscriptionGapMessage, live: boolean): HTMLElement | HTMLElement[] | undefined {
    switch (event.type) {
      case "agent:output": {
        const p = event.payload;
        const e = p.event;
        if (e === undefined) return this.rawOutput(row, p.stream, p.data);
        switch (e.kind) {
          case "text":
            return el("div", "line stdout text", e.text);
          case "tool_call":
            return el("div", "line tool", `→ ${e.name} ${e.summary}`);
          case "tool_result":
            return el("div", `line tool${e.success ? "" : " error"}`, `${e.success ? "✓" : "✗"} ${e.summary}`);
          case "turn_end": {
            const cost = e.costUsd !== undefined ? `, $${e.costUsd.toFixed(4)}` : "";
            const took = e.durationMs !== undefined ? ` in ${e.durationMs} ms` : "";
            const what = e.success ? "turn done" : `turn failed: ${e.error ?? e.errorCode ?? "?"}`;
            return el("div", `line turn${e.success ? "" : " error"}`, `${what}${took}${cost}`);
          }
          case "retry":
            return el("div", "line notice", `retrying: ${p.data}`);
          case "permission_request":
            return this.permissionPrompt(p.agentId, e.requestId, e.tool, e.summary);
          case "permission_resolved":
            this.resolved(e.requestId);
            return el("div", "line notice", `permission ${e.requestId}: ${e.decision}`);
          case "input_request":
            return el("div", "line notice", `waits for input: ${e.prompt} (answer with a command)`);
          default:
            return p.data === "" ? undefined : el("div", "line notice", p.data.replace(/\n$/, ""));
        }
      }
      case "agent:error":
        return el("div", "line error", `error ${event.payload.error.code}: ${event.payload.error.message}`);
      case "agent:status":
        if (live) this.setStatus(event.payload.agentId, event.payload.status);
        return el("div", "line notice", `status: ${event.payload.status}`);
      case "subscription:gap":
        return el("div", "line error gap", `events missed (${event.payload.reason}${event.payload.missed !== undefined ? `, ${event.payload.missed}` : ""})`);
      default:
        return undefined;
    }
  }

  /** A permission prompt with its answers (`agent:permission`); the buttons are disabled
   * once one is pressed or the request was answered (its `permission_resolved` event). */
  private permissionPrompt(agentId: string, requestId: string, tool: string, summary: string): HTMLElement {
    const line = el("div", "line permission", `${tool} asks for permission: ${summary} `);
    line.dataset.request = requestId;
    for (const decision of ["allow", "deny"] as const) {
      const button = el("button", `answer ${decision}`, decision) as HTMLButtonElement;
      button.type = "button";
      button.disabled = this.answered.has(requestId);
      button.addEventListener("click", () => {
        disable(line);
        this.act(this.client.answerPermission(agentId, requestId, decision));
      });
      line.append(button);
    }
    this.prompts.set(requestId, line);
    return line;
  }

  private resolved(requestId: string): void {
    this.answered.add(requestId);
    const prompt = this.prompts.get(requestId);
    if (prompt !== undefined) disable(prompt);
  }

  private wireForms(): void {
    $("create").addEventListener("submit", (event) => {
      event.preventDefault();
      const name = input("create-name").value;
      const model = input("create-model").value;
      this.act(
        this.client.createAgent({ name, model, workspace: name }).then(async ({ agentId }) => {
          this.agentRow(agentId, name);
          await this.select(agentId);
        }),
      );
    });
    $("command").addEventListener("submit", (event) => {
      event.preventDefault();
      const agentId = this.selected;
      if (agentId === undefined) return this.notice("select an agent first");
      const text = input("command-text");
      this.act(this.client.sendCommand(agentId, text.value));
      text.value = "";
    });
    const control = (id: string, run: (agentId: string) => Promise<unknown>): void => {
      $(id).addEventListener("click", () => {
        if (this.selected === undefined) this.notice("select an agent first");
        else this.act(run(this.selected));
      });
    };
    control("pause", (id) => this.client.pause(id));
    control("resume", (id) => this.client.resume(id));
    control("terminate", (id) => this.client.terminate(id));
  }

  /** Run a request; its error (with the protocol's code) is shown, never swallowed. */
  private act(request: Promise<unknown>): void {
    this.notice("");
    request.catch((e: unknown) => this.notice(describe(e)));
  }

  private notice(text: string): void {
    $("notice").textContent = text;
  }

  // -- metrics and alerts ---------------------------------------------------------------
  private onMetrics(event: MetricsSubscriptionEvent | SubscriptionGapMessage): void {
    if (event.type !== "metrics:update" || event.payload.system === undefined) return;
    const system = event.payload.system;
    push(this.series.cpu, system.cpu.usage);
    push(this.series.memory, system.memory.percent);
    const box = $("metrics");
    box.replaceChildren(
      chart("cpu", `CPU ${system.cpu.usage.toFixed(1)} % of ${system.cpu.cores} cores`, this.series.cpu),
      chart("memory", `Memory ${system.memory.percent.toFixed(1)} %`, this.series.memory),
    );
  }

  private onAlert(event: LogsSubscriptionEvent | SubscriptionGapMessage): void {
    if (event.type !== "system:alert") return;
    const { level, category, message } = event.payload;
    this.alertCounts.set(level, (this.alertCounts.get(level) ?? 0) + 1);
    $("alert-counts").textContent = ["critical", "error", "warning", "info"]
      .map((l) => `${l} ${this.alertCounts.get(l) ?? 0}`)
      .join(" · ");
    const item = el("li", `level-${level}`, `${new Date(event.timestamp).toLocaleTimeString()} [${level}/${category}] ${message}`);
    $("alerts").prepend(item);
  }
}

/** The line above the oldest event the agent's transcript kept. */
function historyStart(): HTMLElement {
  return el("div", "line notice history-start", "start of the history kept");
}

/** An error as the page shows it: the protocol's code first. */
function describe(e: unknown): string {
  return e instanceof DashboardError ? `${e.code}: ${e.message}` : String(e);
}

function disable(prompt: HTMLElement): void {
  prompt.querySelectorAll("button").forEach((b) => {
    b.disabled = true;
  });
}

function push(series: number[], value: number): void {
  series.push(value);
  if (series.length > CHART_POINTS) series.shift();
}

const SVG = "http://www.w3.org/2000/svg";

/** A sparkline of percentages (0-100) as inline SVG. */
function chart(name: string, label: string, values: readonly number[]): HTMLElement {
  const figure = el("figure", `metric metric-${name}`, "");
  figure.append(el("figcaption", "", label));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", `0 0 ${CHART_POINTS - 1} 100`);
  svg.setAttribute("preserveAspectRatio", "none");
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", values.map((v, i) => `${i},${(100 - Math.min(100, Math.max(0, v))).toFixed(1)}`).join(" "));
  svg.append(line);
  figure.append(svg);
  return figure;
}

function signIn(wsPath: string, error?: string): void {
  $("signin").hidden = false;
  $("signin-error").textContent = error ?? "";
  $("signin").addEventListener(
    "submit",
    (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input("token").value);
      open(input("token").value, wsPath);
    },
    { once: true },
  );
}

function open(token: string, wsPath: string): void {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const client = new DashboardWebSocket({ url: `${scheme}://${location.host}${wsPath}`, token });
  new Dashboard(client).start().catch((e: unknown) => {
    client.close();
    sessionStorage.removeItem(TOKEN_KEY);
    signIn(wsPath, describe(e));
  });
}

const { token, wsPath } = takeFragment();
if (token === null) signIn(wsPath);
else open(token, wsPath);
