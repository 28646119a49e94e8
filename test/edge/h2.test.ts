// HTTP/2 on the TLS listener, with real clients: curl --http2, node's http2 client, h2load (bounded),
// openssl s_client for ALPN; the three app kinds in both topologies, the static and http targets,
// trailers, what a client sees of the response head (lower case, no hop-by-hop), the server's
// SETTINGS, metrics; and the known floods sent as raw frames (rapid reset, CONTINUATION, SETTINGS,
// PING): each connection is ended by the server before the flood is over, and the service answers.
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requirePeer } from '../helpers/peers.ts';
import { makeTempDir, waitUntil } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { makeCert, type TestCert } from './certs.ts';

afterAll(stopAllStratum);

const peers = requirePeer('curl') && requirePeer('h2load') && requirePeer('openssl');

function run(cmd: string, args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { timeout: 60_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: unknown }).code) || 1 : 0, out: stdout, err: stderr }),
    );
    child.stdin?.end(); // openssl s_client waits for stdin's end
  });
}

function portOf(s: StratumProcess): number {
  expect(s.front).toMatch(/^https:\/\//);
  return Number(new URL(s.front!).port);
}

/** curl over h2 to name a.test on the port, trusting the test certificate; -w output after the body. */
function curl(cert: TestCert, port: number, path: string, extra: string[] = []) {
  return run('curl', [
    '-sS',
    '--http2',
    '--resolve',
    `a.test:${port}:127.0.0.1`,
    '--cacert',
    cert.cert,
    ...extra,
    `https://a.test:${port}${path}`,
  ]);
}

interface H2Answer {
  status: number;
  headers: http2.IncomingHttpHeaders;
  body: Buffer;
  trailers: http2.IncomingHttpHeaders | null;
}

function h2request(
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  body?: Buffer,
): Promise<H2Answer> {
  return new Promise((resolve, reject) => {
    const req = session.request(headers, { endStream: body === undefined });
    let trailers: http2.IncomingHttpHeaders | null = null;
    let head: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    req.on('response', (h) => (head = h));
    req.on('trailers', (t) => (trailers = t));
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () =>
      resolve({ status: Number(head[':status']), headers: head, body: Buffer.concat(chunks), trailers }),
    );
    req.on('error', reject);
    req.setTimeout(20_000, () => req.close(http2.constants.NGHTTP2_CANCEL));
    if (body !== undefined) req.end(body);
  });
}

function connect(port: number, cert: TestCert): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const s = http2.connect(`https://a.test:${port}`, {
      ca: [require_(cert.cert)],
      lookup: (_h, _o, cb) => cb(null, [{ address: '127.0.0.1', family: 4 }] as never, 4),
    } as http2.SecureClientSessionOptions);
    s.once('remoteSettings', () => resolve(s));
    s.once('error', reject);
  });
}
function require_(file: string): string {
  return process.getBuiltinModule('node:fs').readFileSync(file, 'utf8');
}

// --- raw frames, for the floods ---------------------------------------------------------------

function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
}
// HPACK: :method GET, :scheme https, :path / (static table), :authority a.test (literal, indexed name).
const GET_BLOCK = Buffer.from([0x82, 0x87, 0x84, 0x41, 0x06, ...Buffer.from('a.test')]);
/** A literal header field (never indexed, new name) of 200 bytes of value, for CONTINUATION frames. */
function literal(i: number): Buffer {
  const name = Buffer.from(`x-flood-${i}`);
  const value = Buffer.alloc(200, 97);
  return Buffer.concat([Buffer.from([0x10, name.length]), name, Buffer.from([0x7f, value.length - 127]), value]);
}

type Flood = 'rapid-reset' | 'continuation' | 'settings' | 'ping';

/**
 * Sends up to `max` flood frames on one h2 connection (reading nothing back for SETTINGS and PING,
 * so their ACKs pile up). Resolves with how many went out before the server ended the connection.
 */
