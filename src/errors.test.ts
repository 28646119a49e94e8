import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, test } from 'vitest';
import { errorsDocs } from '../scripts/gen-errors-docs.ts';
import { makeTempDir } from '../test/helpers/processes.ts';
import { loadConfig } from './config/load.ts';
import * as errors from './errors.ts';

const { BuildMissing, BuildStale, ConfigInvalid, errorEntry, errorTable, NodeUnsupported } = errors;

describe('the error table', () => {
  test('docs/errors.md is up to date with src/errors.ts', () => {
    const committed = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');
    if (committed !== errorsDocs()) {
      expect.fail('docs/errors.md is stale: run `npm run docs:errors` and commit the result');
    }
  });

  test('every exported error class has one row, under its own code, and the docs list each code', () => {
    const classes = Object.values(errors).filter(
      (v): v is errors.StratumErrorClass<unknown[]> =>
        typeof v === 'function' && typeof (v as { code?: unknown }).code === 'string',
    );
    expect(classes.length).toBe(errorTable().length);
    const docs = errorsDocs();
    for (const cls of classes) {
      expect(errorEntry(cls.code)?.code).toBe(cls.code);
      expect(docs).toContain(`| \`${cls.code}\` |`);
    }
    expect(new Set(errorTable().map((e) => e.code)).size).toBe(errorTable().length);
  });

  test('exit codes: 2 for usage, configuration and listen errors, 1 for the rest; HTTP errors have a status', () => {
    for (const e of errorTable()) {
      expect([1, 2]).toContain(e.exit);
      if (e.status !== null) expect(e.status).toBeGreaterThanOrEqual(400);
    }
    const usage = ['STRATUM_ERR_CONFIG', 'STRATUM_ERR_USAGE', 'STRATUM_ERR_LISTEN', 'STRATUM_ERR_ADDRESS_IN_USE'];
    for (const code of usage) {
      expect(errorEntry(code)?.exit).toBe(2);
    }
    expect(errorEntry('STRATUM_ERR_APP_LOAD')?.exit).toBe(1);
    expect(new ConfigInvalid('x', 'y').exitCode).toBe(2);
  });

  test('the message templates name their arguments', () => {
    expect(errorEntry('STRATUM_ERR_UPSTREAM_TIMEOUT')?.template).toBe(
      'upstream <target> timed out (<phase>) after <ms> ms',
    );
    expect(errorEntry('STRATUM_ERR_CONFIG')?.data).toEqual(['path', 'what']);
  });
});

describe('ConfigInvalid', () => {
  test('carries the dotted path of the bad field and what was wrong, as data', () => {
    const dir = makeTempDir('errors');
    const file = join(dir, 'stratum.yaml');
    writeFileSync(file, 'pool:\n  workers: -1\n');
    let caught: unknown;
    try {
      loadConfig({ file, mode: 'proxy' });
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigInvalid);
    const e = caught as InstanceType<typeof ConfigInvalid>;
    expect(e.code).toBe('STRATUM_ERR_CONFIG');
    expect(e.path).toBe('pool.workers');
    expect(e.message).toBe(`pool.workers: ${e.what}`);
  });

  test('routes: the index of the bad route is in the path', () => {
    try {
      loadConfig({ flags: { route: ['/=pool', '/x=ftp://nope'] }, mode: 'proxy' });
      expect.fail('accepted an ftp target');
    } catch (err) {
      expect((err as InstanceType<typeof ConfigInvalid>).path).toMatch(/^routes\.1/);
    }
  });
});

