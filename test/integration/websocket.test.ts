// WebSockets to pool apps, through the front, for each app kind: a Fastify app with
// @fastify/websocket unchanged, a (req, res) app with an `upgrade(req, socket, head)` export, and a
// fetch app with an `upgrade` method beside `fetch` (the fixtures share ws-shared.ts). The client is
// `ws`. In the master topology the front is in the master and speaks uwsgi to the workers, which
// has no upgrade: there the documented answer is 501, and plain HTTP on the same app still works.
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { makeTempDir } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';

const MASTER = process.env.STRATUM_TOPOLOGY === 'master';
const KINDS = ['ws-fastify', 'ws-listener', 'ws-fetch'] as const;
const fixture = (kind: string) => join(REPO_ROOT, 'test/fixtures/apps', `${kind}.ts`);
const TIMEOUT_MS = 15_000;
/** The front's idle and header timeouts, short: a WebSocket must outlive both (it is no HTTP request any more). */
const SHORT_TIMEOUTS_S = 1;

afterAll(stopAllStratum);

interface Received {
  data: Buffer;
  isBinary: boolean;
}

/** A connected client whose messages and close are queued, so a test awaits them in order. */
interface Client {
  ws: WebSocket;
  next(): Promise<Received>;
  closed: Promise<{ code: number; reason: string }>;
}

function wsUrl(front: string, tag: string): string {
  return `${front.replace(/^http/, 'ws')}/ws?tag=${encodeURIComponent(tag)}`;
}

function connect(url: string): Promise<Client> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { maxPayload: 64 * 1024 * 1024 });
    const queue: Received[] = [];
    const waiting: ((r: Received) => void)[] = [];
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      const got = { data, isBinary };
      const w = waiting.shift();
      if (w) w(got);
      else queue.push(got);
    });
    const closed = new Promise<{ code: number; reason: string }>((res) =>
      ws.once('close', (code, reason) => res({ code, reason: reason.toString('utf8') })),
    );
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`${url}: not open within ${TIMEOUT_MS} ms`));
    }, TIMEOUT_MS);
    ws.once('open', () => {
      clearTimeout(timer);
      resolve({
        ws,
        closed: bounded(closed, 'close'),
        next: () =>
          bounded(
            new Promise<Received>((res) => {
              const got = queue.shift();
              if (got) res(got);
              else waiting.push(res);
            }),
            'message',
          ),
      });
    });
    ws.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

function bounded<T>(p: Promise<T>, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${what} within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
    p.then((v) => {
      clearTimeout(timer);
      resolve(v);
    }, reject);
  });
}

/** What a plain upgrade attempt gets when the server does not switch protocols. */
function refusedStatus(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`${url}: no answer within ${TIMEOUT_MS} ms`));
    }, TIMEOUT_MS);
    ws.once('unexpected-response', (_req, res) => {
      clearTimeout(timer);
      res.resume();
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once('open', () => {
      clearTimeout(timer);
      ws.terminate();
      reject(new Error(`${url}: the upgrade was accepted`));
    });
    ws.once('error', (err) => {
      if (err.message.startsWith('Unexpected server response')) return; // 'unexpected-response' answers
      clearTimeout(timer);
      reject(err);
    });
  });
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

