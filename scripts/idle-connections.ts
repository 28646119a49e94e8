// How much an idle keep-alive client connection costs the front proxy. Starts `stratum serve`
// (1 worker, the hardening fixture app, keepAliveTimeout 300 s) on loopback, opens N
// connections (default 10,000), each asking GET / once and then idling, and reports the master's
// resident memory (VmRSS) and V8 heap before and after, per connection; then checks that
// requests still succeed while they are held (new connections and held ones), and that the
// memory comes back down when they close.
//
//   node scripts/idle-connections.ts [--connections 10000] [--parallel 200] [--hold 5] [--baseline]
//
// --baseline measures a bare Node http.Server the same way, for comparison. The open-file
// limit is raised for this process (and so for the stratum it starts) with prlimit when N needs it.
import { execFileSync, execSync, fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { REPO_ROOT, startStratum, stopAllStratum } from '../test/helpers/stratum.ts';
import { metric, openIdleConnections, portOf, rssOf, sleep, writeConfig } from '../test/hardening/helpers.ts';

const { values } = parseArgs({
  options: {
    connections: { type: 'string', default: '10000' },
    parallel: { type: 'string', default: '200' },
    hold: { type: 'string', default: '5' },
    baseline: { type: 'boolean', default: false },
    server: { type: 'boolean', default: false }, // internal: the bare http.Server child of --baseline
  },
});

if (values.server) {
  const srv = http.createServer({ keepAliveTimeout: 300_000 }, (_req, res) => res.end('{"ok":true}'));
  srv.listen(0, '127.0.0.1', () => process.send!((srv.address() as { port: number }).port));
  process.on('message', () => process.send!({ heap: process.memoryUsage().heapUsed }));
} else {
  await main();
}

async function main(): Promise<void> {
  const n = Number(values.connections);
  const parallel = Number(values.parallel);
  const holdMs = Number(values.hold) * 1000;
  const need = n + 1024;
  const limit = Number(execSync('sh -c "ulimit -n"').toString().trim());
  if (limit < need) {
    execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${need}:${need}`]);
    console.log(`open-file limit raised from ${limit} to ${need} (prlimit)`);
  }
  const mib = (b: number) => (b / 2 ** 20).toFixed(1);
  const rss = (pid: number) => rssOf(pid, (p) => readFileSync(p, 'utf8'));

  async function measure(
    label: string,
    port: number,
    pid: number,
    heap: () => Promise<number>,
    base: string,
  ): Promise<void> {
    // Warm-up: JIT, connection pools, parser pool; then settle and measure.
    (await openIdleConnections(port, Math.min(500, n), '/', parallel)).forEach((c) => c.destroy());
    await sleep(2000);
    const rss0 = rss(pid);
    const heap0 = await heap();
    const t0 = performance.now();
    const held = await openIdleConnections(port, n, '/', parallel);
    const openSeconds = (performance.now() - t0) / 1000;
    await sleep(holdMs);
    const rss1 = rss(pid);
    const heap1 = await heap();
    // While they are held: new connections and some held ones still get answers.
    const lat: number[] = [];
    for (let i = 0; i < 100; i++) {
      const t = performance.now();
      const r = await fetch(`${base}/`);
      await r.arrayBuffer();
      if (r.status !== 200) throw new Error(`request while holding: ${r.status}`);
      lat.push(performance.now() - t);
    }
    let reused = 0;
    for (const c of held.filter((_, i) => i % Math.max(1, Math.floor(n / 100)) === 0)) {
      c.write('GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n');
      if ((await c.next(5000)).status !== 200) throw new Error('a held connection did not answer');
      reused++;
    }
    const alive = held.filter((c) => !c.socket.destroyed).length;
    for (const c of held) c.destroy();
    await sleep(2000);
    const rss2 = rss(pid);
    lat.sort((a, b) => a - b);
    console.log(
      `\n${label}: ${n} idle keep-alive connections ` +
        `(opened in ${openSeconds.toFixed(1)} s, held ${holdMs / 1000} s, ${alive} still open)`,
    );
    console.log(
      `  master RSS   ${mib(rss0)} → ${mib(rss1)} MiB: +${mib(rss1 - rss0)} MiB, ` +
        `${((rss1 - rss0) / n / 1024).toFixed(1)} KiB (${((rss1 - rss0) / n / 2 ** 20).toFixed(4)} MiB) per connection`,
    );
    console.log(
      `  V8 heap used ${mib(heap0)} → ${mib(heap1)} MiB: ${((heap1 - heap0) / n / 1024).toFixed(1)} KiB per connection`,
    );
    console.log(
      `  meanwhile    100 new requests all 200 (p50 ${lat[49]!.toFixed(1)} ms, max ${lat[99]!.toFixed(1)} ms); ` +
        `${reused} held connections reused, all 200`,
    );
    console.log(`  after close  RSS ${mib(rss2)} MiB`);
  }

  const { file } = writeConfig(
    'idle',
    `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${join(REPO_ROOT, 'test/hardening/fixtures/app.ts')} }
pool: { workers: 1 }
proxy: { keepAliveTimeout: 300 }
log: { access: false }
`,
  );
  const s = await startStratum(['serve', '--config', file]);
  try {
    await measure(
      'stratum serve (front proxy → pool)',
      portOf(s.front!),
      s.proc.pid!,
      () => metric(s.admin, 'nodejs_heap_size_used_bytes', { worker: 'master' }),
      s.front!,
    );
  } finally {
    await s.stop();
    await stopAllStratum();
  }

  if (values.baseline) {
    const child = fork(new URL(import.meta.url).pathname, ['--server']);
    const port = await new Promise<number>((r) => child.once('message', (m) => r(m as number)));
    const heap = () =>
      new Promise<number>((r) => {
        child.once('message', (m) => r((m as { heap: number }).heap));
        child.send('heap');
      });
    try {
      await measure('bare node:http server (baseline)', port, child.pid!, heap, `http://127.0.0.1:${port}`);
    } finally {
      child.kill();
    }
  }
}
