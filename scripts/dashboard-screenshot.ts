// Regenerates docs/dashboard.png, the README's picture of the dashboard under load: starts
// `stratum serve` (three workers, the Fastify fixture app), sends a bounded, changing load to it
// for --seconds — fast routes, a 300 ms request every 0.7 s, failures, and phases where the app
// slows down — then photographs the page in headless Chromium with the slowest request opened.
//
//   npm run build && node scripts/dashboard-screenshot.ts [--seconds 75] [--out docs/dashboard.png]
//
// Traffic goes to 127.0.0.1 only and stops by itself.
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';
import { makeTempDir } from '../test/helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum } from '../test/helpers/stratum.ts';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '75' },
    out: { type: 'string', default: 'docs/dashboard.png' },
    width: { type: 'string', default: '1440' },
  },
});
const warmMs = Number(values.seconds) * 1000;
const dir = makeTempDir('dashboard-shot');
const stratum = await startStratum([
  'serve',
  '--listen',
  '127.0.0.1:0',
  '--admin',
  '127.0.0.1:0',
  '--socket',
  join(dir, 'pool.sock'),
  '--workers',
  '3',
  '--app',
  join(REPO_ROOT, 'test/fixtures/apps/fastify.ts'),
]);
const front = stratum.front!;
const until = Date.now() + warmMs + 30_000;
let stop = false;

const loop = async (paths: string[], pauseMs: number) => {
  for (let i = 0; !stop && Date.now() < until; i++) {
    await fetch(`${front}${paths[i % paths.length]}`).then(
      (r) => r.arrayBuffer(),
      () => {},
    );
    await new Promise((r) => setTimeout(r, pauseMs));
  }
};
// Every other 20 s the app takes 40 ms instead of 3: the layer charts show it happen.
const phases = async () => {
  const t0 = Date.now();
  while (!stop && Date.now() < until) {
    const slow = Math.floor((Date.now() - t0) / 20_000) % 2 === 1;
    await fetch(`${front}/slow?ms=${slow ? 40 : 3}`).then(
      (r) => r.arrayBuffer(),
      () => {},
    );
  }
};
const load = Promise.all([
  loop(['/', '/echo', '/status/204', '/slow?ms=5'], 3),
  loop(['/', '/echo/x', '/status/404', '/slow?ms=20'], 4),
  phases(),
  phases(),
  phases(),
  loop(['/slow?ms=300', '/slow?ms=120'], 700),
  loop(['/fail', '/status/503'], 500),
]);

try {
  await new Promise((r) => setTimeout(r, warmMs));
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  const page = await browser.newPage({ viewport: { width: Number(values.width), height: 900 } });
  await page.goto(`${stratum.admin}/`);
  await page.locator('[data-testid="link"][data-state="connected"]').waitFor();
  if (warmMs < 240_000) await page.locator('button[data-window-s="60"]').click();
  await page.locator('ol[data-kind="slow"] button.trace').first().click();
  await page.waitForTimeout(1500);
  const out = resolve(REPO_ROOT, values.out);
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}`);
  await browser.close();
} finally {
  stop = true;
  await load;
  await stratum.stop();
  await stopAllStratum();
}
