// The HTTP behaviours every path through the stack must keep, registered as vitest tests against
// any base URL: stratum's own front, nginx in front of stratum's pool, stratum in front of uWSGI.
// The fixture apps (test/fixtures) answer the same routes in each kind, so one list serves all.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { patternSha256, type BodyDigest, type EchoDocument } from './fixtures/apps/shared.ts';
import {
  headerValues,
  keepAliveRun,
  parseJson,
  rawRequest,
  sha256,
  singleSocketAgent,
  streamRequest,
  uploadChunks,
  type HeaderList,
  type RawRequest,
} from './helpers/http.ts';

export type AppKind = 'fastify' | 'listener' | 'fetch' | 'flask';

export interface CaseOptions {
  kind: AppKind;
  /** What sits in front of the app: 'stratum' (its proxy adds X-Forwarded-*), 'nginx', … */
  via: string;
}

const MiB = 1024 * 1024;

/** Splits header values the way proxies may have joined repeats (", ", or "; " for Cookie). */
function splitJoined(values: string[], separator: RegExp): string[] {
  return values.flatMap((v) => v.split(separator)).map((v) => v.trim());
}

export function httpCases(label: string, getBase: () => string, opts: CaseOptions): void {
  const { kind } = opts;
  const viaStratum = opts.via === 'stratum';

  async function echo(req: Omit<RawRequest, 'path'> & { path?: string }) {
    const res = await rawRequest(getBase(), { path: '/echo', ...req });
    expect(res.status, res.body.toString('utf8', 0, 300)).toBe(200);
    return parseJson<EchoDocument & { traceparent?: string }>(res);
  }
  const values = (doc: EchoDocument, name: string) => headerValues(doc.headers as HeaderList, name);

  describe(label, () => {
    it("GET / answers the app's hello document", async () => {
      const res = await rawRequest(getBase(), { path: '/' });
      expect(res.status).toBe(200);
      expect(res.headers['content-type']).toMatch(/application\/json/);
      expect(parseJson(res)).toEqual({ hello: 'world', kind });
    });

    for (const method of ['GET', 'POST', 'PUT', 'DELETE', 'PATCH']) {
      const body = method === 'GET' ? undefined : Buffer.from(`${method} body ✓`);
      it(`${method} reaches the app with its method${body ? ' and body' : ''}`, async () => {
        const doc = await echo({
          method,
          path: '/echo/method',
          body,
          headers: body ? [['Content-Type', 'text/plain']] : [],
        });
        expect(doc.method).toBe(method);
        expect(doc.bodyLength).toBe(body?.length ?? 0);
        if (body) expect(doc.bodySha256).toBe(sha256(body));
      });
    }

    it('the query string arrives untouched', async () => {
      const target = '/echo?x=1&y=%20&z=a+b&empty=&list=1&list=2&u=caf%C3%A9';
      expect((await echo({ path: target })).url).toBe(target);
    });

    it('a percent-encoded UTF-8 path keeps its raw form', async () => {
      const target = '/echo/caf%C3%A9/%E6%97%A5%E6%9C%AC%20x?q=%C3%A9&y=%20';
      expect((await echo({ path: target })).url).toBe(target);
    });

    // nginx 1.22 passes a repeated header as repeated uwsgi vars, newer nginx and most proxies join
    // them: either is fine as long as no value is lost. uWSGI keeps only the last of repeated vars
    // in the WSGI environ, so in front of uWSGI (kind flask) the proxy has to join them itself.
    it('repeated request headers (two X-Multi, two Cookie lines) all arrive', async () => {
      const doc = await echo({
        headers: [
          ['X-Multi', 'one'],
          ['X-Multi', 'two'],
          ['Cookie', 'a=1'],
          ['Cookie', 'b=2'],
        ],
      });
      expect(splitJoined(values(doc, 'x-multi'), /,/)).toEqual(expect.arrayContaining(['one', 'two']));
      expect(splitJoined(values(doc, 'cookie'), /[;,]/)).toEqual(expect.arrayContaining(['a=1', 'b=2']));
    });

    it('three Set-Cookie headers reach the client as three', async () => {
      const res = await rawRequest(getBase(), { path: '/cookies' });
      expect(res.status).toBe(200);
      const cookies = headerValues(res.rawHeaders, 'set-cookie');
      expect(cookies).toHaveLength(3);
      expect(cookies.map((c) => c.split(';')[0])).toEqual(['a=1', 'b=2', 'c=3']);
      expect(res.body.toString()).toBe('ok');
    });

    it('HEAD answers the headers of GET and no body', async () => {
      // On one kept connection: a body wrongly sent after a HEAD answer would be parsed as the
      // start of the next response and break the GET that follows.
      const agent = singleSocketAgent();
      try {
        const get = await rawRequest(getBase(), { path: '/', agent });
        const head = await rawRequest(getBase(), { method: 'HEAD', path: '/', agent });
        expect(head.status).toBe(200);
        expect(head.body.length).toBe(0);
        expect(head.headers['content-type']).toBe(get.headers['content-type']);
        if (head.headers['content-length'] !== undefined) {
          expect(head.headers['content-length']).toBe(String(get.body.length));
        }
        const after = await rawRequest(getBase(), { path: '/', agent });
        expect(parseJson(after)).toEqual({ hello: 'world', kind });
      } finally {
        agent.destroy();
      }
    });

    it('204 and 304 answer with no body', async () => {
      const agent = singleSocketAgent();
      try {
        for (const code of [204, 304]) {
          const res = await rawRequest(getBase(), { path: `/status/${code}`, agent });
          expect(res.status).toBe(code);
          expect(res.body.length).toBe(0);
          expect(res.headers['transfer-encoding']).toBeUndefined();
        }
        // Any stray bytes (a chunked terminator after a 204) would corrupt this next response.
        const after = await rawRequest(getBase(), { path: '/', agent });
        expect(parseJson(after)).toEqual({ hello: 'world', kind });
      } finally {
        agent.destroy();
      }
    });

    it('a 12 KB Cookie header arrives whole', async () => {
      const big = `big=${'x'.repeat(12 * 1024)}`;
      const doc = await echo({ headers: [['Cookie', big]] });
      expect(splitJoined(values(doc, 'cookie'), /;/)).toContain(big);
    });

    it('a chunked upload (no Content-Length) arrives byte-exact', async () => {
      const expected = sha256(uploadChunks(64, 16 * 1024));
      const res = await rawRequest(getBase(), {
        method: 'POST',
        path: '/upload',
        headers: [['Content-Type', 'application/octet-stream']],
        body: uploadChunks(64, 16 * 1024),
      });
      expect(res.status, res.body.toString('utf8', 0, 300)).toBe(200);
      expect(parseJson<BodyDigest>(res)).toEqual({ bytes: MiB, sha256: expected });
    });

    it('a 20 MB upload arrives byte-exact', async () => {
      const body = randomBytes(20 * MiB);
      const res = await rawRequest(getBase(), {
        method: 'POST',
        path: '/upload',
        headers: [['Content-Type', 'application/octet-stream']],
        body,
        timeoutMs: 50_000,
      });
      expect(res.status, res.body.toString('utf8', 0, 300)).toBe(200);
      expect(parseJson<BodyDigest>(res)).toEqual({ bytes: body.length, sha256: sha256(body) });
    });

    it('a 10 MB download of unknown length arrives byte-exact', async () => {
      const total = 10 * MiB;
      const res = await streamRequest(getBase(), { path: `/download/${total}`, timeoutMs: 50_000 });
      expect(res.status).toBe(200);
      expect({ bytes: res.bytes, sha256: res.sha256 }).toEqual({ bytes: total, sha256: patternSha256(total) });
    });

    it('a download with Content-Length keeps it', async () => {
      const total = MiB + 17;
      const res = await streamRequest(getBase(), { path: `/download/${total}?length=1` });
      expect(res.status).toBe(200);
      expect(res.headers['content-length']).toBe(String(total));
      expect({ bytes: res.bytes, sha256: res.sha256 }).toEqual({ bytes: total, sha256: patternSha256(total) });
    });

    it('100 requests share one keep-alive connection', async () => {
      const run = await keepAliveRun(getBase(), { path: '/' }, 100);
      expect(run.responses.map((r) => r.status)).toEqual(Array(100).fill(200));
      expect(run.socketCount).toBe(1);
      expect(run.responses.filter((r) => r.reusedSocket)).toHaveLength(99);
    });

    // A Fetch handler gets the peer in its second argument (FetchConnInfo.remoteAddress).
    it('the app sees the client address 127.0.0.1', async () => {
      expect((await echo({})).remoteAddress).toBe('127.0.0.1');
    });

    it('the app sees the scheme http', async () => {
      expect((await echo({})).scheme).toBe('http');
    });

    it.runIf(viaStratum)('the proxy adds X-Forwarded-For/-Proto/-Host and X-Request-Id', async () => {
      const host = new URL(getBase()).host;
      const doc = await echo({});
      expect(splitJoined(values(doc, 'x-forwarded-for'), /,/)).toContain('127.0.0.1');
      expect(values(doc, 'x-forwarded-proto')).toEqual(['http']);
      expect(values(doc, 'x-forwarded-host')).toEqual([host]);
      const ids = values(doc, 'x-request-id');
      expect(ids).toHaveLength(1);
      expect(ids[0]).toMatch(/\S{8,}/);
    });

    it('a slow handler answers once it is done', async () => {
      const started = Date.now();
      const res = await rawRequest(getBase(), { path: '/slow?ms=300' });
      expect(res.status).toBe(200);
      expect(parseJson(res)).toEqual({ slept: 300 });
      expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    });

    it('an app that throws answers 500', async () => {
      const res = await rawRequest(getBase(), { path: '/fail' });
      expect(res.status).toBe(500);
    });
  });
}
