// The cost of TLS and HTTP/2 at the front: the same hello-world (bench/apps/fastify-hello.ts, 2
// workers, the shipped defaults) over plain HTTP/1.1, TLS + HTTP/1.1 and TLS + h2 (1 and 10 streams
// a connection), and, for comparison, nginx terminating TLS (HTTP/1.1 and h2) in front of a plain
// Stratum. One load generator for every row, h2load (nghttp2-client), with kept connections; the
// TLS handshakes happen once per connection. CPU is the whole stack's (Stratum's master and
// workers, nginx) per request, from /proc over the measured run. Runnable alone:
//
//   node bench/tls.ts [--duration 5] [--warmup 2] [--connections 50] [--json FILE]
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { canConnect, cpuSnapshot, installCleanup, makeTempDir, processTree, sleep, standaloneOptions, startChild,
  waitForLine, waitUntil, type Child } from './procs.ts';
import { REPO } from './stacks.ts';

const { duration: DURATION, warmup: WARMUP, connections: CONNECTIONS, json: JSON_OUT } = standaloneOptions();

installCleanup();
const dir = makeTempDir('tls');
const cert = join(dir, 'cert.pem');
const key = join(dir, 'key.pem');
execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
  '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost'],
{ stdio: 'ignore' });

async function startStratum(name: string, tls: boolean): Promise<{ child: Child; url: string }> {
  const args = [join(REPO, 'bin/stratum.js'), 'serve', '--config', join(REPO, 'config/stratum.yaml'), '--listen',
    '127.0.0.1:0', '--admin', '127.0.0.1:0', '--workers', '2', '--app', join(REPO, 'bench/apps/fastify-hello.ts')];
  if (tls) args.push('--tls-cert', cert, '--tls-key', key);
  const child = startChild(name, process.execPath, args, { dir, env: { ...process.env, NODE_ENV: 'production' } });
  const ready = JSON.parse(await waitForLine(child, /"msg":"stratum ready"/)) as { front: string };
  return { child, url: `${ready.front}/` };
}

async function startNginx(upstream: string): Promise<{ child: Child; port: number }> {
  const d = join(dir, 'nginx');
  mkdirSync(d, { recursive: true });
  for (const sub of ['client_body', 'proxy']) mkdirSync(join(d, sub), { recursive: true });
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  const user = process.getuid?.() === 0 ? 'user root;' : '';
  writeFileSync(
    join(d, 'nginx.conf'),
    `${user}
worker_processes 1;
error_log ${d}/error.log warn;
pid ${d}/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${d}/client_body;
  proxy_temp_path ${d}/proxy;
  upstream stratum { server ${upstream}; keepalive 64; }
  server {
    listen 127.0.0.1:${port} ssl http2;
    ssl_certificate ${cert};
    ssl_certificate_key ${key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://stratum;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`,
  );
  const child = startChild('nginx', 'nginx', ['-p', d, '-e', join(d, 'error.log'), '-c', join(d, 'nginx.conf'), '-g',
    'daemon off;'], { dir });
  await waitUntil(() => canConnect(port), 10_000, () => `nginx did not listen on ${port}`);
  return { child, port };
}

interface H2loadResult {
  rps: number;
  requests: number;
  failed: number;
  meanMs: number;
}

async function h2load(url: string, mode: 'h1' | 'h2', streams: number, seconds: number): Promise<H2loadResult> {
  const conns = mode === 'h2' ? Math.max(1, Math.round(CONNECTIONS / streams)) : CONNECTIONS;
  const args = ['-c', String(conns), '-m', String(streams), '-D', String(seconds), ...(mode === 'h1' ? ['--h1'] : []),
    url];
  const child = spawn('h2load', args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  if (code !== 0) throw new Error(`h2load ${args.join(' ')} exited with ${code}\n${out}`);
  const done = /requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed/.exec(out);
  const mean = /time for request:\s+\S+\s+\S+\s+(\S+)/.exec(out);
  if (!done || !mean) throw new Error(`cannot read h2load's report:\n${out}`);
  const ms = (v: string) => (v.endsWith('us') ? Number(v.slice(0, -2)) / 1000 : v.endsWith('ms') ? Number(v.slice(0, -2))
    : Number(v.slice(0, -1)) * 1000);
  return { rps: Number(done[2]) / seconds, requests: Number(done[2]), failed: Number(done[3]), meanMs: ms(mean[1]!) };
}

interface Row extends H2loadResult {
  name: string;
  cpuUsPerRequest: number;
  cores: number;
}

const rows: Row[] = [];
async function measure(name: string, roots: () => number[], url: string, mode: 'h1' | 'h2', streams: number) {
  if (WARMUP > 0) await h2load(url, mode, streams, WARMUP);
  await sleep(300);
  const pids = new Set(processTree(roots()));
  const before = cpuSnapshot();
  const r = await h2load(url, mode, streams, DURATION);
  const after = cpuSnapshot();
  let cpu = 0;
  for (const pid of pids) cpu += (after.get(pid) ?? 0) - (before.get(pid) ?? 0);
  rows.push({ name, ...r, cpuUsPerRequest: (cpu / Math.max(r.requests, 1)) * 1e6, cores: cpu / DURATION });
  process.stderr.write(`[tls] ${name}: ${r.rps.toFixed(0)} req/s\n`);
}

const plain = await startStratum('stratum-plain', false);
await measure('Stratum, HTTP/1.1 (no TLS)', () => [plain.child.pid], plain.url, 'h1', 1);
const nginx = await startNginx(new URL(plain.url).host);
const viaNginx = `https://127.0.0.1:${nginx.port}/`;
await measure('nginx TLS + HTTP/1.1 → Stratum', () => [plain.child.pid, nginx.child.pid], viaNginx, 'h1', 1);
await measure('nginx TLS + h2 (1 stream) → Stratum', () => [plain.child.pid, nginx.child.pid], viaNginx, 'h2', 1);
await measure('nginx TLS + h2 (10 streams) → Stratum', () => [plain.child.pid, nginx.child.pid], viaNginx, 'h2', 10);
await nginx.child.stop('SIGTERM', 5000);
await plain.child.stop('SIGTERM', 10_000);

const secure = await startStratum('stratum-tls', true);
await measure('Stratum TLS + HTTP/1.1', () => [secure.child.pid], secure.url, 'h1', 1);
await measure('Stratum TLS + h2 (1 stream)', () => [secure.child.pid], secure.url, 'h2', 1);
await measure('Stratum TLS + h2 (10 streams)', () => [secure.child.pid], secure.url, 'h2', 10);
await secure.child.stop('SIGTERM', 10_000);

const base = rows[0]!;
const lines = [
  `GET / hello-world, 2 workers, shipped defaults; h2load ${CONNECTIONS} requests in flight, ${DURATION} s, ` +
    `kept connections; CPU = the stack's processes (Stratum master + workers, nginx)`,
  '',
  '| row | req/s | mean ms | CPU µs/req | vs plain µs/req | cores | failed |',
  '|---|---:|---:|---:|---:|---:|---:|',
  ...rows.map(
    (r) =>
      `| ${r.name} | ${r.rps.toFixed(0)} | ${r.meanMs.toFixed(2)} | ${r.cpuUsPerRequest.toFixed(0)} | ` +
      `${(r.cpuUsPerRequest / base.cpuUsPerRequest).toFixed(2)}× | ${r.cores.toFixed(2)} | ${r.failed} |`,
  ),
];
console.log(lines.join('\n'));
if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ rows }, null, 2));
process.exit(0);
