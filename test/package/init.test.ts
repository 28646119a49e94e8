// `stratum init` as a user runs it: in a folder with an app, it writes a commented stratum.yaml
// that `stratum check` accepts and `stratum serve` (no --config: ./stratum.yaml) serves.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { parseDocument } from 'yaml';
import { guessApp } from '../../src/init.ts';
import { makeTempDir } from '../helpers/processes.ts';
import { STRATUM_BIN, startStratum, stopAllStratum } from '../helpers/stratum.ts';

afterAll(stopAllStratum);

function stratum(args: string[], cwd: string) {
  const r = spawnSync(process.execPath, [STRATUM_BIN, ...args], { cwd, encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const LISTENER_APP = `export default function app(req, res) {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ from: 'init sample', path: req.url, pid: process.pid }));
}
`;

describe('stratum init', () => {
  test('writes a stratum.yaml for the app named by package.json main; check accepts it; serve serves it', async () => {
    const dir = makeTempDir('init');
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'sample', type: 'module', main: 'lib/main.js' }));
    mkdirSync(join(dir, 'lib'));
    writeFileSync(join(dir, 'lib/main.js'), LISTENER_APP);
    writeFileSync(join(dir, 'app.js'), 'this file must not be chosen: "main" comes first');

    const init = stratum(['init'], dir);
    expect(init.stderr).toBe('');
    expect(init.code).toBe(0);
    expect(init.stdout).toContain('wrote stratum.yaml for ./lib/main.js (from package.json "main")');

    const text = readFileSync(join(dir, 'stratum.yaml'), 'utf8');
    expect(text.split('\n').filter((l) => l.startsWith('#')).length).toBeGreaterThan(3);
    expect(text.split('\n').every((l) => l.length <= 120)).toBe(true);
    const doc = parseDocument(text);
    expect(doc.errors).toEqual([]);
    expect(doc.toJS()).toMatchObject({ app: { module: './lib/main.js' }, routes: [{ path: '/', target: 'pool' }] });

    const check = stratum(['check'], dir);
    expect(check.code).toBe(0);
    expect(check.stdout).toContain('configuration ok (stratum.yaml)');

    const s = await startStratum(['serve', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--workers', '1'], {
      cwd: dir,
    });
    try {
      const res = await fetch(`${s.front}/hello`);
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ from: 'init sample', path: '/hello', pid: s.workers[0] });
    } finally {
      expect(await s.stop()).toBe(0);
    }
  });

  test('refuses to overwrite (exit 2) unless --force', () => {
    const dir = makeTempDir('init');
    writeFileSync(join(dir, 'server.mjs'), LISTENER_APP);
    expect(stratum(['init'], dir).code).toBe(0);
    const again = stratum(['init'], dir);
    expect(again.code).toBe(2);
    expect(again.stderr).toBe('stratum: stratum.yaml already exists (stratum init --force overwrites it)\n');
    expect(stratum(['init', '--force', '--app', 'server.mjs'], dir).code).toBe(0);
  });

  test('a folder without an app module: exit 2, one line saying what was tried and how to name it', () => {
    const dir = makeTempDir('init');
    const r = stratum(['init'], dir);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^stratum: found no app module in .* \(tried package\.json "main", app\.ts, .*--app/);
  });

  test('--app that names nothing is a config error naming --app (exit 2), and nothing is written', () => {
    const dir = makeTempDir('init');
    const r = stratum(['init', '--app', './nope.ts'], dir);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('stratum: --app: file not found: ./nope.ts\n');
    expect(existsSync(join(dir, 'stratum.yaml'))).toBe(false);
  });

  test('notes an app without a default export, or one that calls listen() itself', () => {
    const dir = makeTempDir('init');
    writeFileSync(join(dir, 'app.ts'), "import http from 'node:http';\nhttp.createServer(() => {}).listen(3000);\n");
    const r = stratum(['init'], dir);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('note: ./app.ts has no default export');
    expect(r.stdout).toContain('note: ./app.ts calls listen()');
  });

  test('guesses common file names in order when package.json has no usable main', () => {
    const dir = makeTempDir('init');
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'x', main: 'missing.js' }));
    expect(guessApp(dir)).toBeNull();
    mkdirSync(join(dir, 'src'));
    writeFileSync(join(dir, 'index.js'), '');
    expect(guessApp(dir)).toEqual({ app: './index.js', from: 'its file name' });
    writeFileSync(join(dir, 'src/app.ts'), '');
    expect(guessApp(dir)?.app).toBe('./src/app.ts');
    writeFileSync(join(dir, 'server.js'), '');
    expect(guessApp(dir)?.app).toBe('./server.js');
    writeFileSync(join(dir, 'app.mjs'), '');
    expect(guessApp(dir)?.app).toBe('./app.mjs');
  });
});