function flood(port: number, kind: Flood, max: number): Promise<{ sent: number; closedByServer: boolean }> {
  return new Promise((resolve) => {
    const s = tls.connect({
      host: '127.0.0.1',
      port,
      ALPNProtocols: ['h2'],
      servername: 'a.test',
      rejectUnauthorized: false,
    });
    let sent = 0;
    let closed = false;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      s.destroy();
      resolve({ sent, closedByServer: closed });
    };
    s.on('error', () => (closed = true));
    s.on('close', () => {
      closed = true;
      finish();
    });
    s.once('secureConnect', () => {
      expect(s.alpnProtocol).toBe('h2');
      if (kind === 'settings' || kind === 'ping') s.pause();
      else s.resume();
      s.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
      s.write(frame(4, 0, 0));
      // Frames go out in blocks; SETTINGS and PING ones in large blocks, so that the ACKs the server
      // owes outgrow what the kernel's socket buffers absorb.
      const perBlock = kind === 'settings' || kind === 'ping' ? 50_000 : 200;
      const blockOf = (first: number) => {
        const frames: Buffer[] = [];
        for (let i = first; i < first + perBlock; i++) {
          if (kind === 'continuation') frames.push(i === 0 ? frame(1, 0, 1, GET_BLOCK) : frame(9, 0, 1, literal(i)));
          else if (kind === 'settings') frames.push(frame(4, 0, 0, Buffer.from([0, 3, 0, 0, 0, 100])));
          else if (kind === 'ping') frames.push(frame(6, 0, 0, Buffer.alloc(8)));
          else {
            // HEADERS (END_STREAM | END_HEADERS) and at once RST_STREAM CANCEL.
            const id = 1 + 2 * i;
            frames.push(frame(1, 5, id, GET_BLOCK), frame(3, 0, id, Buffer.from([0, 0, 0, 8])));
          }
        }
        return Buffer.concat(frames);
      };
      const fixed = kind === 'settings' || kind === 'ping' ? blockOf(0) : null;
      const step = () => {
        while (sent < max && !closed) {
          const block = fixed ?? blockOf(sent);
          sent += perBlock;
          if (!s.write(block)) return void s.once('drain', step);
        }
        if (!closed) setTimeout(finish, 10_000); // the flood is out: the server has 10 s to end the connection
      };
      step();
    });
  });
}

// --- the tests --------------------------------------------------------------------------------

