// Every OTEL_* variable Stratum honours (docs/tracing.md), one test each, against the real
// service: `stratum serve` with tracing.enabled in its config and the variable in its
// environment, exporting to a recording collector on 127.0.0.1. The SDK is assembled in
// src/observability/tracing.ts rather than taken from @opentelemetry/sdk-node, so nothing reads
// these variables unless that file does; each test fails if the variable is ignored.
//
// Absence ("no span was exported") is only asserted after the service has stopped: shutdown
// flushes every queued span, so nothing can still be on its way. Nothing here depends on which
// process runs the front proxy (the master, or each worker): the proxy's SERVER span is found by
// its name, and log lines are taken from whichever process wrote them.
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeTraceRequest, type ReceivedSpan } from '../helpers/otlp.ts';
import { makeTempDir, waitUntil } from '../helpers/processes.ts';
import { startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';

afterAll(stopAllStratum);

interface Recorded {
  path: string;
  headers: http.IncomingHttpHeaders;
  /** Decoded when the body is OTLP/JSON; empty for protobuf. */
  spans: ReceivedSpan[];
}

interface Collector {
  endpoint: string;
  requests: Recorded[];
  spans(): ReceivedSpan[];
  close(): Promise<void>;
}

/**
 * An OTLP/HTTP collector that records every request: path, headers and (for JSON) the spans.
 * `hang` accepts connections and never answers, as a collector that stopped responding.
 */
async function startCollector(mode: 'answer' | 'hang' = 'answer'): Promise<Collector> {
  const requests: Recorded[] = [];
  const sockets = new Set<Socket>();
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      let body = Buffer.concat(chunks);
      if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
      const json = String(req.headers['content-type']).startsWith('application/json');
      requests.push({ path: req.url ?? '', headers: req.headers,
        spans: json && req.url?.endsWith('traces') ? decodeTraceRequest(body) : [] });
      if (mode === 'hang') return;
      const type = json ? 'application/json' : 'application/x-protobuf';
      res.writeHead(200, { 'content-type': type }).end(json ? '{}' : '');
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    spans: () => requests.flatMap((r) => r.spans),
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}

/** A port nothing listens on: bound, then closed. */
async function closedPort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** Every OTEL_* variable of the test runner's own environment, blanked (an empty value is unset). */
const blankOtel = Object.fromEntries(Object.keys(process.env).filter((k) => k.startsWith('OTEL_')).map((k) => [k, '']));

/** stratum serve with tracing on (sampleRatio 1, serviceName "stratum" in the config) and `env`. */
async function serve(env: Record<string, string>, extraConfig = ''): Promise<StratumProcess> {
  const dir = makeTempDir('otel-env');
  const config = join(dir, 'stratum.yaml');
  writeFileSync(config, `tracing:\n  enabled: true\n  sampleRatio: 1\n  serviceName: stratum\n${extraConfig}`);
  return startStratum(
    ['serve', '--config', config, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--socket', join(dir,
      'pool.sock'),
      '--workers', '1', '--app', 'examples/hello/app.ts'],
    { env: { ...blankOtel, OTEL_BSP_SCHEDULE_DELAY: '100', ...env } },
  );
}

async function get(s: StratumProcess, path = '/', headers: Record<string, string> = {}): Promise<Response> {
  const res = await fetch(`${s.front}${path}`, { headers });
  await res.arrayBuffer();
  expect(res.status).toBe(200);
  return res;
}

