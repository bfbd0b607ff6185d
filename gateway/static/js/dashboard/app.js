// The dashboard page served by the gateway (`/dashboard/`), built on the SDK. Compiled by
// `npm run build:dashboard` into gateway/static/js/ (committed; `npm test` checks it is
// current). Everything it shows comes from the SDK's events: no polling, no other origin.
import { DashboardError, DashboardWebSocket, } from "../src/index.js";
const TOKEN_KEY = "teamdash.token";
const CHART_POINTS = 60;
const FLUSH_MS = 50;
function $(id) {
    const el = document.getElementById(id);
    if (el === null)
        throw new Error(`the page has no #${id}`);
    return el;
}
function input(id) {
    return $(id);
}
function el(tag, className, text) {
    const node = document.createElement(tag);
    node.className = className;
    node.textContent = text;
    return node;
}
/** The token and WebSocket path from the URL fragment (`#token=…&ws=/ws`): a fragment never
 * reaches the server or its logs. It is moved to sessionStorage and removed from the URL. */
function takeFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const token = params.get("token");
    if (token !== null) {
        sessionStorage.setItem(TOKEN_KEY, token);
        history.replaceState(null, "", location.pathname);
    }
    return { token: token ?? sessionStorage.getItem(TOKEN_KEY), wsPath: params.get("ws") ?? "/ws" };
}
class Dashboard {
    client;
    agents = new Map();
    selected;
    series = { cpu: [], memory: [] };
    alertCounts = new Map();
    pending = new Map();
    flushTimer;
    constructor(client) {
        this.client = client;
    }
    async start() {
        this.client.on("state", (event) => this.onState(event));
        await this.client.connect();
        $("signin").hidden = true;
        $("main").hidden = false;
        this.wireForms();
        // Issue #14 seam: when `agent:list` lands, fill `this.agents` from it here (and
        // `agent:history` gives each output pane its scroll-back). Until then the list is
        // what the `agents` lifecycle subscription reports plus the agents created here.
        await this.client.subscribeAgent({ onEvent: (event) => this.onLifecycle(event) });
        await this.client.subscribeMetrics({ filters: ["system"], onEvent: (event) => this.onMetrics(event) });
        await this.client.subscribeLogs({ onEvent: (event) => this.onAlert(event) });
    }
    // -- connection -----------------------------------------------------------------------
    onState(event) {
        const badge = $("conn");
        badge.dataset.state = event.state;
        badge.textContent = event.state;
        let line = event.state;
        if (event.state === "open" || event.state === "resumed") {
            $("conn-detail").textContent = `${event.status.userId} on ${event.status.gatewayId}`;
            $("conn-detail").dataset.gateway = event.status.gatewayId;
            line += ` (${event.status.gatewayId}${event.status.resumed ? `, ${event.status.replayed} replayed` : ""})`;
        }
        else if (event.state === "reconnecting") {
            line += ` in ${Math.round(event.delayMs)} ms (closed ${event.code})`;
        }
        else if (event.state === "missed") {
            line += `: ${event.reason}${event.missed !== undefined ? `, ${event.missed} events` : ""}${event.topic !== undefined ? ` on ${event.topic}` : ""}`;
            // A gap on one topic reaches its pane as `subscription:gap`; a resume that could not
            // replay everything concerns every pane.
            if (event.topic === undefined) {
                for (const row of this.agents.values())
                    this.queue(row, [el("div", "line error gap", `events missed (${line})`)]);
            }
        }
        else if (event.state === "failed") {
            line += `: ${event.error.message}`;
        }
        const log = $("conn-log");
        log.prepend(el("li", `conn-${event.state}`, `${new Date().toLocaleTimeString()} ${line}`));
    }
    // -- agents ---------------------------------------------------------------------------
    onLifecycle(event) {
        if (event.type === "agent:created")
            this.agentRow(event.payload.agentId, event.payload.name);
        else if (event.type === "agent:status")
            this.setStatus(event.payload.agentId, event.payload.status);
    }
    agentRow(agentId, name) {
        let row = this.agents.get(agentId);
        if (row === undefined) {
            const item = el("li", "agent", name);
            item.dataset.agent = agentId;
            item.append(el("span", "status", ""));
            item.addEventListener("click", () => void this.select(agentId));
            $("agents").append(item);
            row = { name, status: "", item, output: undefined, subscription: undefined, partial: undefined };
            this.agents.set(agentId, row);
        }
        return row;
    }
    setStatus(agentId, status) {
        const row = this.agentRow(agentId, agentId);
        row.status = status;
        const badge = row.item.querySelector(".status");
        if (badge !== null)
            badge.textContent = status;
    }
    async select(agentId) {
        const row = this.agents.get(agentId);
        if (row === undefined)
            return;
        this.selected = agentId;
        for (const [id, other] of this.agents) {
            other.item.setAttribute("aria-selected", String(id === agentId));
            if (other.output !== undefined)
                other.output.hidden = id !== agentId;
        }
        $("output-title").textContent = `Output: ${row.name}`;
        if (row.output === undefined) {
            const output = el("div", "output", "");
            output.dataset.agent = agentId;
            $("outputs").append(output);
            row.output = output;
            row.subscription = await this.client.subscribeAgent({ agentId, onEvent: (event) => this.render(row, event) });
        }
    }
    /** Queue the event's readable lines for its pane. */
    render(row, event) {
        const line = this.line(row, event);
        if (line !== undefined)
            this.queue(row, line instanceof HTMLElement ? [line] : line);
    }
    /** Lines reach the page in batches, every FLUSH_MS: one layout per batch, not per event,
     * so a fast agent (or a replay of a thousand events after a reconnect) does not keep the
     * page busy for seconds, which would also delay its heartbeat answers. */
    queue(row, lines) {
        if (row.output === undefined || lines.length === 0)
            return;
        const pending = this.pending.get(row.output);
        if (pending === undefined)
            this.pending.set(row.output, [...lines]);
        else
            pending.push(...lines);
        this.flushTimer ??= setTimeout(() => this.flush(), FLUSH_MS);
    }
    flush() {
        this.flushTimer = undefined;
        for (const [output, lines] of this.pending) {
            // The pane follows the end unless the user scrolled up.
            const atEnd = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
            output.append(...lines);
            if (atEnd)
                output.scrollTop = output.scrollHeight;
        }
        this.pending.clear();
    }
    /** Plain output, one element per line: a chunk may end mid-line, the next one goes on
     * with it. */
    rawOutput(row, stream, data) {
        const parts = data.split("\n");
        const out = [];
        const first = parts.shift() ?? "";
        if (row.partial !== undefined && row.partial.stream === stream)
            row.partial.line.textContent += first;
        else if (first !== "" || parts.length > 0)
            out.push(el("div", `line ${stream}`, first));
        for (const part of parts)
            out.push(el("div", `line ${stream}`, part));
        // `data` ending with "\n" leaves an empty last element: drop it, no line is open.
        if (data.endsWith("\n")) {
            const last = out.pop();
            if (last !== undefined && last.textContent !== "")
                out.push(last);
            row.partial = undefined;
        }
        else {
            const line = out.at(-1) ?? row.partial?.line;
            row.partial = line === undefined ? undefined : { stream, line };
        }
        return out;
    }
    line(row, event) {
        switch (event.type) {
            case "agent:output": {
                const p = event.payload;
                const e = p.event;
                if (e === undefined)
                    return this.rawOutput(row, p.stream, p.data);
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
                this.setStatus(event.payload.agentId, event.payload.status);
                return el("div", "line notice", `status: ${event.payload.status}`);
            case "subscription:gap":
                return el("div", "line error gap", `events missed (${event.payload.reason}${event.payload.missed !== undefined ? `, ${event.payload.missed}` : ""})`);
            default:
                return undefined;
        }
    }
    /** A permission prompt with its answers (`agent:permission`); the buttons are disabled
     * once one is pressed, and the agent's `permission_resolved` event follows. */
    permissionPrompt(agentId, requestId, tool, summary) {
        const line = el("div", "line permission", `${tool} asks for permission: ${summary} `);
        for (const decision of ["allow", "deny"]) {
            const button = el("button", `answer ${decision}`, decision);
            button.type = "button";
            button.addEventListener("click", () => {
                line.querySelectorAll("button").forEach((b) => { b.disabled = true; });
                this.act(this.client.answerPermission(agentId, requestId, decision));
            });
            line.append(button);
        }
        return line;
    }
    wireForms() {
        $("create").addEventListener("submit", (event) => {
            event.preventDefault();
            const name = input("create-name").value;
            const model = input("create-model").value;
            this.act(this.client.createAgent({ name, model, workspace: name }).then(async ({ agentId }) => {
                this.agentRow(agentId, name);
                await this.select(agentId);
            }));
        });
        $("command").addEventListener("submit", (event) => {
            event.preventDefault();
            const agentId = this.selected;
            if (agentId === undefined)
                return this.notice("select an agent first");
            const text = input("command-text");
            this.act(this.client.sendCommand(agentId, text.value));
            text.value = "";
        });
        const control = (id, run) => {
            $(id).addEventListener("click", () => {
                if (this.selected === undefined)
                    this.notice("select an agent first");
                else
                    this.act(run(this.selected));
            });
        };
        control("pause", (id) => this.client.pause(id));
        control("resume", (id) => this.client.resume(id));
        control("terminate", (id) => this.client.terminate(id));
    }
    /** Run a request; its error (with the protocol's code) is shown, never swallowed. */
    act(request) {
        this.notice("");
        request.catch((e) => {
            this.notice(e instanceof DashboardError ? `${e.code}: ${e.message}` : String(e));
        });
    }
    notice(text) {
        $("notice").textContent = text;
    }
    // -- metrics and alerts ---------------------------------------------------------------
    onMetrics(event) {
        if (event.type !== "metrics:update" || event.payload.system === undefined)
            return;
        const system = event.payload.system;
        push(this.series.cpu, system.cpu.usage);
        push(this.series.memory, system.memory.percent);
        const box = $("metrics");
        box.replaceChildren(chart("cpu", `CPU ${system.cpu.usage.toFixed(1)} % of ${system.cpu.cores} cores`, this.series.cpu), chart("memory", `Memory ${system.memory.percent.toFixed(1)} %`, this.series.memory));
    }
    onAlert(event) {
        if (event.type !== "system:alert")
            return;
        const { level, category, message } = event.payload;
        this.alertCounts.set(level, (this.alertCounts.get(level) ?? 0) + 1);
        $("alert-counts").textContent = ["critical", "error", "warning", "info"]
            .map((l) => `${l} ${this.alertCounts.get(l) ?? 0}`)
            .join(" · ");
        const item = el("li", `level-${level}`, `${new Date(event.timestamp).toLocaleTimeString()} [${level}/${category}] ${message}`);
        $("alerts").prepend(item);
    }
}
function push(series, value) {
    series.push(value);
    if (series.length > CHART_POINTS)
        series.shift();
}
const SVG = "http://www.w3.org/2000/svg";
/** A sparkline of percentages (0-100) as inline SVG. */
function chart(name, label, values) {
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
function signIn(wsPath, error) {
    $("signin").hidden = false;
    $("signin-error").textContent = error ?? "";
    $("signin").addEventListener("submit", (event) => {
        event.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input("token").value);
        open(input("token").value, wsPath);
    }, { once: true });
}
function open(token, wsPath) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const client = new DashboardWebSocket({ url: `${scheme}://${location.host}${wsPath}`, token });
    new Dashboard(client).start().catch((e) => {
        client.close();
        sessionStorage.removeItem(TOKEN_KEY);
        signIn(wsPath, e instanceof DashboardError ? `${e.code}: ${e.message}` : String(e));
    });
}
const { token, wsPath } = takeFragment();
if (token === null)
    signIn(wsPath);
else
    open(token, wsPath);
