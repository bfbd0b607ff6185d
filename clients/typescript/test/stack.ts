// The real stack the tests run against: `python -m tests.ts_stack` (Redis, two gateways
// behind HAProxy, an agent runner with the fixture agents, the metrics collector), started
// once per test file and stopped by closing its stdin.
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { createInterface, type Interface } from "node:readline";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
/** Timeouts scale like the Python tests' (TEAMDASH_TEST_TIMEOUT_SCALE). */
export const SCALE = Number(process.env.TEAMDASH_TEST_TIMEOUT_SCALE ?? "1") || 1;
export const t = (ms: number): number => ms * SCALE;

function python(): string {
  if (process.env.TEAMDASH_PYTHON) return process.env.TEAMDASH_PYTHON;
  const venv = resolve(ROOT, ".venv/bin/python");
  return existsSync(venv) ? venv : "python3";
}

export class Stack {
  url = "";
  gateways: string[] = [];
  token = "";
  private readonly lines: Interface;
  private readonly answers: ((line: string) => void)[] = [];
  private readonly exited: Promise<number | null>;

  private constructor(private readonly proc: ChildProcessWithoutNullStreams) {
    this.lines = createInterface({ input: proc.stdout });
    this.lines.on("line", (line) => this.answers.shift()?.(line));
    let stderr = "";
    proc.stderr.on("data", (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-4000);
    });
    this.exited = new Promise((resolve) => proc.on("exit", (code) => {
      for (const answer of this.answers.splice(0)) answer(JSON.stringify({ error: `the stack exited (${code}): ${stderr}` }));
      resolve(code);
    }));
  }

  static async start(): Promise<Stack> {
    const proc = spawn(python(), ["-m", "tests.ts_stack"], { cwd: ROOT, stdio: ["pipe", "pipe", "pipe"] });
    const stack = new Stack(proc);
    try {
      const hello = JSON.parse(await stack.nextLine(t(90_000))) as { url?: string; gateways: string[]; token: string; error?: string };
      if (hello.url === undefined) throw new Error(`the stack did not start: ${hello.error ?? "?"}`);
      Object.assign(stack, hello);
    } catch (e) {
      await stack.stop();
      throw e;
    }
    return stack;
  }

  private nextLine(timeoutMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no answer from the stack")), timeoutMs);
      this.answers.push((line) => {
        clearTimeout(timer);
        resolve(line);
      });
    });
  }

  async command<T>(command: Record<string, unknown>): Promise<T> {
    const answer = this.nextLine(t(60_000));
    this.proc.stdin.write(`${JSON.stringify(command)}\n`);
    const parsed = JSON.parse(await answer) as T & { error?: string };
    if (parsed.error !== undefined) throw new Error(parsed.error);
    return parsed;
  }

  async mintToken(user: string, roles: string[], ttlS = 3600): Promise<string> {
    return (await this.command<{ token: string }>({ cmd: "token", user, roles, ttl: ttlS })).token;
  }

  /** Stop everything; resolves when the stack process has exited. */
  async stop(): Promise<void> {
    this.proc.stdin.end();
    const killer = setTimeout(() => this.proc.kill("SIGTERM"), t(60_000));
    await this.exited;
    clearTimeout(killer);
  }
}

/** Resolve when `condition()` holds (polled), reject after `timeoutMs`. */
export async function waitFor(condition: () => boolean, what: string, timeoutMs = t(20_000)): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
