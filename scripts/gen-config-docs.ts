// Regenerates docs/config.md from the config schema: `npm run docs:config`.
// src/config/docs.test.ts fails when the committed file differs from this output.

import { writeFileSync } from 'node:fs';
import { configDocs } from '../src/config/docs.ts';

const target = new URL('../docs/config.md', import.meta.url);
writeFileSync(target, configDocs());
console.log(`wrote ${target.pathname}`);
