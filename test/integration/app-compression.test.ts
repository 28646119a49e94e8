// Compression of what an app answers, at the front: the in-process app (worker topology) or a pool
// worker's uwsgi answer (master topology; vitest runs this file in both), and a real uWSGI + Flask
// behind a uwsgi route. curl --compressed is the client: what it decodes proves the encoding.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requirePeer, startUwsgi, type PeerProcess } from '../helpers/peers.ts';
import { makeTempDir } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { writeConfig } from '../hardening/helpers.ts';

afterAll(stopAllStratum);

const run = promisify(execFile);
const HAS_CURL = requirePeer('curl');
const HAS_UWSGI = requirePeer('uwsgi');
const PAD = 'x'.repeat(3000); // an echo document well over proxy.compression.minLength (1 KiB)
let tmp = '';
let seq = 0;

interface CurlReply {
  status: number;
  headers: Record<string, string>;
  body: string;
}

async function curl(url: string, ...args: string[]): Promise<CurlReply> {
  const n = ++seq;
  const headFile = join(tmp, `h${n}`);
  const bodyFile = join(tmp, `b${n}`);
  await run('curl', ['-sS', '--max-time', '20', '-D', headFile, '-o', bodyFile, ...args, url]);
  const lines = readFileSync(headFile, 'latin1')
    .trim()
    .split(/\r\n\r\n/)
    .at(-1)!
    .split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  let body = '';
  try {
    body = readFileSync(bodyFile, 'utf8');
  } catch {
    // no body
  }
  return { status: Number(lines[0]!.split(' ')[1]), headers, body };
}

describe.skipIf(!HAS_CURL)('compression of app answers', () => {
  let s: StratumProcess;
  let uwsgi: PeerProcess | null = null;

  beforeAll(async () => {
    tmp = makeTempDir('app-compression');
    const app = join(REPO_ROOT, 'test/fixtures/apps/fastify.ts');
    if (HAS_UWSGI) uwsgi = await startUwsgi({ processes: 1 });
    const flaskRoute = uwsgi ? `  - { path: /echo/flask/, target: "uwsgi://${uwsgi.address}" }\n` : '';
    const { file } = writeConfig(
      'app-compression',
      `listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\napp: { module: ${JSON.stringify(app)} }\n` +
        `pool: { workers: 1, socket: ${JSON.stringify(join(tmp, 'pool.sock'))} }\n` +
        `routes:\n${flaskRoute}  - { path: /echo/plain/, target: pool, compression: false }\n` +
        '  - { path: /, target: pool }\n',
    );
    s = await startStratum(['serve', '--config', file]);
  }, 60_000);

  afterAll(async () => {
    if (s) expect(await s.stop()).toBe(0);
    await uwsgi?.stop();
  });

  for (const encoding of ['gzip', 'br'] as const) {
    it(`encodes a large JSON answer as ${encoding} when the client accepts it, with Vary`, async () => {
      const r = await curl(
        `${s.front}/echo`,
        '--compressed',
        '-H',
        `Accept-Encoding: ${encoding}`,
        '-H',
        `X-Pad: ${PAD}`,
      );
      expect(r.status).toBe(200);
      expect(r.headers['content-encoding']).toBe(encoding);
      expect(r.headers['vary']?.toLowerCase()).toContain('accept-encoding');
      expect(r.headers['content-length']).toBeUndefined();
      // Server-Timing and the request id still ride on the encoded answer's head.
      expect(r.headers['x-request-id']).toBeTruthy();
      const doc = JSON.parse(r.body) as { method: string; headers: [string, string][] };
      expect(doc.method).toBe('GET');
      expect(doc.headers.find(([k]) => k.toLowerCase() === 'x-pad')?.[1]).toBe(PAD);
    });
  }

  it('leaves the answer alone when the client accepts no encoding', async () => {
    const r = await curl(`${s.front}/echo`, '-H', `X-Pad: ${PAD}`);
    expect(r.status).toBe(200);
    expect(r.headers['content-encoding']).toBeUndefined();
    expect(JSON.parse(r.body)).toMatchObject({ method: 'GET' });
  });

  it('leaves a small answer alone (under minLength)', async () => {
    const r = await curl(`${s.front}/`, '--compressed', '-H', 'Accept-Encoding: gzip');
    expect(r.status).toBe(200);
    expect(r.headers['content-encoding']).toBeUndefined();
  });

  it('leaves a HEAD alone', async () => {
    const r = await curl(`${s.front}/echo`, '-I', '-H', 'Accept-Encoding: gzip', '-H', `X-Pad: ${PAD}`);
    expect(r.status).toBe(200);
    expect(r.headers['content-encoding']).toBeUndefined();
  });

  it('leaves a route with compression: false alone', async () => {
    const r = await curl(
      `${s.front}/echo/plain/x`,
      '--compressed',
      '-H',
      'Accept-Encoding: gzip',
      '-H',
      `X-Pad: ${PAD}`,
    );
    expect(r.status).toBe(200);
    expect(r.headers['content-encoding']).toBeUndefined();
    expect(JSON.parse(r.body)).toMatchObject({ method: 'GET' });
  });

  it.skipIf(!HAS_UWSGI)('encodes what a real uWSGI + Flask answers over a uwsgi route', async () => {
    const r = await curl(
      `${s.front}/echo/flask/x`,
      '--compressed',
      '-H',
      'Accept-Encoding: gzip',
      '-H',
      `X-Pad: ${PAD}`,
    );
    expect(r.status).toBe(200);
    expect(r.headers['content-encoding']).toBe('gzip');
    const doc = JSON.parse(r.body) as { headers: [string, string][] };
    expect(doc.headers.find(([k]) => k.toLowerCase() === 'x-pad')?.[1]).toBe(PAD);
  });
});