describe.skipIf(!peers)('HTTP/2 on the TLS listener', () => {
  let dir: string;
  let cert: TestCert;
  beforeAll(() => {
    dir = makeTempDir('h2');
    cert = makeCert(dir, 'a', ['a.test']);
  });

  describe.each([
    ['fastify', 'worker'],
    ['listener', 'worker'],
    ['fetch', 'worker'],
    ['listener', 'master'],
  ] as const)('the %s app kind, %s topology', (kind, topology) => {
    let s: StratumProcess;
    beforeAll(async () => {
      s = await startStratum([
        'serve',
        '--listen',
        '127.0.0.1:0',
        '--admin',
        '127.0.0.1:0',
        '--workers',
        '1',
        '--topology',
        topology,
        '--app',
        join(REPO_ROOT, `test/fixtures/apps/${kind}.ts`),
        '--tls-cert',
        cert.cert,
        '--tls-key',
        cert.key,
      ]);
    });
    afterAll(async () => {
      await s?.stop();
    });

    it('answers over h2 (curl --http2), a body goes up, the app sees https and one Cookie', async () => {
      const port = portOf(s);
      const root = await curl(cert, port, '/', ['-w', '\n%{http_version}']);
      expect(root.err).toBe('');
      const [body, version] = root.out.split('\n');
      expect(version).toBe('2');
      expect(JSON.parse(body!)).toMatchObject({ kind });
      const payload = 'x'.repeat(70_000);
      const echo = await curl(cert, port, '/echo?q=1', [
        '-H',
        'cookie: a=1',
        '-H',
        'cookie: b=2',
        '--data-binary',
        payload,
        '-H',
        'content-type: text/plain',
      ]);
      const doc = JSON.parse(echo.out) as {
        method: string;
        url: string;
        headers: [string, string][];
        bodyLength: number;
      };
      expect(doc.method).toBe('POST');
      expect(doc.url).toBe('/echo?q=1');
      expect(doc.bodyLength).toBe(payload.length);
      const h = (name: string) => doc.headers.filter(([k]) => k.toLowerCase() === name).map(([, v]) => v);
      expect(h('cookie')).toEqual(['a=1; b=2']);
      expect(h('x-forwarded-proto')).toEqual(['https']);
      expect(h('host')).toEqual([`a.test:${port}`]);
    });
  });

  describe('one service, every target kind', () => {
    let s: StratumProcess;
    let port: number;
    let upstream: http.Server;
    beforeAll(async () => {
      upstream = http.createServer((req, res) => {
        res.writeHead(200, { 'content-type': 'text/plain', 'x-upstream': 'yes', connection: 'keep-alive' });
        res.end(`upstream ${req.url}`);
      });
      await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
      const up = (upstream.address() as { port: number }).port;
      const files = join(dir, 'files');
      mkdirSync(files, { recursive: true });
      writeFileSync(join(files, 'hello.txt'), 'static hello\n');
      s = await startStratum([
        'serve',
        '--listen',
        '127.0.0.1:0',
        '--admin',
        '127.0.0.1:0',
        '--workers',
        '2',
        '--app',
        join(REPO_ROOT, 'test/edge/h2-app.ts'),
        '--tls-cert',
        cert.cert,
        '--tls-key',
        cert.key,
        '--route',
        '/=pool',
        '--route',
        `/files=static:${files}`,
        '--route',
        `/up=http://127.0.0.1:${up}`,
      ]);
      port = portOf(s);
    });
    afterAll(async () => {
      await s?.stop();
      upstream?.close();
    });

    it('negotiates h2 by ALPN, and http/1.1 for a client that asks for it', async () => {
      const r = await run('openssl', [
        's_client',
        '-connect',
        `127.0.0.1:${port}`,
        '-servername',
        'a.test',
        '-alpn',
        'h2,http/1.1',
      ]);
      expect(r.out + r.err).toMatch(/ALPN protocol: h2/);
      const h1 = await curl(cert, port, '/', ['--http1.1', '-o', '/dev/null', '-w', '%{http_version} %{http_code}']);
      expect(h1.out).toBe('1.1 200');
    });

    it('sends SETTINGS of 100 concurrent streams and the header-list limit', async () => {
      const c = await connect(port, cert);
      try {
        expect(c.remoteSettings.maxConcurrentStreams).toBe(100);
        expect(c.remoteSettings.maxHeaderListSize).toBe(32768);
        expect(c.remoteSettings.enablePush).toBe(false);
      } finally {
        c.close();
      }
    });

    it('the response head: lower-case names, no hop-by-hop fields, Server-Timing and X-Request-Id kept', async () => {
      const c = await connect(port, cert);
      try {
        const r = await h2request(c, { ':path': '/', ':method': 'GET' });
        expect(r.status).toBe(200);
        expect(r.body.toString()).toBe('ok\n');
        for (const name of Object.keys(r.headers)) expect(name).toBe(name.toLowerCase());
        for (const hop of ['connection', 'keep-alive', 'transfer-encoding', 'upgrade'])
          expect(r.headers[hop], hop).toBeUndefined();
        expect(r.headers['server-timing']).toMatch(/proxy;dur=.*app;dur=.*total;dur=/);
        expect(r.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
        const head = await h2request(c, { ':path': '/bytes?n=1000', ':method': 'HEAD' });
        expect(head.status).toBe(200);
        expect(head.headers['content-length']).toBe('1000');
        expect(head.body.length).toBe(0);
      } finally {
        c.close();
      }
    });

    it("passes the app's trailers, streams a large body, and serves the static and http targets", async () => {
      const c = await connect(port, cert);
      try {
        const t = await h2request(c, { ':path': '/trailers' });
        expect(t.body.toString()).toBe('hello trailers');
        expect(t.trailers?.['x-checksum']).toBe('c0ffee');
        const big = await h2request(c, { ':path': '/bytes?n=5000000' });
        expect(big.body.length).toBe(5_000_000);
        const file = await h2request(c, { ':path': '/files/hello.txt' });
        expect(file.status).toBe(200);
        expect(file.body.toString()).toBe('static hello\n');
        const up = await h2request(c, { ':path': '/up/x?y=1' });
        expect(up.body.toString()).toBe('upstream /up/x?y=1');
        expect(up.headers['x-upstream']).toBe('yes');
        expect(up.headers.connection).toBeUndefined();
        // A request body of unknown length (no content-length): chunked to the front.
        const sent = Buffer.alloc(300_000, 7);
        const echo = await h2request(c, { ':path': '/echo', ':method': 'PUT' }, sent);
        const doc = JSON.parse(echo.body.toString()) as { body: string; headers: Record<string, string> };
        expect(doc.body.length).toBe(sent.length);
        expect(doc.headers['x-forwarded-proto']).toBe('https');
      } finally {
        c.close();
      }
    });

    it('h2load: 2000 requests over 4 connections, 10 streams each, none failed; the metrics count them', async () => {
      const count = async () => {
        const body = await (await fetch(`${s.admin}/metrics`)).text();
        return [...body.matchAll(/^http_server_request_duration_seconds_count\{[^}]*\} (\d+)/gm)].reduce(
          (n, m) => n + Number(m[1]),
          0,
        );
      };
      const before = await count();
      const r = await run('h2load', ['-n', '2000', '-c', '4', '-m', '10', `https://127.0.0.1:${port}/`]);
      expect(r.out).toMatch(/requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed/);
      expect(r.out).toMatch(/status codes: 2000 2xx/);
      console.log(r.out.split('\n').find((l) => l.startsWith('finished in')));
      // The workers report their counts every 500 ms.
      let after = before;
      for (let i = 0; i < 40 && after < before + 2000; i++) {
        await new Promise((res) => setTimeout(res, 100));
        after = await count();
      }
      expect(after - before).toBeGreaterThanOrEqual(2000);
    });

    it('a rolling reload (SIGHUP): streams in flight finish after their GOAWAY; a new session is served', async () => {
      const c = await connect(port, cert);
      let goawayAt = 0;
      c.on('goaway', () => (goawayAt = performance.now()));
      try {
        // Long enough for the roll to reach this connection's worker while they run: with 2 workers it
        // may be the second one drained, after a replacement start each (6 s was not always enough in CI).
        const slow = Array.from({ length: 4 }, () => h2request(c, { ':path': '/slow?ms=15000' }));
        await new Promise((r) => setTimeout(r, 300));
        process.kill(s.proc.pid!, 'SIGHUP');
        const answers = await Promise.all(slow);
        const answeredAt = performance.now();
        expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200]);
        expect(goawayAt).toBeGreaterThan(0);
        expect(goawayAt).toBeLessThan(answeredAt);
      } finally {
        c.destroy();
      }
      const fresh = await connect(port, cert);
      try {
        expect((await h2request(fresh, { ':path': '/' })).status).toBe(200);
      } finally {
        fresh.close();
      }
    });

    for (const [kind, max] of [
      ['rapid-reset', 200_000],
      ['continuation', 20_000],
      ['settings', 3_000_000],
      ['ping', 3_000_000],
    ] as const) {
      it(`a ${kind} flood: the server ends that connection, and the service still answers`, async () => {
        const r = await flood(port, kind, max);
        console.log(`${kind} flood: ${r.sent} frames sent before the server closed the connection`);
        expect(r.closedByServer).toBe(true);
        expect(r.sent).toBeLessThan(max);
        const after = await curl(cert, port, '/', ['-o', '/dev/null', '-w', '%{http_version} %{http_code}']);
        expect(after.out).toBe('2 200');
        if (kind === 'rapid-reset')
          await waitUntil(async () => s.logs().some((l) => /rapid reset/.test(String(l.msg))), {
            timeoutMs: 5_000,
            describe: () => 'no "rapid reset" line logged',
          });
      });
    }
  });
});

