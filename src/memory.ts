// Start-up garbage, handed back once a process is ready. Loading modules, compiling them and
// parsing the config allocate far more than a process keeps: V8 grows its young generation for
// it (to 8–16 MiB, nearly all free afterwards) and leaves old-space pages half empty, and nothing
// gives them back while the process sits idle. One memory-reducing collection at ready does:
// npm run bench, idle RSS, master 88 → 78 MiB and each worker 81 → 73 MiB, for a pause of
// ~15–20 ms before the first request. Under load the young generation grows back to the size
// the traffic needs, so throughput is unchanged (a smaller --max-semi-space-size would have cut
// idle RSS too, but cost ~5 % CPU per request in the same bench).

import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';

type Gc = (options: { type: 'major'; execution: 'sync'; flavor: 'last-resort' }) => void;

export function releaseStartupMemory(): void {
  let gc = (globalThis as { gc?: Gc }).gc;
  if (!gc) {
    // The gc function without exposing it to the app: a context created while --expose-gc is on
    // gets one; the flag goes back off at once, so V8's flag hash (which the compile cache's
    // entries carry) is the process's own again.
    v8.setFlagsFromString('--expose-gc');
    try {
      gc = runInNewContext('gc') as Gc;
    } finally {
      v8.setFlagsFromString('--no-expose-gc');
    }
  }
  // "last-resort" is V8's collection with memory reduction: it shrinks the young generation
  // and compacts the old one, where a regular major GC does neither.
  gc({ type: 'major', execution: 'sync', flavor: 'last-resort' });
}
