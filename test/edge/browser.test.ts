// A real browser over HTTP/2: headless Chromium loads a page with its script and stylesheet from
// a static route on the TLS listener (a self-signed certificate, --ignore-certificate-errors),
// and the page itself reports the protocol of every load (nextHopProtocol) and that the
// compressed assets decoded (the script ran, the stylesheet applied).
import { accessSync, constants, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../helpers/processes.ts';
import { startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { makeCert } from './certs.ts';

afterAll(stopAllStratum);

const CHROMIUM = '/usr/bin/chromium';

function requireChromium(): boolean {
  try {
    accessSync(CHROMIUM, constants.X_OK);
    return true;
  } catch {
    const reason = `${CHROMIUM} is not installed (apt-get install chromium)`;
    if (process.env.CI) throw new Error(`CI requires chromium: ${reason}`);
    console.warn(`skipping the browser test: ${reason}`);
    return false;
  }
}

describe.skipIf(!requireChromium())('Chromium over h2 with a self-signed certificate', () => {
  let s: StratumProcess;
  let browser: Browser;
  let port: number;

  beforeAll(async () => {
    const dir = makeTempDir('browser');
    const cert = makeCert(dir, 'site', ['site.test']);
    const www = join(dir, 'www');
    mkdirSync(www);
    // Assets well over the 1 KiB compression threshold.
    const filler = (n: number) => Array.from({ length: n }, (_, i) => `/* line ${i} of padding */`).join('\n');
    writeFileSync(
      join(www, 'index.html'),
      '<!doctype html><html><head><link rel="stylesheet" href="style.css"><script src="app.js"></script>' +
        '</head><body><p id="p">page</p></body></html>',
    );
    writeFileSync(join(www, 'app.js'), `${filler(200)}\nwindow.appRan = 'yes';\n`);
    writeFileSync(join(www, 'style.css'), `${filler(200)}\n#p { color: rgb(1, 2, 3); }\n`);
    s = await startStratum([
      'proxy',
      '--listen',
      '127.0.0.1:0',
      '--admin',
      '127.0.0.1:0',
      '--route',
      `/=static:${www}`,
      '--tls-cert',
      cert.cert,
      '--tls-key',
      cert.key,
    ]);
    port = Number(new URL(s.front!).port);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--ignore-certificate-errors',
        '--host-resolver-rules=MAP site.test 127.0.0.1',
      ],
    });
  });
  afterAll(async () => {
    await browser?.close();
    await s?.stop();
  });

  it('loads the page and its assets over h2, the compressed assets decode', async () => {
    const page = await browser.newPage();
    try {
      const encodings = new Map<string, string>();
      page.on('response', (r) => {
        const name = new URL(r.url()).pathname;
        void r.allHeaders().then((h) => encodings.set(name, h['content-encoding'] ?? 'identity'));
      });
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(String(e)));
      await page.goto(`https://site.test:${port}/index.html`, { waitUntil: 'load' });
      const seen = await page.evaluate(() => ({
        nav: (performance.getEntriesByType('navigation')[0] as PerformanceNavigationTiming).nextHopProtocol,
        assets: performance
          .getEntriesByType('resource')
          .map((e) => [new URL(e.name).pathname, (e as PerformanceResourceTiming).nextHopProtocol]),
        ran: (window as unknown as { appRan?: string }).appRan,
        color: getComputedStyle(document.getElementById('p')!).color,
      }));
      expect(seen.nav).toBe('h2');
      const assets = Object.fromEntries(seen.assets);
      expect([assets['/style.css'], assets['/app.js']]).toEqual(['h2', 'h2']);
      expect(seen.ran).toBe('yes');
      expect(seen.color).toBe('rgb(1, 2, 3)');
      expect(errors).toEqual([]);
      for (const asset of ['/app.js', '/style.css']) expect(['br', 'gzip', 'zstd']).toContain(encodings.get(asset));
    } finally {
      await page.close();
    }
  });
});
