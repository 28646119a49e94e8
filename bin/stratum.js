#!/usr/bin/env node
// Runs the TypeScript sources (src/): Node 24 strips the types as it loads them, so there is no
// build step between an edit and a run. This is the entry of development and of the tests;
// the package's `stratum` command, `npm start` and the image run the compiled build instead
// (bin/stratum-dist.js). The Node check comes first and alone: see bin/check-node.js.
import { checkNode } from './check-node.js';

checkNode();
const { runCli } = await import('./run.js');
await runCli(new URL('../src/cli.ts', import.meta.url));