describe.skipIf(!peers)('h2c with prior knowledge on a plain listener (proxy.h2c, opt-in)', () => {
  let s: StratumProcess;
  let base: string;
  beforeAll(async () => {
    const dir = makeTempDir('h2c');
    writeFileSync(join(dir, 'stratum.yaml'), 'proxy: { h2c: true }\n');
    s = await startStratum([
      'serve',
      '--config',
      join(dir, 'stratum.yaml'),
      '--listen',
      '127.0.0.1:0',
      '--admin',
      '127.0.0.1:0',
      '--workers',
      '1',
      '--app',
      join(REPO_ROOT, 'test/edge/h2-app.ts'),
    ]);
    base = s.front!;
    expect(base).toMatch(/^http:\/\//);
  });
  afterAll(async () => {
    await s?.stop();
  });

  it('curl --http2-prior-knowledge gets h2, a plain HTTP/1.1 client still gets HTTP/1.1', async () => {
    const h2 = await run('curl', [
      '-sS',
      '--http2-prior-knowledge',
      '-w',
      '\n%{http_version}',
      '-d',
      'up',
      `${base}/echo`,
    ]);
    const [body, version] = h2.out.split('\n');
    expect(version).toBe('2');
    const doc = JSON.parse(body!) as { body: string; headers: Record<string, string> };
    expect(doc.body).toBe('up');
    expect(doc.headers['x-forwarded-proto']).toBe('http');
    const h1 = await run('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_version} %{http_code}', `${base}/`]);
    expect(h1.out).toBe('1.1 200');
    const t = await run('curl', ['-sS', '--http2-prior-knowledge', `${base}/trailers`]);
    expect(t.out).toBe('hello trailers');
  });

  it('h2load over h2c: 2000 requests, none failed', async () => {
    const r = await run('h2load', ['-n', '2000', '-c', '4', '-m', '10', `${base}/`]);
    expect(r.out).toMatch(/requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed/);
  });
});

describe.skipIf(!peers)('h2c off (the default)', () => {
  it('a plain listener does not speak h2 to a client with prior knowledge', async () => {
    const s = await startStratum([
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--admin',
      '127.0.0.1:0',
      '--workers',
      '1',
      '--app',
      join(REPO_ROOT, 'test/edge/h2-app.ts'),
    ]);
    try {
      const r = await run('curl', [
        '-sS',
        '--http2-prior-knowledge',
        '-o',
        '/dev/null',
        '-w',
        '%{http_version}',
        `${s.front}/`,
      ]);
      expect(r.code).not.toBe(0);
      expect(r.out).not.toBe('2');
    } finally {
      await s.stop();
    }
  });
});
