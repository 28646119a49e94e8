// Stratum as a Node developer meets it, on this machine's own (older) Node:
//   1. a fresh clone: `npm ci && npm start`, and `npm test`, with that Node first on PATH: the
//      project brings Node 24 itself (the pinned `node` devDependency; npm scripts run it);
//   2. every entry point run by that Node: one line naming the Node it needs, never a SyntaxError;
//   3. the package packed from the clone, installed into a project of its own beside fastify:
//      `npx stratum serve --app ./app.mjs` answers through the front; `npx stratum init` then
//      `npx stratum serve`; a TypeScript app; the config typings and the programmatic API.
// The clone is of the committed HEAD (what CI and a new user get), not of the working tree.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { NodeUnsupported } from '../../src/errors.ts';
import { killLeftovers, makeTempDir } from '../helpers/processes.ts';
import { REPO_ROOT } from '../helpers/stratum.ts';
import { envWithNode, nodeVersion, olderNode, run, serveUntilReady } from './helpers.ts';

afterAll(killLeftovers);

// A fresh `npm ci` reads the packages from npm's cache when they are there (--prefer-offline);
// the registry is still asked for what the cache lacks.
const NPM_FLAGS = ['--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'];
const versionOf = (pkg: string) => {
  const manifest = readFileSync(join(REPO_ROOT, 'node_modules', pkg, 'package.json'), 'utf8');
  return (JSON.parse(manifest) as { version: string }).version;
};
const FASTIFY_VERSION = versionOf('fastify');

let old: string; // the older Node
let oldVersion: string;
let clone: string;
let oldEnv: NodeJS.ProcessEnv;
/** This test's Node 24 first on PATH: a user's shell with Node 24 installed. */
const env24 = () => envWithNode(process.execPath);

beforeAll(async () => {
  old = await olderNode();
  oldVersion = nodeVersion(old);
  oldEnv = envWithNode(old, { STRATUM_WORKERS: '1' });
  clone = join(makeTempDir('clone'), 'stratum');
  const r = await run('git', ['clone', '--quiet', '--no-hardlinks', REPO_ROOT, clone], { cwd: REPO_ROOT });
  expect(r.code, r.stderr).toBe(0);
  console.log(`package tests: older Node ${oldVersion} at ${old}; clone of ${REPO_ROOT} at ${clone}`);
}, 600_000);

describe('a fresh clone on a machine whose Node is older than 24', () => {
  test('the older Node is the first node on PATH of the shell these commands run in', async () => {
    expect(Number(oldVersion.split('.')[0])).toBeLessThan(24);
    const r = await run('node', ['--version'], { cwd: clone, env: oldEnv });
    expect(r.stdout.trim()).toBe(`v${oldVersion}`);
  });

  test('npm ci installs Node 24 into node_modules (and the rest)', async () => {
    const r = await run('npm', ['ci', ...NPM_FLAGS], { cwd: clone, env: oldEnv, timeoutMs: 480_000 });
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    console.log(`npm ci in the clone: ${(r.ms / 1000).toFixed(1)} s`);
    const v = await run(join(clone, 'node_modules/.bin/node'), ['--version'], { cwd: clone });
    expect(v.stdout.trim()).toMatch(/^v24\./);
    // npm scripts run it: what `npm start` and `npm test` get as `node`.
    const inScript = await run('npm', ['exec', '--', 'node', '--version'], { cwd: clone, env: oldEnv });
    expect(inScript.stdout.trim()).toMatch(/^v24\./);
  }, 600_000);

  test('npm start builds and serves the example app through the front', async () => {
    const s = await serveUntilReady('npm', ['start'], {
      cwd: clone,
      env: { ...oldEnv, STRATUM_LISTEN: '127.0.0.1:0', STRATUM_ADMIN: '127.0.0.1:0' },
      timeoutMs: 240_000,
    });
    try {
      const res = await fetch(`${s.front}/`);
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ hello: 'world', from: 'stratum example' });
      expect(existsSync(join(clone, 'dist/cli.js'))).toBe(true);
    } finally {
      await s.stop();
    }
  }, 300_000);

  test('npm test runs the Node check, the type check, the linter and vitest', async () => {
    // One small test file: the whole suite is what CI runs; this shows the command's chain works.
    const args = ['test', '--', 'src/config/schema.test.ts'];
    const r = await run('npm', args, { cwd: clone, env: oldEnv, timeoutMs: 300_000 });
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain('node bin/check-node.js && tsc --noEmit && eslint --quiet . && vitest run');
    expect(r.stdout).toMatch(/Test Files\s+.*1 passed/);
    console.log(`npm test -- one file, in the clone: ${(r.ms / 1000).toFixed(1)} s`);
  }, 360_000);

  test('every entry point, run by the older Node: one line saying which Node and how to get it, exit 1', async () => {
    const line = `stratum: ${new NodeUnsupported(oldVersion, old).message}\n`;
    for (const entry of ['bin/stratum.js', 'bin/stratum-dist.js', 'bin/check-node.js']) {
      const r = await run(old, [join(clone, entry), 'serve'], { cwd: clone, env: oldEnv });
      const seen = { entry, code: r.code, stderr: r.stderr, stdout: r.stdout };
      expect(seen).toEqual({ entry, code: 1, stderr: line, stdout: '' });
    }
  }, 60_000);
});

