// Fails when the committed dashboard JavaScript (gateway/static/js/) differs from a fresh
// build of dashboard/ and src/: run `npm run build:dashboard` and commit the result.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";

const committed = new URL("../../../gateway/static/js/", import.meta.url).pathname;
const fresh = mkdtempSync(join(tmpdir(), "teamdash-dashboard-"));

function files(root) {
  const out = new Map();
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else out.set(relative(root, path), readFileSync(path, "utf8"));
    }
  };
  walk(root);
  return out;
}

try {
  execFileSync("npx", ["tsc", "-p", "tsconfig.dashboard.json", "--outDir", fresh], { stdio: "inherit" });
  const want = files(fresh);
  const have = files(committed);
  const stale = [...new Set([...want.keys(), ...have.keys()])].filter((f) => want.get(f) !== have.get(f));
  if (stale.length > 0) {
    console.error(`gateway/static/js is not the build of dashboard/ and src/ (${stale.join(", ")}): run npm run build:dashboard`);
    process.exit(1);
  }
  console.log(`gateway/static/js matches a fresh build (${want.size} files)`);
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
