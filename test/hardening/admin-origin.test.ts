// The admin surface cannot be driven or read from a web page: a Host that does not name the admin
// gets 421 (DNS rebinding), a POST with a foreign Origin, a cross-site Sec-Fetch-Site or a
// non-JSON Content-Type gets 403 (the "simple" requests a page may send anywhere), and an admin
// bound beyond loopback without a token serves only /metrics, /livez and /readyz. node:http
// requests, which send the Host and Origin we give them, and a real Chromium.
import { accessSync, constants } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { portOf, sleep, writeConfig } from './helpers.ts';

afterAll(stopAllStratum);

const APP = join(REPO_ROOT, 'test/hardening/fixtures/app.ts');
const CHROMIUM = '/usr/bin/chromium';
const TOKEN = 'admin-origin-token-7f3a';

async function start(admin: string): Promise<StratumProcess> {
  const { file } = writeConfig('admin-origin', `
listen: 127.0.0.1:0
app: { module: ${APP} }
pool: { workers: 1 }
log: { access: false }
admin: { ${admin} }
`);
  return startStratum(['serve', '--config', file]);
}

interface Answer { status: number; body: string }

/** One request to 127.0.0.1:`port` with exactly these headers (Host included). */
type Headers = Record<string, string>;
function ask(port: number, method: string, path: string, headers: Headers, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const opts = { host: '127.0.0.1', port, method, path, headers, setHost: false, agent: false };
    const req = http.request(opts, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function reloads(s: StratumProcess, headers: Record<string, string> = {}): Promise<number> {
  return ((await (await fetch(`${s.admin}/stats`, { headers })).json()) as { reloads: number }).reloads;
}

describe('loopback admin, no token (the default)', () => {
  let s: StratumProcess;
  let port: number;
  let own: string;
  beforeAll(async () => {
    s = await start('listen: 127.0.0.1:0');
    port = portOf(s.admin);
    own = `127.0.0.1:${port}`;
  });
  afterAll(() => s?.stop());

  const paths = ['/stats', '/traces', '/metrics', '/livez', '/'];
  it.each(paths)('GET %s with a Host naming another site: 421', async (path) => {
    for (const host of ['evil.example', `evil.example:${port}`, `rebind.attacker.test:${port}`]) {
      const r = await ask(port, 'GET', path, { host });
      expect(r.status).toBe(421);
      expect(r.body).toContain('STRATUM_ERR_ADMIN_HOST');
    }
  });

  it('a Host naming the admin: its IP, localhost, [::1]', async () => {
    for (const host of [own, '127.0.0.1', `localhost:${port}`, `LOCALHOST:${port}`, `[::1]:${port}`]) {
      expect((await ask(port, 'GET', '/stats', { host })).status).toBe(200);
    }
  });

  const crossSite: Array<[string, Record<string, string>, string | undefined]> = [
    ['a foreign Origin', { origin: 'http://evil.example' }, undefined],
    ['Origin: null (a sandboxed page)', { origin: 'null' }, undefined],
    ['another port of the same host (same-site, not same-origin)', { origin: 'http://127.0.0.1:1' }, undefined],
    ['text/plain', { 'content-type': 'text/plain' }, 'x'],
    ['text/plain;charset=UTF-8', { 'content-type': 'text/plain;charset=UTF-8' }, 'x'],
    ['a form', { 'content-type': 'application/x-www-form-urlencoded' }, 'a=1'],
    ['multipart', { 'content-type': 'multipart/form-data; boundary=b' }, '--b--\r\n'],
    ['Sec-Fetch-Site: cross-site', { 'sec-fetch-site': 'cross-site' }, undefined],
    ['Sec-Fetch-Site: same-site', { 'sec-fetch-site': 'same-site' }, undefined],
  ];
  it.each(crossSite)('POST /reload with %s: 403, no reload', async (_what, headers, body) => {
    const r = await ask(port, 'POST', '/reload', { host: own, ...headers }, body);
    expect(r.status).toBe(403);
    expect(r.body).toContain('STRATUM_ERR_ADMIN_CROSS_SITE');
    expect(await reloads(s)).toBe(0);
  });

  it('POST /reload from a script (no Origin) or the admin\'s own origin with JSON: accepted', async () => {
    expect((await ask(port, 'POST', '/reload', { host: own })).status).toBe(202);
    const json = { host: own, origin: `http://${own}`, 'content-type': 'application/json', 'sec-fetch-site': 'same-origin' };
    expect((await ask(port, 'POST', '/reload', json, '{}')).status).toBe(202);
    expect(await reloads(s)).toBe(2);
  });
});

describe('admin.allowedHosts', () => {
  it('names in the list are answered, others get 421', async () => {
    const s = await start('listen: 127.0.0.1:0, allowedHosts: [stratum.internal, Admin.Example]');
    const port = portOf(s.admin);
    expect((await ask(port, 'GET', '/stats', { host: `stratum.internal:${port}` })).status).toBe(200);
    expect((await ask(port, 'GET', '/stats', { host: 'admin.example' })).status).toBe(200);
    expect((await ask(port, 'GET', '/stats', { host: 'stratum.internal.evil.example' })).status).toBe(421);
    await s.stop();
  });
});

describe('an admin beyond loopback', () => {
  it('without a token: only /metrics, /livez, /readyz (others 403), and a warning at start', async () => {
    const s = await start('listen: 0.0.0.0:0');
    const port = portOf(s.admin.replace('0.0.0.0', '127.0.0.1'));
    const host = `127.0.0.1:${port}`;
    for (const path of ['/metrics', '/livez', '/readyz']) {
      expect((await ask(port, 'GET', path, { host })).status).toBe(200);
    }
    for (const path of ['/stats', '/traces', '/live/history', '/']) {
      const r = await ask(port, 'GET', path, { host });
      expect(r.status).toBe(403);
      expect(r.body).toContain('STRATUM_ERR_ADMIN_EXPOSED');
    }
    expect((await ask(port, 'POST', '/reload', { host })).status).toBe(403);
    const warning = s.logs().find((l) => l.code === 'STRATUM_ERR_ADMIN_EXPOSED' && l.level === 'warn');
    expect(warning?.msg).toMatch(/without admin.token: it serves only \/metrics, \/livez and \/readyz/);
    await s.stop();
  });

  it('with a token: everything, behind the token; no warning', async () => {
    const s = await start(`listen: 0.0.0.0:0, token: ${TOKEN}`);
    const port = portOf(s.admin.replace('0.0.0.0', '127.0.0.1'));
    const host = `127.0.0.1:${port}`;
    expect((await ask(port, 'GET', '/stats', { host })).status).toBe(401);
    expect((await ask(port, 'GET', '/stats', { host, authorization: `Bearer ${TOKEN}` })).status).toBe(200);
    expect(s.logs().some((l) => l.code === 'STRATUM_ERR_ADMIN_EXPOSED')).toBe(false);
    await s.stop();
  });
});

/** Like requirePeer: a missing browser fails under CI and skips, with the reason, elsewhere. */
function requireChromium(): boolean {
  try {
    accessSync(CHROMIUM, constants.X_OK);
    return true;
  } catch {
    const reason = `${CHROMIUM} is not installed (apt-get install chromium)`;
    if (process.env.CI) throw new Error(`CI requires chromium: ${reason}`);
    console.warn(`skipping the admin browser tests: ${reason}`);
    return false;
  }
}

describe.skipIf(!requireChromium())('a page in Chromium', () => {
  let s: StratumProcess;
  let browser: Browser;
  let evil: http.Server;
  let evilPort: number;
  beforeAll(async () => {
    s = await start('listen: 127.0.0.1:0');
    evil = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<p>evil</p>'));
    await new Promise<void>((r) => evil.listen(0, '127.0.0.1', r));
    evilPort = (evil.address() as AddressInfo).port;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      // evil.example resolves to loopback: what a DNS-rebinding attacker arranges.
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
        '--host-resolver-rules=MAP evil.example 127.0.0.1'],
    });
  });
  afterAll(async () => {
    await browser?.close();
    evil?.close();
    await s?.stop();
  });

  it('a no-cors POST to /reload from another origin does not reload', async () => {
    const page = await browser.newPage();
    try {
      await page.goto(`http://127.0.0.1:${evilPort}/`);
      const admin = s.admin;
      const sent = await page.evaluate(async (url) => {
        const results: string[] = [];
        for (const body of ['x', new URLSearchParams({ a: '1' }), new Blob(['x'])]) {
          try {
            await fetch(`${url}/reload`, { method: 'POST', mode: 'no-cors', body });
            results.push('sent');
          } catch (err) {
            results.push(String(err));
          }
        }
        return results;
      }, admin);
      expect(sent).toEqual(['sent', 'sent', 'sent']); // opaque answers: the page cannot tell
      await sleep(300);
      expect(await reloads(s)).toBe(0);
    } finally {
      await page.close();
    }
  });

  it('a page on a rebound name cannot read the admin', async () => {
    const page = await browser.newPage();
    try {
      const r = await page.goto(`http://evil.example:${portOf(s.admin)}/livez`);
      expect(r?.status()).toBe(421);
      const seen = await page.evaluate(async () => {
        const stats = await fetch('/stats');
        return { status: stats.status, text: await stats.text() };
      });
      expect(seen.status).toBe(421);
      expect(seen.text).not.toContain('workers');
    } finally {
      await page.close();
    }
  });
});
