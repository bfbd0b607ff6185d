// The dashboard page in real headless Chromium (Debian's `chromium`, driven by
// playwright-core), against a real stack: Redis, two gateways behind HAProxy, a runner with
// the fixture agents, the collector. The page is served by the gateway through HAProxy and
// its WebSocket goes the same way, so killing the gateway it is on makes it reconnect.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { Stack, t } from "./stack.js";

const CHROMIUM = process.env.TEAMDASH_TEST_CHROMIUM ?? "/usr/bin/chromium";
const SCREENSHOTS = resolve(dirname(fileURLToPath(import.meta.url)), "../../screenshots");

let stack: Stack;
let context: BrowserContext;
let page: Page;
let profile: string;

before(async () => {
  stack = await Stack.start();
  profile = mkdtempSync(join(tmpdir(), "teamdash-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(t(20_000));
});

after(async () => {
  await context?.close();
  await stack?.stop();
  if (profile !== undefined) rmSync(profile, { recursive: true, force: true });
});

/** The page's URL as `teamdash up` prints it: the token in the fragment. */
function pageUrl(token: string): string {
  const ws = new URL(stack.url);
  return `http://${ws.host}/dashboard/#token=${token}`;
}

async function lines(agentId: string): Promise<string[]> {
  return page.$$eval(`.output[data-agent="${agentId}"] .line`, (nodes) => nodes.map((n) => n.textContent ?? ""));
}

async function createAgent(name: string, model: string): Promise<string> {
  await page.fill("#create-name", name);
  await page.fill("#create-model", model);
  await page.click("#create button");
  const item = page.locator(`#agents li[aria-selected="true"]`, { hasText: name });
  await item.waitFor();
  const agentId = await item.getAttribute("data-agent");
  assert.ok(agentId !== null);
  await page.locator(`.output[data-agent="${agentId}"]`).waitFor();
  return agentId;
}

describe("the dashboard page in Chromium", () => {
  test("signs in from the URL fragment and forgets it", async () => {
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    await page.goto(pageUrl(stack.token));
    await page.locator('#conn[data-state="open"]').waitFor();
    assert.equal(new URL(page.url()).hash, "", "the token is taken out of the address bar");
    assert.match((await page.textContent("#conn-detail")) ?? "", /^ts-admin on /);
    assert.deepEqual(errors, [], "no script error and no CSP violation");
  });

  test("a bad token gets the sign-in form with the error's code", async () => {
    const other = await context.newPage();
    await other.goto(pageUrl("not-a-token"));
    await other.locator("#signin:not([hidden])").waitFor();
    assert.match((await other.textContent("#signin-error")) ?? "", /^\d+: /);
    await other.close();
  });

  test("creates the demo agent, commands it and renders its answer", async () => {
    const agentId = await createAgent("demo", "demo");
    await page.fill("#command-text", "hello browser");
    await page.click("#command button");
    await page.locator(`.output[data-agent="${agentId}"] .line.text`, { hasText: "you said: hello browser" }).waitFor();
    await page.locator(`.output[data-agent="${agentId}"] .line.turn`, { hasText: "turn done" }).waitFor();
    await page.locator(`#agents li[data-agent="${agentId}"] .status`, { hasText: "running" }).waitFor();
  });

  test("keeps every line, once, across a restart of the gateway it is on", async () => {
    const agentId = await createAgent("ticker", "ticker");
    await page.waitForFunction(
      (id) => document.querySelectorAll(`.output[data-agent="${id}"] .line.stdout`).length >= 400,
      agentId,
      { timeout: t(20_000) },
    );
    const victim = await page.getAttribute("#conn-detail", "data-gateway");
    assert.ok(victim !== null);
    const { killed } = await stack.command<{ killed: number }>({ cmd: "kill_gateway", gatewayId: victim });
    await page.locator('#conn[data-state="resumed"]').waitFor({ timeout: t(30_000) });
    await page.locator(`.output[data-agent="${agentId}"] .line`, { hasText: "status: stopped" }).waitFor({ timeout: t(60_000) });
    const log = (await page.textContent("#conn-log")) ?? "";
    const ticks = (await lines(agentId)).filter((l) => l.startsWith("tick "));
    assert.deepEqual(ticks, Array.from({ length: 3000 }, (_, i) => `tick ${i + 1}`), `every line exactly once, in order (${log})`);
    assert.equal(await page.locator(".line.gap").count(), 0, "no events missed");
    assert.notEqual(await page.getAttribute("#conn-detail", "data-gateway"), victim);
    assert.ok(log.includes("reconnecting") && log.includes("resumed"), log);
    await stack.command({ cmd: "restart_gateway", index: killed });
  });

  test("shows live system metrics as charts, and saves a screenshot", async () => {
    await page.waitForFunction(
      () => (document.querySelector(".metric-cpu polyline")?.getAttribute("points") ?? "").split(" ").length >= 3,
      undefined,
      { timeout: t(20_000) },
    );
    assert.match((await page.textContent(".metric-cpu figcaption")) ?? "", /^CPU \d+(\.\d)? % of \d+ cores$/);
    assert.match((await page.textContent(".metric-memory figcaption")) ?? "", /^Memory \d+(\.\d)? %$/);
    await page.click('#agents li:has-text("demo")');
    await page.locator('#conn[data-state="resumed"]').waitFor();
    mkdirSync(SCREENSHOTS, { recursive: true });
    const path = join(SCREENSHOTS, "dashboard.png");
    await page.screenshot({ path, fullPage: true });
    console.log(`screenshot: ${path}`);
  });
});
