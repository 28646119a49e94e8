// Upstream faults, on loopback only, against a real `stratum serve`: for an HTTP upstream (/h/…)
// and an external uwsgi server (/u/…) each — connection refused, connect timeout (a listener
// whose accept queue is full: the SYN is never answered), an upstream that accepts and never
// answers, a reset before the head, a reset inside the body, a truncated body, a garbage status
// line. Each gives 502/504 (or, once the head is out, a client connection cut so the short body
// cannot pass for a whole one), is counted in stratum_upstream_errors_total{target,code} and
// logged with its code, while the pool route keeps answering 200 throughout.
// Retries (nginx proxy_next_upstream): a request goes to the next uwsgi server when it was never
// sent (refused connection) — a POST included; one that reached a server which then reset before
// answering is retried only when it is idempotent (a GET is, a POST is not). Each process that runs
// the front starts its rotation at a random server, so each test sends until the faulty one was hit.
import { join } from 'node:path';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnTracked, waitUntil } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { RawConn, exchange, fakeUwsgi, metric, portOf, refusingPort, scriptedUpstream, sleep, writeConfig } from './helpers.ts';

afterAll(stopAllStratum);

const H = 'Host: faults.test\r\n';
const OK = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok';
/** What a broken upstream does once it has the request. */
const behaviours: Record<string, (s: net.Socket) => void> = {
  never: () => {},
  'reset-before-head': (s) => s.resetAndDestroy(),
  'reset-mid-body': (s) => {
    s.write(`HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n${'x'.repeat(1000)}`);
    setTimeout(() => s.resetAndDestroy(), 50);
  },
  truncated: (s) => s.end(`HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n${'x'.repeat(1000)}`),
  'truncated-head': (s) => s.end('HTTP/1.1 200 OK\r\nContent-Le'),
  garbage: (s) => s.end('HTTTP/1.1 2OO OK\r\n\r\nwhatever'),
};

let stratum: StratumProcess;
let port: number;
const closers: Array<() => void> = [];
const http: Record<string, number> = {};
const uwsgi: Record<string, number> = {};
let refused: number;
let backlog: number;
let retryOk: Awaited<ReturnType<typeof fakeUwsgi>>;
let noRetryReset: Awaited<ReturnType<typeof fakeUwsgi>>;
let noRetryOk: Awaited<ReturnType<typeof fakeUwsgi>>;
let getReset: Awaited<ReturnType<typeof fakeUwsgi>>;
let getOk: Awaited<ReturnType<typeof fakeUwsgi>>;

beforeAll(async () => {
  for (const [name, play] of Object.entries(behaviours)) {
    const h = await scriptedUpstream((s) => play(s));
    const u = await fakeUwsgi((s) => play(s));
    http[name] = h.port;
    uwsgi[name] = u.port;
    closers.push(h.close, u.close);
  }
  refused = await refusingPort();
  // A listener that never accepts, its queue (backlog 0: one connection) filled by us: the
  // proxy's SYN goes unanswered, as with a host that drops packets.
  const py = spawnTracked('python3', ['-c', 'import socket,sys,time\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(600)']);
  await waitUntil(async () => py.stdoutLines.length > 0, { timeoutMs: 5000, describe: () => `python3 listener did not start: ${py.stderr()}` });
  backlog = Number(py.stdoutLines[0]);
  const { createConnection } = await import('node:net');
  const filler = createConnection({ host: '127.0.0.1', port: backlog });
  closers.push(() => filler.destroy());
  await new Promise((r) => filler.once('connect', r));

  retryOk = await fakeUwsgi((s) => s.end(OK));
  noRetryReset = await fakeUwsgi((s) => s.resetAndDestroy());
  noRetryOk = await fakeUwsgi((s) => s.end(OK));
  getReset = await fakeUwsgi((s) => s.resetAndDestroy());
  getOk = await fakeUwsgi((s) => s.end(OK));
  closers.push(retryOk.close, noRetryReset.close, noRetryOk.close, getReset.close, getOk.close);

  const routes = [
    ...Object.keys(behaviours).map((b) => `  - { path: /h/${b}, target: "http://127.0.0.1:${http[b]}", readTimeout: 1 }\n  - { path: /u/${b}, target: "uwsgi://127.0.0.1:${uwsgi[b]}", readTimeout: 1 }`),
    `  - { path: /h/refused, target: "http://127.0.0.1:${refused}" }`,
    `  - { path: /u/refused, target: "uwsgi://127.0.0.1:${refused}" }`,
    `  - { path: /h/connect-timeout, target: "http://127.0.0.1:${backlog}" }`,
    `  - { path: /u/connect-timeout, target: "uwsgi://127.0.0.1:${backlog}" }`,
    `  - { path: /retry, target: ["uwsgi://127.0.0.1:${refused}", "${retryOk.target}"] }`,
    `  - { path: /noretry, target: ["${noRetryReset.target}", "${noRetryOk.target}"] }`,
    `  - { path: /noretry-get, target: ["${getReset.target}", "${getOk.target}"] }`,
    '  - { path: /, target: pool }',
  ].join('\n');
  const { file } = writeConfig('faults', `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${join(REPO_ROOT, 'test/hardening/fixtures/app.ts')} }
pool: { workers: 1 }
proxy: { connectTimeout: 1, readTimeout: 5 }
routes:
${routes}
`);
  stratum = await startStratum(['serve', '--config', file]);
  port = portOf(stratum.front!);
});

