#!/usr/bin/env node
// Node 24 runs the TypeScript sources directly (type stripping): no build step between edit and run.
import { main } from '../src/cli.ts';

const code = await main(process.argv.slice(2));
// A start that failed half-way can leave workers or servers open; a failed command must not linger.
if (code !== 0) process.exit(code);
process.exitCode = code;
