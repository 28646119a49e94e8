#!/usr/bin/env node
// Runs the compiled build (dist/, made by `npm run build:server`): what `npm start` and the
// container image run. No process of the tree loads Node's TypeScript stripper for Stratum's own
// modules (~16–25 MiB resident in the master and in every worker, `npm run bench`), and the
// workers run dist/ too (the supervisor forks the worker module beside its own).
//
// It never runs an old build by accident: in a checkout (src/ beside dist/), a source newer than
// the build is refused, with the command that rebuilds it. The image ships dist/ without src/.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { enableCompileCache } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../', import.meta.url));

/** Newest (or oldest) modification time of the files under dir whose names pass keep. */
function mtime(dir, keep, pick) {
  let out = pick === Math.max ? 0 : Infinity;
  for (const name of readdirSync(dir, { recursive: true })) {
    if (!keep(name)) continue;
    out = pick(out, statSync(join(dir, name)).mtimeMs);
  }
  return out;
}

const src = join(root, 'src');
const dist = join(root, 'dist');
if (!existsSync(join(dist, 'cli.js'))) {
  process.stderr.write('stratum: no build in dist/ (run `npm run build:server`, or `npm start` which builds first)\n');
  process.exit(2);
}
if (existsSync(src)) {
  const newestSource = mtime(src, (n) => n.endsWith('.ts') && !n.endsWith('.test.ts'), Math.max);
  const oldestOutput = mtime(dist, (n) => n.endsWith('.js'), Math.min);
  if (newestSource > oldestOutput) {
    process.stderr.write('stratum: dist/ is older than src/ (run `npm run build:server`, or `npm start` which builds first)\n');
    process.exit(2);
  }
}

// The user's app may still be TypeScript: the compile cache strips it once (see bin/stratum.js).
process.env.NODE_COMPILE_CACHE ||= join(tmpdir(), 'node-compile-cache');
enableCompileCache(process.env.NODE_COMPILE_CACHE);
const { main } = await import('../dist/cli.js');

const code = await main(process.argv.slice(2));
// A start that failed half-way can leave workers or servers open; a failed command must not linger.
if (code !== 0) process.exit(code);
process.exitCode = code;