describe('the packed package in a project of its own, beside fastify', () => {
  let project: string;
  let tarball: string;
  let files: string[] = [];

  beforeAll(async () => {
    project = makeTempDir('project');
    if (!existsSync(join(clone, 'node_modules'))) {
      // Run alone (vitest -t): the clone still needs its dependencies to build the package.
      const ci = await run('npm', ['ci', ...NPM_FLAGS], { cwd: clone, env: oldEnv, timeoutMs: 480_000 });
      expect(ci.code, ci.stderr).toBe(0);
    }
    // npm pack runs prepack (the dashboard bundle and dist/) with the clone's Node 24.
    const packDir = makeTempDir('pack');
    const r = await run('npm', ['pack', '--pack-destination', packDir, '--json', ...NPM_FLAGS], {
      cwd: clone,
      env: oldEnv,
      timeoutMs: 300_000,
    });
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    // The JSON report follows whatever the prepack script printed.
    type Packed = [{ filename: string; files: { path: string }[] }];
    const [info] = JSON.parse(r.stdout.slice(r.stdout.search(/^\[/m))) as Packed;
    tarball = join(packDir, info.filename);
    files = info.files.map((f) => f.path);
    writeFileSync(
      join(project, 'package.json'),
      JSON.stringify({ name: 'my-service', private: true, type: 'module', main: 'app.mjs' }, null, 2),
    );
    const i = await run('npm', ['install', ...NPM_FLAGS, tarball, `fastify@${FASTIFY_VERSION}`], {
      cwd: project,
      env: env24(),
      timeoutMs: 300_000,
    });
    expect(i.code, `${i.stdout}\n${i.stderr}`).toBe(0);
    writeFileSync(
      join(project, 'app.mjs'),
      [
        "import Fastify from 'fastify';",
        'const app = Fastify();',
        "app.get('/', async () => ({ hello: 'fastify', pid: process.pid }));",
        "app.post('/echo', async (req) => ({ got: req.body }));",
        'export default app;',
        '',
      ].join('\n'),
    );
  }, 600_000);

  test('the package ships the build, the dashboard bundle and the runners, not the sources or the tests', () => {
    expect(files).toEqual(expect.arrayContaining([
      'bin/stratum-dist.js', 'bin/check-node.js', 'bin/run.js', 'dist/cli.js', 'dist/index.js', 'dist/index.d.ts',
      'dist/pool/worker.js', 'dashboard/dist/index.html', 'config/stratum.yaml', 'docs/errors.md', 'package.json',
    ]));
    expect(files.filter((f) => /^(src|test|bench|scripts|deploy)\//.test(f) || f.endsWith('.test.js'))).toEqual([]);
    console.log(`npm pack: ${files.length} files`);
  });

  test('npx stratum serve --app ./app.mjs answers through the front, dashboard on the admin port', async () => {
    const s = await serveUntilReady(
      'npx',
      ['stratum', 'serve', '--app', './app.mjs', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--workers', '1'],
      { cwd: project, env: env24() },
    );
    try {
      const res = await fetch(`${s.front}/`);
      expect(res.status).toBe(200);
      const body = (await res.json()) as { hello: string; pid: number };
      expect(body.hello).toBe('fastify');
      expect(body.pid).not.toBe(s.t.proc.pid);
      const echo = await fetch(`${s.front}/echo`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ a: 1 }),
      });
      expect(await echo.json()).toEqual({ got: { a: 1 } });
      expect(res.headers.get('server-timing')).toMatch(/app;dur=/);
      const page = await fetch(`${s.admin}/`);
      expect(page.status).toBe(200);
      expect(await page.text()).toMatch(/<script[^>]+assets\//);
    } finally {
      await s.stop();
    }
  }, 120_000);

  test('npx stratum init writes stratum.yaml for package.json main; check passes; serve serves it', async () => {
    const init = await run('npx', ['stratum', 'init'], { cwd: project, env: env24() });
    expect(init.code, init.stderr).toBe(0);
    expect(init.stdout).toContain('wrote stratum.yaml for ./app.mjs (from package.json "main")');
    const check = await run('npx', ['stratum', 'check'], { cwd: project, env: env24() });
    expect(check.stdout).toContain('configuration ok (stratum.yaml)');
    const s = await serveUntilReady(
      'npx',
      ['stratum', 'serve', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--workers', '1'],
      { cwd: project, env: env24() },
    );
    try {
      expect(await (await fetch(`${s.front}/`)).json()).toMatchObject({ hello: 'fastify' });
    } finally {
      await s.stop();
    }
  }, 120_000);

  test('a TypeScript app runs through type stripping; one with an enum fails at once, naming the file', async () => {
    writeFileSync(
      join(project, 'typed.ts'),
      [
        "import Fastify, { type FastifyInstance } from 'fastify';",
        'type Greeting = { hello: string };',
        'const app: FastifyInstance = Fastify();',
        "app.get('/', async (): Promise<Greeting> => ({ hello: 'typed' }));",
        'export default app;',
        '',
      ].join('\n'),
    );
    const flags = ['--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--workers', '1'];
    const s = await serveUntilReady('npx', ['stratum', 'serve', '--app', './typed.ts', ...flags], {
      cwd: project,
      env: env24(),
    });
    try {
      expect(await (await fetch(`${s.front}/`)).json()).toEqual({ hello: 'typed' });
    } finally {
      await s.stop();
    }

    writeFileSync(join(project, 'enum.ts'), 'enum Mode { A, B }\nexport default () => new Response(String(Mode.A));\n');
    const r = await run('npx', ['stratum', 'serve', '--app', './enum.ts', ...flags], {
      cwd: project,
      env: env24(),
      timeoutMs: 60_000,
    });
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    // The file and line Node refused, and what to write instead (errors.ts appImportError).
    expect(r.stderr).toMatch(/^stratum: \/.*\/enum\.ts:1: TypeScript enum, .*use a const object instead of an enum/);
  }, 120_000);

  test('the config typings: defineConfig checks a config against the schema; start() runs it from code', async () => {
    // A TypeScript user's project has Node's types; the compiler is the repo's (same major as a user's).
    const typesNode = versionOf('@types/node');
    const i = await run('npm', ['install', '--save-dev', ...NPM_FLAGS, `@types/node@${typesNode}`], {
      cwd: project,
      env: env24(),
      timeoutMs: 120_000,
    });
    expect(i.code, i.stderr).toBe(0);
    writeFileSync(
      join(project, 'use.ts'),
      [
        "import { defineConfig, start, type StratumConfigInput } from 'stratum';",
        "const config: StratumConfigInput = defineConfig({ app: { module: './app.mjs' }, pool: { workers: 1 },",
        "  listen: '127.0.0.1:0', admin: { listen: '127.0.0.1:0' } });",
        '// @ts-expect-error workers is a number',
        "defineConfig({ pool: { workers: 'two' } });",
        '// @ts-expect-error no such field',
        'defineConfig({ wrokers: 2 });',
        'const s = await start(config);',
        'const res = await fetch(`${s.front}/`);',
        'console.log(JSON.stringify({ status: res.status, body: await res.json(), workers: s.workers.length }));',
        'console.log(JSON.stringify({ exit: await s.stop() }));',
        '',
      ].join('\n'),
    );
    const tsc = join(REPO_ROOT, 'node_modules/typescript/bin/tsc');
    const tscArgs = [tsc, '--noEmit', '--strict', '--module', 'nodenext', '--target', 'es2024', '--types', 'node'];
    tscArgs.push('use.ts');
    const types = await run(process.execPath, tscArgs, { cwd: project, env: env24() });
    expect(types.stdout + types.stderr).toBe('');
    expect(types.code).toBe(0);

    // The same typings in a config module, which the CLI reads like the YAML (Node strips its types).
    writeFileSync(
      join(project, 'stratum.config.ts'),
      "import { defineConfig } from 'stratum';\nexport default defineConfig({ app: { module: './app.mjs' } });\n",
    );
    const checkArgs = ['stratum', 'check', '--config', 'stratum.config.ts'];
    const check = await run('npx', checkArgs, { cwd: project, env: env24() });
    expect(check.stdout + check.stderr).toBe('stratum: configuration ok (stratum.config.ts)\n');

    const r = await run(process.execPath, ['use.ts'], { cwd: project, env: env24(), timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    const [first, second] = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(first).toEqual({ status: 200, body: expect.objectContaining({ hello: 'fastify' }), workers: 1 });
    expect(second).toEqual({ exit: 0 });
  }, 120_000);

  test('installed globally, on the older Node the command says which Node it needs', async () => {
    const prefix = makeTempDir('global');
    const i = await run('npm', ['install', '--global', '--prefix', prefix, ...NPM_FLAGS, tarball], {
      cwd: project,
      env: env24(),
      timeoutMs: 300_000,
    });
    expect(i.code, i.stderr).toBe(0);
    const bin = join(prefix, 'bin/stratum');
    const ok = await run(bin, ['--version'], { cwd: project, env: env24() });
    expect(ok.stdout.trim()).toBe('0.1.0');
    const r = await run(bin, ['--version'], { cwd: project, env: oldEnv });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`stratum: ${new NodeUnsupported(oldVersion, old).message}\n`);
    expect(dirname(old)).not.toBe(dirname(process.execPath));
  }, 360_000);
});