for (const kind of KINDS) {
  describe(`WebSocket to a pool app, ${kind}`, () => {
    let s: StratumProcess;
    let tagSeq = 0;
    const tag = () => `${kind}-${process.pid}-${++tagSeq}`;

    beforeAll(async () => {
      const config = join(makeTempDir('ws'), 'stratum.yaml');
      const t = SHORT_TIMEOUTS_S;
      writeFileSync(config, `proxy:\n  keepAliveTimeout: ${t}\n  clientHeaderTimeout: ${t}\n`);
      s = await startStratum([
        'serve',
        '--config',
        config,
        '--listen',
        '127.0.0.1:0',
        '--admin',
        '127.0.0.1:0',
        '--workers',
        '2',
        '--app',
        fixture(kind),
      ]);
    });
    afterAll(async () => {
      if (s) expect(await s.stop(), `exit code after SIGTERM\n${s.stderr()}`).toBe(0);
    });

    it('answers plain HTTP requests on the same app', async () => {
      const res = await fetch(`${s.front}/`);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ hello: 'world', kind });
    });

    if (MASTER) {
      it('answers an upgrade with 501 in the master topology (uwsgi cannot upgrade), then serves HTTP', async () => {
        expect(await refusedStatus(wsUrl(s.front!, tag()))).toBe(501);
        const res = await fetch(`${s.front}/`);
        expect(res.status).toBe(200);
        expect(await res.json()).toEqual({ hello: 'world', kind });
      });
      return;
    }

    it('echoes text messages, UTF-8 intact', async () => {
      const c = await connect(wsUrl(s.front!, tag()));
      for (const text of ['hello', '', 'héllo wörld ✓ 🚀', 'x'.repeat(70_000)]) {
        c.ws.send(text);
        const got = await c.next();
        expect(got.isBinary).toBe(false);
        expect(got.data.toString('utf8')).toBe(text);
      }
      c.ws.close();
      await c.closed;
    });

    it('echoes binary frames as binary, with exactly the bytes sent (every frame-length encoding)', async () => {
      const c = await connect(wsUrl(s.front!, tag()));
      // 125 / 126 / 65535 / 65536: the edges of the 7-bit, 16-bit and 64-bit payload lengths.
      for (const size of [0, 1, 125, 126, 127, 65_535, 65_536, 200_000]) {
        const sent = randomBytes(size);
        c.ws.send(sent, { binary: true });
        const got = await c.next();
        expect(got.isBinary, `${size} bytes`).toBe(true);
        expect(got.data.length, `${size} bytes`).toBe(size);
        expect(got.data.equals(sent), `${size} bytes`).toBe(true);
      }
      c.ws.close();
      await c.closed;
    });

    it('echoes one 10 MB message intact', async () => {
      const c = await connect(wsUrl(s.front!, tag()));
      const sent = randomBytes(10 * 1024 * 1024);
      c.ws.send(sent, { binary: true });
      const got = await c.next();
      expect(got.isBinary).toBe(true);
      expect(got.data.length).toBe(sent.length);
      expect(sha256(got.data)).toBe(sha256(sent));
      c.ws.close();
      await c.closed;
    });

    it('keeps messages in order on one connection and serves many connections at once', async () => {
      const clients = await Promise.all(Array.from({ length: 8 }, () => connect(wsUrl(s.front!, tag()))));
      for (const [i, c] of clients.entries()) for (let m = 0; m < 20; m++) c.ws.send(`${i}:${m}`);
      for (const [i, c] of clients.entries()) {
        for (let m = 0; m < 20; m++) expect((await c.next()).data.toString()).toBe(`${i}:${m}`);
      }
      for (const c of clients) c.ws.close();
      await Promise.all(clients.map((c) => c.closed));
    });

    it('forwards the upgrade request to the app with X-Forwarded-* and X-Request-Id', async () => {
      const c = await connect(wsUrl(s.front!, tag()));
      c.ws.send('headers');
      const doc = JSON.parse((await c.next()).data.toString()) as { kind: string; headers: Record<string, string> };
      expect(doc.kind).toBe(kind);
      expect(doc.headers['x-forwarded-for']).toBe('127.0.0.1');
      expect(doc.headers['x-forwarded-proto']).toBe('http');
      expect(doc.headers['x-forwarded-host']).toBe(new URL(s.front!).host);
      expect(doc.headers['x-request-id']).toMatch(/\S/);
      expect(doc.headers.upgrade?.toLowerCase()).toBe('websocket');
      c.ws.close();
      await c.closed;
    });

    it("keeps an idle connection open past the front's keep-alive and header timeouts", async () => {
      const c = await connect(wsUrl(s.front!, tag()));
      let closedEarly = false;
      void c.closed.then(
        () => (closedEarly = true),
        () => {},
      );
      await new Promise((r) => setTimeout(r, SHORT_TIMEOUTS_S * 2500));
      expect(closedEarly).toBe(false);
      c.ws.send('still here');
      expect((await c.next()).data.toString()).toBe('still here');
      c.ws.close();
      await c.closed;
    });

    it('delivers a close the client starts to the app, with its code and reason', async () => {
      const t = tag();
      const c = await connect(wsUrl(s.front!, t));
      c.ws.send('ping');
      await c.next();
      c.ws.close(4001, 'client says bye');
      // The server answers the close frame with the same code: the closing handshake completed.
      expect(await c.closed).toEqual({ code: 4001, reason: 'client says bye' });
      const seen = () => s.logs().find((l) => l.wsFixture === 'closed' && l.tag === t);
      const started = Date.now();
      while (!seen() && Date.now() - started < TIMEOUT_MS) await new Promise((r) => setTimeout(r, 20));
      expect(seen(), 'the app printed the close it saw').toEqual({
        wsFixture: 'closed',
        kind,
        tag: t,
        code: 4001,
        reason: 'client says bye',
      });
    });

    it('delivers a close the server starts to the client, with its code and reason', async () => {
      const c = await connect(wsUrl(s.front!, tag()));
      c.ws.send('close 4002 server says bye');
      expect(await c.closed).toEqual({ code: 4002, reason: 'server says bye' });
    });
  });
}
