#!/usr/bin/env node
// Runs the TypeScript sources (src/): Node 24 strips the types as it loads them, so there is no
// build step between an edit and a run. This is the entry of development and of the tests;
// production runs the compiled build instead (bin/stratum-dist.js, `npm start`, the image).
import { enableCompileCache } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// Node's compile cache keeps each module's stripped source (and V8's code cache) on disk, keyed by
// path and content: from the second start on, no process of this tree loads the type stripper,
// ~20 MiB resident each. Set in the environment, it is on in the workers from their first module.
process.env.NODE_COMPILE_CACHE ||= join(tmpdir(), 'node-compile-cache');
enableCompileCache(process.env.NODE_COMPILE_CACHE);
const { main } = await import('../src/cli.ts');

const code = await main(process.argv.slice(2));
// A start that failed half-way can leave workers or servers open; a failed command must not linger.
if (code !== 0) process.exit(code);
process.exitCode = code;