afterAll(() => {
  for (const c of closers) c();
});

/** One GET on a fresh connection: the status, or 'cut' when the body was cut short. */
async function get(path: string): Promise<{ status: number | null; cut: boolean; ms: number }> {
  const c = await RawConn.open(port);
  const t0 = performance.now();
  c.write(`GET ${path} HTTP/1.1\r\n${H}\r\n`);
  try {
    const r = await c.next(8000);
    return { status: r.status, cut: false, ms: performance.now() - t0 };
  } catch (err) {
    if (/cut short/.test((err as Error).message)) return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(c.raw)?.[1]), cut: true, ms: performance.now() - t0 };
    throw err;
  } finally {
    c.destroy();
  }
}

const faults: Array<[string, { status: number; cut?: boolean; code: string; under?: number }]> = [
  ['refused', { status: 502, code: 'STRATUM_ERR_UPSTREAM_UNREACHABLE', under: 500 }],
  ['connect-timeout', { status: 504, code: 'STRATUM_ERR_UPSTREAM_TIMEOUT', under: 2500 }],
  ['never', { status: 504, code: 'STRATUM_ERR_UPSTREAM_TIMEOUT', under: 2500 }],
  ['reset-before-head', { status: 502, code: 'STRATUM_ERR_UPSTREAM_RESET', under: 500 }],
  ['truncated-head', { status: 502, code: 'STRATUM_ERR_UPSTREAM_TRUNCATED', under: 500 }],
  ['garbage', { status: 502, code: 'STRATUM_ERR_UPSTREAM_BAD_RESPONSE', under: 500 }],
  ['reset-mid-body', { status: 200, cut: true, code: 'STRATUM_ERR_UPSTREAM_RESET', under: 1000 }],
  ['truncated', { status: 200, cut: true, code: 'STRATUM_ERR_UPSTREAM_TRUNCATED', under: 1000 }],
];

