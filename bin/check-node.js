#!/usr/bin/env node
// The first module of every entry point (bin/stratum.js, bin/stratum-dist.js, and `npm start`,
// `npm test`, `npm pack` through package.json): on a Node that cannot run Stratum it prints one
// line saying which Node it needs and how to get it, and exits 1 — before anything that would fail
// as a SyntaxError on an old Node (a missing export such as node:module's enableCompileCache fails
// while the importing module links, before any of its code runs). So this file imports nothing,
// and the entry points import it before any other module, then load the rest with import().
//
// The message is STRATUM_ERR_NODE_VERSION of src/errors.ts (test/package/node-version.test.ts
// holds the two in step).

export const NODE_MAJOR = 24;

export function nodeProblem(version = process.versions.node, execPath = process.execPath) {
  const major = Number(version.split('.')[0]);
  if (major >= NODE_MAJOR) return null;
  return (
    `needs Node.js >= ${NODE_MAJOR}, this is v${version} (${execPath}). In a clone, \`npm ci\` installs ` +
    `Node ${NODE_MAJOR} into node_modules (the pinned \`node\` devDependency) and npm scripts run it; ` +
    `elsewhere install Node ${NODE_MAJOR} (\`nvm install\` reads .nvmrc, or https://nodejs.org)`
  );
}

export function checkNode() {
  const problem = nodeProblem();
  if (problem === null) return;
  process.stderr.write(`stratum: ${problem}\n`);
  process.exit(1);
}

// Run as a command (`node bin/check-node.js`, the npm scripts' first step) it checks and exits 0 or 1.
if (process.argv[1] && /[\\/]check-node\.js$/.test(process.argv[1])) checkNode();
