// Summarises V8 .cpuprofile files (from `npm run bench -- --only stratum-default --cpu-prof DIR`):
// where each process spent its busy time, by area (src/<dir>, node_modules/<package>, node:
// internals, GC), by file including callees (time with that file anywhere on the stack), and the
// hottest functions by self time.
//
//   node bench/prof-summary.ts DIR/*.cpuprofile [--top 20] [--skip SECONDS]
//
// --skip leaves out the first seconds of each profile (start-up: module loading and compiling);
// the benchmark prints the value that starts at its warm-up.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const REPO = fileURLToPath(new URL('../', import.meta.url));

const { values, positionals } = parseArgs({ options: { top: { type: 'string', default: '20' }, skip: { type: 'string', default: '0' } }, allowPositionals: true });
const TOP = Number(values.top);
const SKIP_US = Number(values.skip) * 1e6;
if (positionals.length === 0) {
  console.error('usage: node bench/prof-summary.ts FILE.cpuprofile... [--top N]');
  process.exit(2);
}

function file(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (!url) return functionName.startsWith('(') ? functionName : '(native)';
  let path = url.startsWith('file://') ? fileURLToPath(url) : url;
  if (path.startsWith(REPO)) path = path.slice(REPO.length);
  return path;
}

function area(path: string): string {
  if (path.startsWith('(')) return path;
  const nm = path.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const rest = path.slice(nm + 'node_modules/'.length).split('/');
    return `node_modules/${rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]}`;
  }
  if (path.startsWith('node:')) return `node:${path.slice(5).split('/').slice(0, 2).join('/')}`;
  const parts = path.split('/');
  return parts.length > 2 ? `${parts[0]}/${parts[1]}/` : path;
}

function pct(part: number, whole: number): string {
  return `${((part / whole) * 100).toFixed(1).padStart(5)}%`;
}

function top(map: Map<string, number>, whole: number, n: number): string[] {
  return [...map.entries()].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, v]) => `  ${pct(v, whole)}  ${(v / 1000).toFixed(0).padStart(7)} ms  ${k}`);
}

function add(map: Map<string, number>, key: string, v: number): void {
  map.set(key, (map.get(key) ?? 0) + v);
}

for (const path of positionals) {
  const prof = JSON.parse(readFileSync(path, 'utf8')) as Profile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of prof.nodes) {
    byId.set(node.id, node);
    for (const c of node.children ?? []) parent.set(c, node.id);
  }
  const selfByArea = new Map<string, number>();
  const selfByFunction = new Map<string, number>();
  const inclusiveByFile = new Map<string, number>();
  let total = 0;
  let idle = 0;
  let at = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    at += prof.timeDeltas[i] ?? 0;
    const dt = prof.timeDeltas[i + 1] ?? 0;
    if (at < SKIP_US) continue;
    const node = byId.get(prof.samples[i]!)!;
    total += dt;
    if (node.callFrame.functionName === '(idle)') {
      idle += dt;
      continue;
    }
    const f = file(node.callFrame);
    add(selfByArea, area(f), dt);
    add(selfByFunction, `${node.callFrame.functionName || '(anonymous)'}  ${f}${node.callFrame.url ? `:${node.callFrame.lineNumber + 1}` : ''}`, dt);
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const fr = byId.get(id)!.callFrame;
      if (fr.functionName === '(root)') continue;
      const key = file(fr);
      if (!seen.has(key)) {
        seen.add(key);
        add(inclusiveByFile, key, dt);
      }
    }
  }
  const busy = total - idle;
  console.log(`\n== ${basename(path)}: ${(total / 1e6).toFixed(1)} s profiled${SKIP_US ? ` after the first ${SKIP_US / 1e6} s` : ''}, busy ${(busy / 1e6).toFixed(1)} s (${pct(busy, total).trim()}); % below are of busy time`);
  console.log('self time by area:');
  console.log(top(selfByArea, busy, TOP).join('\n'));
  console.log('time with the file on the stack (inclusive):');
  console.log(top(inclusiveByFile, busy, TOP).join('\n'));
  console.log('hottest functions (self):');
  console.log(top(selfByFunction, busy, TOP).join('\n'));
}
