#!/usr/bin/env node
// Runs the compiled build (dist/, made by `npm run build:server` and by `npm pack`): the package's
// `stratum` command (`npx stratum`, a global install), `npm start` and the container image. No
// process of the tree loads Node's TypeScript stripper for Stratum's own modules (~16–25 MiB
// resident in the master and in every worker, `npm run bench`), and the workers run dist/ too
// (the supervisor forks the worker module beside its own). The Node check comes first and alone:
// see bin/check-node.js.
//
// It never runs an old build by accident: in a checkout (src/ beside dist/), a source newer than
// the build is refused, with the command that rebuilds it. The package and the image ship dist/
// without src/.
import { checkNode } from './check-node.js';

checkNode();
const { existsSync, readdirSync, statSync } = await import('node:fs');
const { join } = await import('node:path');
const { fileURLToPath } = await import('node:url');

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

// The two messages are STRATUM_ERR_NO_BUILD and STRATUM_ERR_STALE_BUILD of src/errors.ts.
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
    process.stderr.write(
      'stratum: dist/ is older than src/ (run `npm run build:server`, or `npm start` which builds first)\n',
    );
    process.exit(2);
  }
}

// The user's app may still be TypeScript: the compile cache strips it once (see bin/run.js).
const { runCli } = await import('./run.js');
await runCli(new URL('../dist/cli.js', import.meta.url));