const stopped = async (s: StratumProcess) => expect(await s.stop(), 'exit code after SIGTERM').toBe(0);
const json = (c: Collector) => ({ OTEL_EXPORTER_OTLP_ENDPOINT: c.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' });
const until = (what: string, done: () => boolean, c?: Collector) =>
  waitUntil(async () => done(), { timeoutMs: 10_000,
    describe: () => `${what}; collector saw ${JSON.stringify(c?.requests.map((r) => r.path))}` });
const newTraceparent = () => {
  const traceId = randomBytes(16).toString('hex');
  return { traceId, header: `00-${traceId}-${randomBytes(8).toString('hex')}-01` };
};
/** The front proxy's SERVER spans (`GET <route>`; the worker's own is `uwsgi GET`), in whichever process. */
const proxySpans = (spans: ReceivedSpan[]) => spans.filter((sp) => sp.kind === 'SERVER' && sp.name === 'GET /');
const warnings = (s: StratumProcess) =>
  s.logs().filter((l) => l.level === 'warn' && String(l.msg).startsWith('tracing'));

describe('OTEL_* variables honoured by stratum serve', () => {
  it('OTEL_EXPORTER_OTLP_ENDPOINT: spans go to <endpoint>/v1/traces; _TRACES_ENDPOINT is used as is', async () => {
    const c = await startCollector();
    const s = await serve(json(c));
    try {
      await get(s);
      await until('no spans at /v1/traces', () => c.spans().some((sp) => sp.kind === 'SERVER'), c);
      expect(new Set(c.requests.map((r) => r.path))).toEqual(new Set(['/v1/traces']));
    } finally {
      await stopped(s);
    }
    const t = await serve({ ...json(c), OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${c.endpoint}/custom/traces` });
    try {
      await get(t);
      await until('no spans at /custom/traces', () => c.requests.some((r) => r.path === '/custom/traces'), c);
    } finally {
      await stopped(t);
      await c.close();
    }
  });

  it('OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf by default, http/json when asked; grpc refused', async () => {
    const c = await startCollector();
    const types = (from: number) => new Set(c.requests.slice(from).map((r) => r.headers['content-type']));
    for (const [protocol, type] of [[undefined, 'application/x-protobuf'], ['http/json', 'application/json'],
      ['http/protobuf', 'application/x-protobuf'], ['grpc', 'application/x-protobuf']] as const) {
      const from = c.requests.length;
      const s = await serve({ OTEL_EXPORTER_OTLP_ENDPOINT: c.endpoint,
        ...(protocol ? { OTEL_EXPORTER_OTLP_PROTOCOL: protocol } : {}) });
      try {
        await get(s);
        await until(`no export with protocol ${protocol}`, () => c.requests.length > from, c);
        expect(types(from), String(protocol)).toEqual(new Set([type]));
        const ready = s.logs().find((l) => l.msg === 'tracing on');
        expect(ready?.exporters).toEqual([`otlp ${type === 'application/json' ? 'http/json' : 'http/protobuf'}`]);
        if (protocol === 'grpc') expect(warnings(s).map((w) => w.msg).join('\n')).toMatch(/"grpc" is not supported/);
        else expect(warnings(s)).toEqual([]);
      } finally {
        await stopped(s);
      }
    }
    await c.close();
  });

  it('OTEL_EXPORTER_OTLP_HEADERS (and _TRACES_HEADERS) are sent with every export', async () => {
    const c = await startCollector();
    const s = await serve({ ...json(c), OTEL_EXPORTER_OTLP_HEADERS: 'x-api-key=s3cret,x-tenant=edge%20team',
      OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'x-signal=traces' });
    try {
      await get(s);
      await until('no export', () => c.requests.length > 0, c);
      for (const r of c.requests) {
        expect(r.headers).toMatchObject({ 'x-api-key': 's3cret', 'x-tenant': 'edge team', 'x-signal': 'traces' });
      }
    } finally {
      await stopped(s);
      await c.close();
    }
  });

  it('OTEL_EXPORTER_OTLP_COMPRESSION=gzip compresses the exports', async () => {
    const c = await startCollector();
    const s = await serve({ ...json(c), OTEL_EXPORTER_OTLP_COMPRESSION: 'gzip' });
    try {
      await get(s);
      await until('no export', () => c.spans().length > 0, c);
      expect(c.requests.every((r) => r.headers['content-encoding'] === 'gzip')).toBe(true);
    } finally {
      await stopped(s);
      await c.close();
    }
  });

  it('OTEL_SERVICE_NAME replaces tracing.serviceName in every process\'s resource', async () => {
    const c = await startCollector();
    const s = await serve({ ...json(c), OTEL_SERVICE_NAME: 'edge-proxy' });
    try {
      await get(s);
      await until('no proxy span', () => proxySpans(c.spans()).length > 0, c);
      expect(new Set(c.spans().map((sp) => sp.resource['service.name']))).toEqual(new Set(['edge-proxy']));
      expect(s.logs().find((l) => l.msg === 'tracing on')?.serviceName).toBe('edge-proxy');
    } finally {
      await stopped(s);
      await c.close();
    }
  });

  it('OTEL_RESOURCE_ATTRIBUTES join the resource; OTEL_SERVICE_NAME outranks them; role, pid stay', async () => {
    const c = await startCollector();
    const attrs = 'deployment.environment=staging,team=edge,service.name=from-attributes,stratum.role=spoofed';
    const s = await serve({ ...json(c), OTEL_RESOURCE_ATTRIBUTES: attrs });
    try {
      await get(s);
      await until('no spans', () => c.spans().length > 0, c);
      for (const sp of c.spans()) {
        expect(sp.resource).toMatchObject({ 'deployment.environment': 'staging', team: 'edge',
          'service.name': 'from-attributes' });
        expect(sp.resource['stratum.role']).toMatch(/^(master|worker-\d+)$/);
      }
    } finally {
      await stopped(s);
    }
    const from = c.requests.length;
    const t = await serve({ ...json(c), OTEL_RESOURCE_ATTRIBUTES: attrs, OTEL_SERVICE_NAME: 'named' });
    try {
      await get(t);
      await until('no spans', () => c.requests.slice(from).some((r) => r.spans.length > 0), c);
      for (const sp of c.requests.slice(from).flatMap((r) => r.spans)) {
        expect(sp.resource).toMatchObject({ 'service.name': 'named', team: 'edge' });
      }
    } finally {
      await stopped(t);
      await c.close();
    }
  });

  it('OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG replace tracing.sampleRatio', async () => {
    const c = await startCollector();
    // The config samples everything (sampleRatio 1); each sampler below decides instead.
    const run = async (env: Record<string, string>) => {
      const from = c.requests.length;
      const s = await serve({ ...json(c), ...env });
      const tp = newTraceparent();
      try {
        await get(s, '/'); // a root request
        await get(s, '/', { traceparent: tp.header }); // a request whose sampled parent is remote
      } finally {
        await stopped(s); // flushes: whatever was sampled has arrived
      }
      const spans = proxySpans(c.requests.slice(from).flatMap((r) => r.spans));
      return { root: spans.filter((sp) => sp.traceId !== tp.traceId).length,
        child: spans.filter((sp) => sp.traceId === tp.traceId).length, s };
    };
    expect(await run({ OTEL_TRACES_SAMPLER: 'always_off' })).toMatchObject({ root: 0, child: 0 });
    expect(await run({ OTEL_TRACES_SAMPLER: 'parentbased_always_off' })).toMatchObject({ root: 0, child: 1 });
    expect(await run({ OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '0' })).toMatchObject({ root: 0,
      child: 0 });
    expect(await run({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
      OTEL_TRACES_SAMPLER_ARG: '0' })).toMatchObject({ root: 0, child: 1 });
    expect(await run({ OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '1' })).toMatchObject({ root: 1,
      child: 1 });
    const bad = await run({ OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '7' });
    expect(bad).toMatchObject({ root: 1, child: 1 });
    expect(warnings(bad.s).map((w) => w.msg).join('\n')).toMatch(/OTEL_TRACES_SAMPLER_ARG="7" is not a ratio/);
    await c.close();
  });

  it('OTEL_BSP_MAX_EXPORT_BATCH_SIZE, _MAX_QUEUE_SIZE and _SCHEDULE_DELAY shape the batches', async () => {
    const c = await startCollector();
    // Batches of one span each.
    const s = await serve({ ...json(c), OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '1' });
    try {
      for (let i = 0; i < 3; i++) await get(s);
    } finally {
      await stopped(s);
    }
    expect(c.spans().length).toBeGreaterThanOrEqual(9); // proxy SERVER + CLIENT, worker SERVER, app spans
    expect(c.requests.map((r) => r.spans.length).filter((n) => n !== 1)).toEqual([]);

    // A queue of two spans, under a delay (60 s) longer than the test: the batch size is capped at
    // the queue's, so every second span sends a batch while the service runs.
    const from = c.requests.length;
    const q = await serve({ ...json(c), OTEL_BSP_MAX_QUEUE_SIZE: '2', OTEL_BSP_SCHEDULE_DELAY: '60000' });
    try {
      for (let i = 0; i < 3; i++) await get(q);
      await until('no export before the 60 s delay with OTEL_BSP_MAX_QUEUE_SIZE=2', () => c.requests.length > from, c);
    } finally {
      await stopped(q);
    }
    expect(Math.max(...c.requests.slice(from).map((r) => r.spans.length))).toBeLessThanOrEqual(2);

    // A short delay sends spans while the service runs; the SDK's default is 5 s.
    const before = c.requests.length;
    const d = await serve({ ...json(c), OTEL_BSP_SCHEDULE_DELAY: '50' });
    try {
      await get(d);
      await waitUntil(async () => c.requests.length > before, { timeoutMs: 4000,
        describe: () => 'no export within 4 s with OTEL_BSP_SCHEDULE_DELAY=50' });
    } finally {
      await stopped(d);
      await c.close();
    }
  });

  it('OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT and OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT cap the spans\' attributes', async () => {
    const c = await startCollector();
    const s = await serve({ ...json(c), OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT: '3', OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: '4' });
    try {
      await get(s, '/', { 'user-agent': 'a-long-user-agent' });
    } finally {
      await stopped(s);
      await c.close();
    }
    const proxy = proxySpans(c.spans())[0]!;
    expect(proxy, 'the proxy span').toBeDefined();
    // The proxy span is given ten attributes or more; the first three are kept, cut to four characters.
    expect(Object.keys(proxy.attributes)).toHaveLength(3);
    for (const v of Object.values(proxy.attributes)) if (typeof v === 'string') expect(v.length).toBeLessThanOrEqual(4);
  });

  it('OTEL_TRACES_EXPORTER=none exports nothing, and requests still carry trace ids', async () => {
    const c = await startCollector();
    const s = await serve({ ...json(c), OTEL_TRACES_EXPORTER: 'none' });
    const tp = newTraceparent();
    try {
      const res = await get(s, '/', { traceparent: tp.header });
      const id = res.headers.get('x-request-id');
      await until('no access line', () => s.logs().some((l) => l.type === 'access' && l.requestId === id));
      expect(s.logs().find((l) => l.type === 'access' && l.requestId === id)?.traceId).toBe(tp.traceId);
      expect(s.logs().find((l) => l.msg === 'tracing on')?.exporters).toEqual(['none']);
    } finally {
      await stopped(s);
      await c.close();
    }
    expect(c.requests).toEqual([]);
  });

  it('OTEL_SDK_DISABLED=true turns tracing off whatever the config says', async () => {
    const c = await startCollector();
    const s = await serve({ ...json(c), OTEL_SDK_DISABLED: 'true' });
    try {
      await get(s);
      expect(s.logs().some((l) => String(l.msg).startsWith('tracing off: OTEL_SDK_DISABLED'))).toBe(true);
    } finally {
      await stopped(s);
      await c.close();
    }
    expect(c.requests).toEqual([]);
  });

  it('OTEL_PROPAGATORS=none: a client\'s traceparent is not continued', async () => {
    const c = await startCollector();
    const s = await serve({ ...json(c), OTEL_PROPAGATORS: 'none' });
    const tp = newTraceparent();
    try {
      await get(s, '/', { traceparent: tp.header });
    } finally {
      await stopped(s);
      await c.close();
    }
    const proxy = proxySpans(c.spans());
    expect(proxy).toHaveLength(1);
    expect(proxy[0]!.traceId).not.toBe(tp.traceId);
    expect(proxy[0]!.parentSpanId).toBeNull();
  });
});

describe('shutdown with a collector that does not take the spans', () => {
  it('is bounded (OTEL_BSP_EXPORT_TIMEOUT, else 2 s) and says so in the log', async () => {
    const hung = await startCollector('hang');
    // Queued spans wait for shutdown (60 s delay), so the flush is what meets the silent collector.
    const s = await serve({ ...json(hung), OTEL_BSP_SCHEDULE_DELAY: '60000', OTEL_BSP_EXPORT_TIMEOUT: '300' });
    await get(s);
    await stopped(s);
    const LOST = 'tracing: the last spans were not exported; stopping without them';
    const lost = (p: StratumProcess) => p.logs().find((l) => l.msg === LOST);
    expect(lost(s), JSON.stringify(s.logs().slice(-5))).toMatchObject({ level: 'warn', boundMs: 300,
      endpoint: `${hung.endpoint}/v1/traces` });
    // The master still logs its own end after giving up on the collector.
    expect(s.logs().at(-1)?.msg).toBe('stopped');

    const t = await serve({ ...json(hung), OTEL_BSP_SCHEDULE_DELAY: '60000' });
    await get(t);
    await stopped(t);
    expect(lost(t), JSON.stringify(t.logs().slice(-5))).toMatchObject({ boundMs: 2000,
      err: 'no answer within 2000 ms' });
    expect(hung.requests.length).toBeGreaterThan(0);
    await hung.close();
  }, 60_000);

  it('an unreachable collector: export failures and the lost flush are logged, and stop still exits 0', async () => {
    const port = await closedPort();
    const s = await serve({ OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
      OTEL_BSP_SCHEDULE_DELAY: '60000' });
    await get(s);
    await stopped(s);
    const lines = warnings(s);
    expect(lines.length, JSON.stringify(s.logs().slice(-6))).toBeGreaterThan(0);
    expect(lines.every((l) => l.endpoint === `http://127.0.0.1:${port}/v1/traces`)).toBe(true);
  }, 60_000);
});