describe('appImportError: a TypeScript app that type stripping cannot run', () => {
  const dir = makeTempDir('ts-app');
  // In a plain Node process: vitest's own loader would compile the TypeScript instead of stripping it.
  const load = async (file: string): Promise<{ code: string; file?: string; message: string }> => {
    const script = [
      `import { appImportError } from ${JSON.stringify(new URL('./errors.ts', import.meta.url).href)};`,
      `try { await import(${JSON.stringify(pathToFileURL(file).href)}); console.log('null'); }`,
      `catch (err) { const e = appImportError(${JSON.stringify(file)}, err);`,
      '  console.log(JSON.stringify({ code: e.code, file: e.file, message: e.message })); }',
    ].join('\n');
    const node = ['--input-type=module', '-e', script];
    const r = spawnSync(process.execPath, node, { encoding: 'utf8', timeout: 20_000 });
    const out = JSON.parse(r.stdout || 'null') as { code: string; file?: string; message: string } | null;
    if (!out) throw new Error(`${file} loaded (stderr: ${r.stderr})`);
    return out;
  };

  test('an enum in a module the app imports: the error names that file and line, and what to do', async () => {
    writeFileSync(join(dir, 'colors.ts'), 'const x: number = 1;\nexport enum Color { Red, Green }\nexport { x };\n');
    writeFileSync(join(dir, 'app.ts'), "import { Color } from './colors.ts';\nexport default () => Color.Red;\n");
    const e = await load(join(dir, 'app.ts'));
    expect(e.code).toBe('STRATUM_ERR_APP_TYPESCRIPT');
    expect(e.file).toBe(`${join(dir, 'colors.ts')}:2`);
    expect(e.message).toMatch(/colors\.ts:2: TypeScript enum, which Node's type stripping cannot run: use a const object/);
    expect(e.message.split('\n')).toHaveLength(1);
  });

  test('the place given as a file: URL (how a worker reaches the app) is shown as a path', () => {
    const err = Object.assign(new SyntaxError('TypeScript enum is not supported in strip-only mode'), {
      code: 'ERR_UNSUPPORTED_TYPESCRIPT_SYNTAX',
      stack: 'file:///srv/my%20app/lib.ts:3\nenum A { B }\n\nSyntaxError [ERR_UNSUPPORTED_TYPESCRIPT_SYNTAX]: ...',
    });
    const e = errors.appImportError('/srv/my app/app.ts', err) as InstanceType<typeof errors.AppTypeScriptSyntax>;
    expect(e.file).toBe('/srv/my app/lib.ts:3');
    expect(e.message).toMatch(/^\/srv\/my app\/lib\.ts:3: TypeScript enum, /);
  });

  test('a parameter property', async () => {
    writeFileSync(join(dir, 'pp.ts'), 'export default class A {\n  constructor(private a: number) {}\n}\n');
    const e = await load(join(dir, 'pp.ts'));
    expect(e.code).toBe('STRATUM_ERR_APP_TYPESCRIPT');
    expect(e.message).toContain('pp.ts:2: TypeScript parameter property, ');
  });

  test('a .ts file under node_modules', async () => {
    mkdirSync(join(dir, 'node_modules/dep'), { recursive: true });
    writeFileSync(join(dir, 'node_modules/dep/index.ts'), 'export const a: number = 1;\n');
    const e = await load(join(dir, 'node_modules/dep/index.ts'));
    expect(e.code).toBe('STRATUM_ERR_APP_TYPESCRIPT_NODE_MODULES');
    expect(e.message).toContain(`${join(dir, 'node_modules/dep/index.ts')}: Node strips no types`);
  });

  test('ES module syntax in a file Node reads as CommonJS: AppLoadFailed says so', async () => {
    mkdirSync(join(dir, 'cjs'));
    writeFileSync(join(dir, 'cjs/package.json'), '{ "type": "commonjs" }');
    writeFileSync(join(dir, 'cjs/app.ts'), 'const n: number = 1;\nexport default n;\n');
    const e = await load(join(dir, 'cjs/app.ts'));
    expect(e.code).toBe('STRATUM_ERR_APP_LOAD');
    expect(e.message).toContain('name it .mjs or .mts, or set "type": "module" in its package.json');
  });

  test('anything else stays AppLoadFailed with the first line of the cause', async () => {
    writeFileSync(join(dir, 'throws.mjs'), "throw new Error('boom\\nmore');\n");
    const e = await load(join(dir, 'throws.mjs'));
    expect(e.code).toBe('STRATUM_ERR_APP_LOAD');
    expect(e.message).toBe(`cannot load application module ${join(dir, 'throws.mjs')}: boom`);
  });
});

describe('messages printed outside src/ say what the table says', () => {
  test('bin/check-node.js prints NodeUnsupported', async () => {
    const spec = '../bin/check-node.js';
    const { nodeProblem } = (await import(spec)) as { nodeProblem(v: string, p: string): string | null };
    expect(nodeProblem('20.20.2', '/usr/bin/node')).toBe(new NodeUnsupported('20.20.2', '/usr/bin/node').message);
    expect(nodeProblem('24.0.0', '/x')).toBeNull();
    expect(nodeProblem('26.1.0', '/x')).toBeNull();
  });

  test('bin/stratum-dist.js prints BuildMissing and BuildStale', () => {
    const text = readFileSync(new URL('../bin/stratum-dist.js', import.meta.url), 'utf8').replace(/'\s*\+\s*'/g, '');
    expect(text).toContain(`stratum: ${new BuildMissing().message}\\n`);
    expect(text).toContain(`stratum: ${new BuildStale().message}\\n`);
  });

  test('rawHttpAnswer: the whole answer for a socket without a response object', () => {
    const head = (status: string, length: number) =>
      `HTTP/1.1 ${status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${length}\r\n` +
      'Cache-Control: no-store\r\n';
    expect(errors.rawHttpAnswer(new errors.ClientBadRequest('x'))).toBe(
      `${head('400 Bad Request', 12)}Connection: close\r\n\r\nBad Request\n`,
    );
    // Byte for byte the 504 a worker's harakiri watchdog writes (src/pool/harakiri.ts HARAKIRI_RESPONSE).
    expect(errors.rawHttpAnswer(new errors.HarakiriTimeout(60))).toBe(
      `${head('504 Gateway Timeout', 16)}Connection: close\r\n\r\nGateway Timeout\n`,
    );
    expect(errors.rawHttpAnswer(new errors.PoolOverloaded(9))).toContain('\r\nRetry-After: 1\r\nConnection: close\r\n');
    expect(errors.rawHttpAnswer(new errors.UpgradeUnsupported('/'))).toMatch(/^HTTP\/1\.1 501 Not Implemented\r\n/);
  });
});
