// The admin surface: loopback unless told otherwise; with admin.token set, everything but
// /livez, /readyz (and /metrics while admin.metricsPublic is true) needs
// `Authorization: Bearer <token>`; state-changing endpoints take POST only.
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.ts';
import { schema } from '../../src/config/schema.ts';
import { canConnect } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { writeConfig } from './helpers.ts';

afterAll(stopAllStratum);

const APP = join(REPO_ROOT, 'test/hardening/fixtures/app.ts');
const TOKEN = 'hardening-token-0b5e';

async function start(admin: string): Promise<StratumProcess> {
  const { file } = writeConfig('admin', `
listen: 127.0.0.1:0
app: { module: ${APP} }
pool: { workers: 1 }
${admin}
`);
  return startStratum(['serve', '--config', file]);
}

async function status(url: string, init: RequestInit = {}): Promise<{ status: number; wwwAuthenticate: string | null; allow: string | null }> {
  const ac = new AbortController();
  const r = await fetch(url, { ...init, signal: ac.signal });
  const out = { status: r.status, wwwAuthenticate: r.headers.get('www-authenticate'), allow: r.headers.get('allow') };
  ac.abort(); // /live is an endless event stream
  return out;
}

const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

describe('admin listener address', () => {
  it('defaults to 127.0.0.1 (schema, loaded config)', () => {
    expect(schema.parse({}).admin.listen).toBe('127.0.0.1:9900');
    expect(loadConfig({ mode: 'serve', env: {}, flags: { app: APP } }).admin.listen).toBe('127.0.0.1:9900');
    // Only an explicit address exposes it.
    expect(loadConfig({ mode: 'serve', env: { STRATUM_ADMIN: '0.0.0.0:9900' }, flags: { app: APP } }).admin.listen).toBe('0.0.0.0:9900');
  });

  it('a stratum started without an admin address listens on loopback only (ready line)', async (t) => {
    if (await canConnect({ host: '127.0.0.1', port: 9900 })) return t.skip('127.0.0.1:9900 is taken on this machine');
    let s: StratumProcess;
    try {
      s = await start('');
    } catch (err) {
      if (/address already in use/.test(String(err))) return t.skip('127.0.0.1:9900 was taken meanwhile');
      throw err;
    }
    expect(s.ready.admin).toBe('http://127.0.0.1:9900');
    expect((await status(`${s.admin}/livez`)).status).toBe(200);
    const external = Object.values(networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal);
    if (external) expect(await canConnect({ host: external.address, port: 9900 })).toBe(false);
    await s.stop();
  });
});

describe('admin with a token, metrics public', () => {
  let s: StratumProcess;
  afterAll(() => s?.stop());

  it('starts', async () => {
    s = await start(`admin: { listen: 127.0.0.1:0, token: ${TOKEN}, metricsPublic: true }`);
  });

  for (const path of ['/stats', '/traces', '/traces?kind=slow', '/live', '/live/history']) {
    it(`GET ${path} needs the bearer token`, async () => {
      const none = await status(`${s.admin}${path}`);
      expect(none.status).toBe(401);
      expect(none.wwwAuthenticate).toMatch(/^Bearer/);
      expect((await status(`${s.admin}${path}`, { headers: bearer('wrong') })).status).toBe(401);
      expect((await status(`${s.admin}${path}`, { headers: bearer(`${TOKEN}x`) })).status).toBe(401);
      expect((await status(`${s.admin}${path}`, { headers: { authorization: TOKEN } })).status).toBe(401);
      expect((await status(`${s.admin}${path}`, { headers: bearer(TOKEN) })).status).toBe(200);
    });
  }

  it('POST /reload needs the token; GET /reload is 405', async () => {
    expect((await status(`${s.admin}/reload`, { method: 'POST' })).status).toBe(401);
    expect((await status(`${s.admin}/reload`, { method: 'POST', headers: bearer('nope') })).status).toBe(401);
    const get = await status(`${s.admin}/reload`, { headers: bearer(TOKEN) });
    expect(get.status).toBe(405);
    expect(get.allow).toBe('POST');
    expect((await status(`${s.admin}/reload`)).status).toBe(405);
    expect((await status(`${s.admin}/reload`, { method: 'POST', headers: bearer(TOKEN) })).status).toBe(202);
  });

  it('read-only endpoints refuse other methods', async () => {
    for (const path of ['/stats', '/metrics', '/livez']) {
      expect((await status(`${s.admin}${path}`, { method: 'POST', headers: bearer(TOKEN) })).status).toBe(405);
      expect((await status(`${s.admin}${path}`, { method: 'DELETE', headers: bearer(TOKEN) })).status).toBe(405);
    }
  });

  it('/metrics, /livez and /readyz stay open', async () => {
    for (const path of ['/metrics', '/livez', '/readyz']) expect((await status(`${s.admin}${path}`)).status).toBe(200);
  });
});

describe('admin with a token, metrics private', () => {
  it('/metrics needs the token too; /livez and /readyz stay open', async () => {
    const s = await start(`admin: { listen: 127.0.0.1:0, token: ${TOKEN}, metricsPublic: false }`);
    expect((await status(`${s.admin}/metrics`)).status).toBe(401);
    expect((await status(`${s.admin}/metrics`, { headers: bearer('wrong') })).status).toBe(401);
    expect((await status(`${s.admin}/metrics`, { headers: bearer(TOKEN) })).status).toBe(200);
    expect((await status(`${s.admin}/livez`)).status).toBe(200);
    expect((await status(`${s.admin}/readyz`)).status).toBe(200);
    expect((await status(`${s.admin}/stats`)).status).toBe(401);
    await s.stop();
  });
});
