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

/** The text of every line of an agent's output pane, top to bottom. */
async function lines(agentId: string, on: Page = page): Promise<string[]> {
  return on.$$eval(`.output[data-agent="${agentId}"] .line`, (nodes) => nodes.map((n) => n.textContent ?? ""));
}

function ticks(all: string[]): string[] {
  return all.filter((l) => l.startsWith("tick "));
}

const TICKS = Array.from({ length: 3000 }, (_, i) => `tick ${i + 1}`);

/** Resolve when the agent's pane holds `count` turn lines. */
async function turns(on: Page, agentId: string, count: number): Promise<void> {
  await on.waitForFunction(
    ([id, n]) => document.querySelectorAll(`.output[data-agent="${id}"] .line.turn`).length >= Number(n),
    [agentId, count] as const,
  );
}

async function createAgent(name: string, model: string, on: Page = page): Promise<string> {
  await on.fill("#create-name", name);
  await on.fill("#create-model", model);
  await on.click("#create button");
  const item = on.locator(`#agents li[aria-selected="true"]`, { hasText: name });
  await item.waitFor();
  const agentId = await item.getAttribute("data-agent");
  assert.ok(agentId !== null);
  await on.locator(`.output[data-agent="${agentId}"]`).waitFor();
  return agentId;
}

async function command(on: Page, text: string): Promise<void> {
  await on.fill("#command-text", text);
  await on.click("#command button");
}

let demoId: string;
let tickerId: string;

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
    demoId = agentId;
    await command(page, "hello browser");
    await page.locator(`.output[data-agent="${agentId}"] .line.text`, { hasText: "you said: hello browser" }).waitFor();
    await page.locator(`.output[data-agent="${agentId}"] .line.turn`, { hasText: "turn done" }).waitFor();
    await page.locator(`#agents li[data-agent="${agentId}"] .status`, { hasText: "running" }).waitFor();
  });

  test("keeps every line, once, across a restart of the gateway it is on", async () => {
    const agentId = await createAgent("ticker", "ticker");
    tickerId = agentId;
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
    assert.deepEqual(ticks(await lines(agentId)), TICKS, `every line exactly once, in order (${log})`);
    assert.equal(await page.locator(".line.gap").count(), 0, "no events missed");
    assert.notEqual(await page.getAttribute("#conn-detail", "data-gateway"), victim);
    assert.ok(log.includes("reconnecting") && log.includes("resumed"), log);
    await stack.command({ cmd: "restart_gateway", index: killed });
  });

  test("a second member's page shows the agents and the output from before it opened, then live lines, once", async () => {
    await page.click(`#agents li[data-agent="${demoId}"]`);
    await command(page, "before the second page");
    await turns(page, demoId, 2);
    const second = await context.newPage();
    second.setDefaultTimeout(t(20_000));
    try {
      await second.goto(pageUrl(await stack.mintToken("ts-bob", ["admin"])));
      // The agents that already exist, with their status; the ended one marked as such.
      await second.locator(`#agents li[data-agent="${demoId}"][data-status="running"]`).waitFor();
      await second.locator(`#agents li.ended[data-agent="${tickerId}"] .status`, { hasText: "stopped" }).waitFor();
      // The output printed before the page opened (its history), then a live turn: the
      // pane holds exactly what the first page, subscribed all along, shows.
      await second.click(`#agents li[data-agent="${demoId}"]`);
      await turns(second, demoId, 2);
      await command(second, "after the second page");
      await turns(second, demoId, 3);
      await turns(page, demoId, 3);
      const shown = await lines(demoId, second);
      assert.deepEqual(shown, await lines(demoId, page));
      assert.deepEqual(
        shown.filter((l) => l.includes("you said: ")),
        ["hello browser", "before the second page", "after the second page"].map((c) => `[demo] you said: ${c}`),
      );

      // Scroll-back: the ended ticker opens on its newest page; scrolling to the top loads
      // the page before, until the start of what the transcript kept.
      await second.click(`#agents li[data-agent="${tickerId}"]`);
      const pane = second.locator(`.output[data-agent="${tickerId}"]`);
      await pane.locator(".line", { hasText: "status: stopped" }).waitFor();
      const newest = ticks(await lines(tickerId, second));
      assert.ok(newest.length > 0 && newest.length < 3000, `one page, not everything (${newest.length} lines)`);
      assert.deepEqual(newest, TICKS.slice(-newest.length), "the newest page");
      let pages = 1;
      while ((await pane.locator(".history-start").count()) === 0) {
        const shownBefore = await pane.locator(".line").count();
        await pane.evaluate((node) => {
          node.scrollTop = 0;
        });
        await second.waitForFunction(
          ([id, n]) =>
            document.querySelectorAll(`.output[data-agent="${id}"] .line`).length > Number(n),
          [tickerId, shownBefore] as const,
        );
        pages += 1;
      }
      assert.ok(pages > 2, `scrolled back through ${pages} pages`);
      assert.equal(await pane.locator(".older").isVisible(), false, "no earlier output left");
      assert.deepEqual(ticks(await lines(tickerId, second)), TICKS, "every line once, in order, after scrolling back");
      assert.equal(await second.locator(".line.gap").count(), 0);
    } finally {
      await second.close();
    }
  });

  test("answers a permission prompt with its Allow button, and shows the alert with its level", async () => {
    const agentId = await createAgent("asker", "claude-ask");
    await command(page, "write a.txt");
    const pane = page.locator(`.output[data-agent="${agentId}"]`);
    const prompt = pane.locator(".line.permission", { hasText: "Write asks for permission" });
    await prompt.waitFor();
    await page.locator("#alerts li.level-warning", { hasText: "agent 'asker' waits for permission to use Write" }).waitFor();
    assert.match((await page.textContent("#alert-counts")) ?? "", /warning [1-9]/);
    await prompt.locator("button.allow").click();
    await pane.locator(".line.notice", { hasText: /^permission .+: allow$/ }).waitFor();
    await pane.locator(".line.tool", { hasText: "✓" }).waitFor();
    await pane.locator(".line.turn", { hasText: "turn done" }).waitFor();
    assert.equal(await prompt.locator("button:disabled").count(), 2, "answered once");
    await page.click("#terminate");
    await page.locator(`#agents li.ended[data-agent="${agentId}"]`).waitFor();
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