describe('upstream faults: coded, counted, logged, contained', () => {
  let poolLoop: Promise<number[]>;
  let stop = false;
  const table: string[] = [];
  afterAll(() => console.log(`upstream faults (client saw, after, counted as):\n${table.join('\n')}`));

  beforeAll(() => {
    // The pool route, asked all along: every answer must be 200.
    poolLoop = (async () => {
      const statuses: number[] = [];
      while (!stop) {
        statuses.push((await fetch(`${stratum.front}/`)).status);
        await sleep(20);
      }
      return statuses;
    })();
  });

  for (const kind of ['h', 'u'] as const) {
    for (const [fault, want] of faults) {
      const code = want.code;
      it(`${kind === 'h' ? 'HTTP' : 'uwsgi'} upstream, ${fault}: ${want.cut ? `${want.status} head, then the connection is cut` : want.status}, ${code} counted and logged`, async () => {
        const port_ = fault === 'refused' ? refused : fault === 'connect-timeout' ? backlog : kind === 'h' ? http[fault]! : uwsgi[fault]!;
        const target = `127.0.0.1:${port_}`;
        const before = await metric(stratum.admin, 'stratum_upstream_errors_total', { target, code });
        const r = await get(`/${kind}/${fault}`);
        table.push(`${kind === 'h' ? 'http ' : 'uwsgi'} ${fault.padEnd(18)} ${String(r.status)}${r.cut ? ' + cut' : '      '} ${r.ms.toFixed(0).padStart(5)} ms  ${code}`);
        expect(r.status).toBe(want.status);
        expect(r.cut).toBe(!!want.cut);
        if (want.under) expect(r.ms).toBeLessThan(want.under);
        await waitUntil(async () => (await metric(stratum.admin, 'stratum_upstream_errors_total', { target, code })) === before + 1, {
          timeoutMs: 3000,
          describe: () => `stratum_upstream_errors_total{target="${target}",code="${code}"} did not count it`,
        });
        // The log is written asynchronously (pino): wait for the line.
        await waitUntil(async () => stratum.logs().some((l) => l.code === code && l.level === 'warn' && l.path === `/${kind}/${fault}`), {
          timeoutMs: 3000,
          describe: () => `no warn log line with code ${code} for /${kind}/${fault}`,
        });
      });
    }
  }

  it('the pool route answered 200 all along', async () => {
    stop = true;
    const statuses = await poolLoop;
    expect(statuses.length).toBeGreaterThan(20);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    console.log(`pool route during the faults: ${statuses.length} requests, all 200`);
  });
});

describe('retries: only what was never sent', () => {
  it('a POST goes to the next uwsgi server when the first refuses the connection', async () => {
    const down = () => metric(stratum.admin, 'stratum_upstream_up', { target: `127.0.0.1:${refused}` });
    // Until the refusing server was tried (and marked down: the worker that saw it reports within
    // half a second in the worker topology), every POST arrives at the other one, once.
    for (let i = 0; i < 8 && (await down()) !== 0; i++) {
      const before = retryOk.seen.length;
      const body = `payload-that-must-arrive-once-${i}`;
      const r = await exchange(port, `POST /retry/x HTTP/1.1\r\n${H}Content-Length: ${body.length}\r\n\r\n${body}`);
      expect(r.status).toBe(200);
      const seen = retryOk.seen.slice(before);
      expect(seen).toHaveLength(1);
      expect(seen[0]!.body.toString()).toBe(body);
      await sleep(600);
    }
    await waitUntil(async () => (await down()) === 0, { timeoutMs: 2_000, describe: () => 'the refusing server was not marked down' });
    expect(await down()).toBe(0);
    expect(await metric(stratum.admin, 'stratum_upstream_up', { target: retryOk.target.slice('uwsgi://'.length) })).toBe(1);
  });

  it('a POST that reached a server which then reset is not retried elsewhere', async () => {
    const statuses: Array<number | null> = [];
    for (let i = 0; i < 8 && noRetryReset.seen.length === 0; i++) {
      statuses.push((await exchange(port, `POST /noretry/x HTTP/1.1\r\n${H}Content-Length: 5\r\n\r\nhello`)).status);
    }
    expect(noRetryReset.seen).toHaveLength(1);
    expect(noRetryReset.seen[0]!.body.toString()).toBe('hello');
    // The POST the resetting server took is answered 502; every other one reached only the good server.
    expect(statuses.at(-1)).toBe(502);
    expect(statuses.slice(0, -1).every((s) => s === 200)).toBe(true);
    expect(noRetryOk.heads).toHaveLength(statuses.length - 1);
  });

  it('a GET that reached a server which then reset before answering is retried on the next one', async () => {
    const statuses: Array<number | null> = [];
    for (let i = 0; i < 8 && getReset.heads.length === 0; i++) {
      statuses.push((await exchange(port, `GET /noretry-get/y HTTP/1.1\r\n${H}\r\n`)).status);
    }
    expect(getReset.heads).toHaveLength(1);
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(getOk.heads).toHaveLength(statuses.length);
  });
});
