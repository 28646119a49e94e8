// The cost of response compression: a 20 KB JSON answer through `stratum proxy`, with and without
// Accept-Encoding, from an HTTP upstream (relayed and encoded on the fly) and from a static file.
// For each row: req/s, p99 and the CPU the Stratum process spent per request (µs, from
// /proc/<pid>/stat over the measured run; the upstream and wrk are separate processes and not
// counted), and the bytes on the wire per answer. Runnable alone, as the main table's rows all
// answer the same 17-byte body:
//
//   node bench/compression.ts [--duration 5] [--connections 50] [--json FILE]
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import zlib from 'node:zlib';
import { cpuSnapshot, installCleanup, makeTempDir, processTree, sleep, standaloneOptions, startChild,
  waitForLine } from './procs.ts';
import { REPO } from './stacks.ts';
import { parseWrk, type WrkResult } from './wrk.ts';

const { duration: DURATION, warmup: WARMUP, connections: CONNECTIONS, json: JSON_OUT } = standaloneOptions();

installCleanup();
const dir = makeTempDir('compression');

/** About 20 KB of JSON shaped like an API's list answer (ids, names, prices, flags, dates). */
function answer(): Buffer {
  const items: unknown[] = [];
  for (let i = 0; JSON.stringify(items).length < 20_000; i++) {
    items.push({
      id: 10_000 + i,
      name: `product ${i}`,
      price: Math.round(((i * 7919) % 10_000) / 3) / 100,
      tags: ['new', 'sale', 'popular', 'limited'].slice(0, (i % 4) + 1),
      inStock: i % 3 !== 0,
      updated: new Date(Date.UTC(2026, 0, 1 + (i % 28), i % 24)).toISOString(),
    });
  }
  return Buffer.from(JSON.stringify(items));
}

const body = answer();
const www = join(dir, 'www');
mkdirSync(www);
writeFileSync(join(www, 'answer.json'), body);

// The upstream: a plain node:http server in its own process, the JSON with its Content-Length.
const upstreamScript = join(dir, 'upstream.mjs');
writeFileSync(
  upstreamScript,
  `import http from 'node:http';
import { readFileSync } from 'node:fs';
const body = readFileSync(${JSON.stringify(join(www, 'answer.json'))});
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
  res.end(body);
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => console.log('listening ' + server.address().port));
`,
);
const upstream = startChild('upstream', process.execPath, [upstreamScript], { dir });
const upPort = Number(/listening (\d+)/.exec(await waitForLine(upstream, /listening \d+/))![1]);

const configFile = join(dir, 'stratum.yaml');
writeFileSync(
  configFile,
  `listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
log: { access: false }
routes:
  - { path: /up, target: "http://127.0.0.1:${upPort}" }
  - { path: /files, target: "static:${www}", static: { precompressed: false } }
`,
);
const stratum = startChild('stratum', process.execPath, [join(REPO, 'bin/stratum.js'), 'proxy', '--config', configFile], {
  dir,
});
const ready = JSON.parse(await waitForLine(stratum, /"msg":"stratum ready"/)) as { front: string };
const front = ready.front;

interface Row {
  name: string;
  encoding: string;
  rps: number;
  p99Ms: number;
  cpuUsPerRequest: number;
  wireBytes: number;
  errors: number;
}

/** One answer as a client gets it: its encoding and size on the wire (checked to decode to the JSON). */
function probe(path: string, acceptEncoding: string | null): Promise<{ encoding: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = acceptEncoding ? { 'accept-encoding': acceptEncoding } : {};
    http
      .get(`${front}${path}`, { headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const raw = Buffer.concat(chunks);
          const enc = res.headers['content-encoding'] ?? 'identity';
          const decoded =
            enc === 'gzip'
              ? zlib.gunzipSync(raw)
              : enc === 'br'
                ? zlib.brotliDecompressSync(raw)
                : enc === 'zstd'
                  ? zlib.zstdDecompressSync(raw)
                  : raw;
          if (!decoded.equals(body)) return reject(new Error(`${path} (${enc}) did not decode to the answer`));
          resolve({ encoding: enc, bytes: raw.length });
        });
      })
      .on('error', reject);
  });
}

async function wrk(url: string, acceptEncoding: string | null, seconds: number): Promise<WrkResult> {
  const args = ['-t1', `-c${CONNECTIONS}`, `-d${seconds}s`, '--latency'];
  if (acceptEncoding) args.push('-H', `Accept-Encoding: ${acceptEncoding}`);
  args.push(url);
  const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  if (code !== 0) throw new Error(`wrk ${args.join(' ')} exited with ${code}`);
  return parseWrk(out, `wrk ${args.join(' ')}`);
}

const rows: Row[] = [];
const cases: Array<[string, string, string | null]> = [
  ['http upstream', '/up/answer.json', null],
  ['http upstream', '/up/answer.json', 'gzip'],
  ['http upstream', '/up/answer.json', 'br'],
  ['http upstream', '/up/answer.json', 'zstd'],
  ['static file', '/files/answer.json', null],
  ['static file', '/files/answer.json', 'gzip'],
  ['static file', '/files/answer.json', 'br'],
];
for (const [name, path, ae] of cases) {
  const seen = await probe(path, ae);
  if (ae !== null && seen.encoding !== ae) throw new Error(`${path} with Accept-Encoding ${ae} came as ${seen.encoding}`);
  if (WARMUP > 0) await wrk(`${front}${path}`, ae, WARMUP);
  await sleep(300);
  const pids = new Set(processTree([stratum.pid]));
  const before = cpuSnapshot();
  const r = await wrk(`${front}${path}`, ae, DURATION);
  const after = cpuSnapshot();
  let cpu = 0;
  for (const pid of pids) cpu += (after.get(pid) ?? 0) - (before.get(pid) ?? 0);
  const errors = r.errors.connect + r.errors.read + r.errors.write + r.errors.timeout + r.errors.non2xx3xx;
  rows.push({
    name,
    encoding: ae ?? 'identity',
    rps: r.rps,
    p99Ms: r.latency.p99,
    cpuUsPerRequest: (cpu / Math.max(r.requests, 1)) * 1e6,
    wireBytes: seen.bytes,
    errors,
  });
  process.stderr.write(`[compression] ${name} ${ae ?? 'identity'}: ${r.rps.toFixed(0)} req/s\n`);
}

const identity = (name: string) => rows.find((r) => r.name === name && r.encoding === 'identity')!;
const lines = [
  `20 KB JSON answer (${body.length} bytes) through stratum proxy; wrk -t1 -c${CONNECTIONS} -d${DURATION}s; ` +
    `CPU = the Stratum process's only`,
  '',
  '| source | encoding | req/s | p99 ms | CPU µs/req | +CPU µs/req vs identity | bytes on the wire |',
  '|---|---|---:|---:|---:|---:|---:|',
  ...rows.map((r) => {
    const extra = r.cpuUsPerRequest - identity(r.name).cpuUsPerRequest;
    return (
      `| ${r.name} | ${r.encoding} | ${r.rps.toFixed(0)} | ${r.p99Ms.toFixed(2)} | ${r.cpuUsPerRequest.toFixed(0)} | ` +
      `${r.encoding === 'identity' ? '' : `+${extra.toFixed(0)}`} | ${r.wireBytes}${r.errors ? ` (${r.errors} errors)` : ''} |`
    );
  }),
];
console.log(lines.join('\n'));
if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ bytes: body.length, rows }, null, 2));
await stratum.stop('SIGTERM', 5000);
await upstream.stop('SIGTERM', 2000);
process.exit(0);
