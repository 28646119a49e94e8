import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { main, type CliIO } from '../cli.ts';
import type { StratumConfig } from './schema.ts';

let dir: string;
let app: string;
let config: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'stratum-cli-'));
  app = join(dir, 'app.ts');
  writeFileSync(app, 'export default async function app() {}\n');
  config = join(dir, 'stratum.yaml');
  writeFileSync(config, `listen: 127.0.0.1:0\napp:\n  module: ./app.ts\n`);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Run = { code: number; stdout: string; stderr: string; calls: { fn: string; arg: unknown }[] };

/** Runs main() with captured output and a fake appliance / top module. */
async function run(argv: string[], opts: { env?: NodeJS.ProcessEnv; fail?: unknown } = {}): Promise<Run> {
  const result: Run = { code: -1, stdout: '', stderr: '', calls: [] };
  const record = (fn: string) => async (arg: unknown) => {
    result.calls.push({ fn, arg });
    if (opts.fail) throw opts.fail;
  };
  const io: Partial<CliIO> = {
    stdout: (t) => void (result.stdout += t),
    stderr: (t) => void (result.stderr += t),
    env: opts.env ?? {},
    cwd: dir,
    importModule: async (specifier) => {
      if (specifier === './appliance.ts')
        return { runServe: record('runServe'), runPool: record('runPool'), runProxy: record('runProxy') };
      if (specifier === './admin/top.ts') return { runTop: record('runTop') };
      throw new Error(`unexpected import ${specifier}`);
    },
  };
  result.code = await main(argv, io);
  return result;
}

function expectOneLineError(r: Run, code: number, pattern: RegExp): void {
  expect(r.code).toBe(code);
  expect(r.stderr).toMatch(/^stratum: [^\n]*\n$/);
  expect(r.stderr).toMatch(pattern);
}

describe('check', () => {
  test('a valid config prints "configuration ok" and exits 0', async () => {
    const r = await run(['check', '--config', config]);
    expect(r).toMatchObject({ code: 0, stderr: '', stdout: `stratum: configuration ok (${config})\n` });
  });

  test('the shipped config/stratum.yaml is valid once its app exists', async () => {
    // config/stratum.yaml points at ../examples/hello/app.ts; lay out the same tree in a temp dir.
    const root = join(dir, 'shipped');
    mkdirSync(join(root, 'config'), { recursive: true });
    mkdirSync(join(root, 'examples', 'hello'), { recursive: true });
    copyFileSync(new URL('../../config/stratum.yaml', import.meta.url), join(root, 'config', 'stratum.yaml'));
    writeFileSync(join(root, 'examples', 'hello', 'app.ts'), 'export default async function app() {}\n');
    const r = await run(['check', '--config', join(root, 'config', 'stratum.yaml')]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  test('an invalid config exits 2 with one line naming the field', async () => {
    expectOneLineError(
      await run(['check', '--config', config, '--workers', 'abc']),
      2,
      /^stratum: pool\.workers: expected an integer >= 1, got "abc"/,
    );
  });

  test('a missing config file exits 2', async () => {
    expectOneLineError(await run(['check', '--config', join(dir, 'missing.yaml')]), 2, /missing\.yaml: file not found/);
  });

  test('a bad --route exits 2', async () => {
    expectOneLineError(
      await run(['check', '--config', config, '--route', 'nonsense']),
      2,
      /^stratum: --route: expected PREFIX=TARGET/,
    );
  });
});

describe('config files', () => {
  test('without --config, ./stratum.yaml in the working directory is read', async () => {
    const r = await run(['check']);
    expect(r).toMatchObject({ code: 0, stdout: 'stratum: configuration ok (stratum.yaml)\n' });
  });

  test('a config module (stratum.config.ts) is read like the YAML, its paths against its folder', async () => {
    const sub = join(dir, 'module-config');
    mkdirSync(sub, { recursive: true });
    copyFileSync(app, join(sub, 'app.ts'));
    const file = join(sub, 'stratum.config.ts');
    writeFileSync(file, "export default { app: { module: './app.ts' }, pool: { workers: 3 } };\n");
    expect((await run(['check', '--config', file])).stdout).toBe(`stratum: configuration ok (${file})\n`);
    const r = await run(['serve', '--config', file]);
    expect(r.code).toBe(0);
    const c = r.calls[0]!.arg as StratumConfig;
    expect([c.app.module, c.pool.workers]).toEqual([join(sub, 'app.ts'), 3]);

    const fn = join(sub, 'fn.config.mjs');
    writeFileSync(fn, "export default async () => ({ app: { module: './app.ts' }, pool: { workers: 2 } });\n");
    expect(((await run(['serve', '--config', fn])).calls[0]!.arg as StratumConfig).pool.workers).toBe(2);
  });

  test('a config module with a bad field, or no default export: exit 2, one line with the path', async () => {
    const sub = join(dir, 'module-config-bad');
    mkdirSync(sub, { recursive: true });
    const bad = join(sub, 'bad.config.mjs');
    writeFileSync(bad, 'export default { pool: { workers: 0 } };\n');
    expectOneLineError(await run(['check', '--config', bad]), 2, /^stratum: pool\.workers: /);
    const none = join(sub, 'none.config.mjs');
    writeFileSync(none, 'export const x = 1;\n');
    expectOneLineError(await run(['check', '--config', none]), 2, /none\.config\.mjs: the module has no default export/);
    expectOneLineError(await run(['check', '--config', join(sub, 'nope.config.ts')]), 2, /nope\.config\.ts: file not found/);
  });
});

describe('usage errors', () => {
  test.each([
    [['check', '--bogus'], /^stratum: unknown option --bogus/],
    [['check', '--listen'], /^stratum: option --listen needs a value/],
    [['check', 'extra'], /^stratum: unexpected argument extra/],
    [['frobnicate'], /^stratum: unknown command "frobnicate"/],
    [['top', '--interval', '0'], /^stratum: --interval: expected a number of seconds > 0/],
    [['top', '--admin', 'nope'], /^stratum: --admin: expected HOST:PORT/],
  ])('%j exits 2 with one line', async (argv, pattern) => {
    expectOneLineError(await run(argv), 2, pattern);
  });
});

describe('help and version', () => {
  test('--version prints the package version', async () => {
    const r = await run(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^\d+\.\d+\.\d+/);
  });

  test('--help lists the commands', async () => {
    const r = await run(['--help']);
    expect(r.code).toBe(0);
    for (const c of ['serve', 'pool', 'proxy', 'check', 'top']) expect(r.stdout).toContain(`  ${c} `);
  });

  test.each(['serve', 'pool', 'proxy', 'check'])('%s --help lists its flags with defaults', async (command) => {
    const r = await run([command, '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/--listen HOST:PORT\s+front proxy address \(default 0\.0\.0\.0:8080/);
    for (const flag of [
      '--config',
      '--admin',
      '--socket',
      '--socket-mode',
      '--workers',
      '--app',
      '--route',
      '--harakiri',
      '--max-requests',
      '--reload-on-rss',
      '--log-level',
    ]) {
      expect(r.stdout).toContain(flag);
    }
    expect(r.calls).toEqual([]);
  });

  test('top -h lists its flags', async () => {
    const r = await run(['top', '-h']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/--interval SEC\s+seconds between refreshes \(default 1\)/);
  });
});

describe('running', () => {
  test('serve is the default command and gets the loaded config', async () => {
    const r = await run(['--config', config, '--workers', '2']);
    expect(r.code).toBe(0);
    expect(r.calls).toHaveLength(1);
    expect(r.calls[0]!.fn).toBe('runServe');
    const c = r.calls[0]!.arg as StratumConfig;
    expect(c.pool.workers).toBe(2);
    expect(c.app.module).toBe(app);
  });

  test.each([
    ['pool', 'runPool', ['--socket', '127.0.0.1:0']],
    ['proxy', 'runProxy', ['--route', '/=uwsgi://127.0.0.1:3031']],
  ])('%s calls %s', async (command, fn, extra) => {
    const r = await run([command, '--config', config, ...extra]);
    expect(r.code).toBe(0);
    expect(r.calls.map((c) => c.fn)).toEqual([fn]);
  });

  test('flags override the environment', async () => {
    const r = await run(['serve', '--config', config, '--listen', '127.0.0.1:4000'], {
      env: { STRATUM_LISTEN: '127.0.0.1:3000', STRATUM_WORKERS: '3' },
    });
    const c = r.calls[0]!.arg as StratumConfig;
    expect(c.listen).toBe('127.0.0.1:4000');
    expect(c.pool.workers).toBe(3);
  });

  test('an address in use exits 2 with one line naming the address', async () => {
    const err = Object.assign(new Error('listen EADDRINUSE: address already in use 127.0.0.1:8080'), {
      code: 'EADDRINUSE',
      syscall: 'listen',
      address: '127.0.0.1',
      port: 8080,
    });
    const r = await run(['serve', '--config', config], { fail: err });
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('stratum: listen 127.0.0.1:8080: address already in use\n');
  });

  test('a permission error on listen exits 2, also when wrapped in a cause', async () => {
    const cause = Object.assign(new Error('listen EACCES'), {
      code: 'EACCES',
      syscall: 'listen',
      address: '::',
      port: 80,
    });
    const r = await run(['serve', '--config', config], { fail: new Error('front proxy failed to start', { cause }) });
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('stratum: listen [::]:80: permission denied\n');
  });

  test('a config error from the appliance exits 2', async () => {
    const err = Object.assign(new Error('pool.socket: cannot create /nope/x.sock'), { code: 'STRATUM_ERR_CONFIG' });
    expectOneLineError(
      await run(['serve', '--config', config], { fail: err }),
      2,
      /^stratum: pool\.socket: cannot create/,
    );
  });

  test('a coded error exits with its code from the error table, also a plain { code } from a worker', async () => {
    const inUse = { code: 'STRATUM_ERR_ADDRESS_IN_USE', message: 'cannot listen on 127.0.0.1:80: address in use' };
    expectOneLineError(await run(['serve', '--config', config], { fail: inUse }), 2, /^stratum: cannot listen on/);
    const ts = Object.assign(new Error('/a/app.ts:1: TypeScript enum, ...'), { code: 'STRATUM_ERR_APP_TYPESCRIPT' });
    expectOneLineError(await run(['serve', '--config', config], { fail: ts }), 1, /^stratum: \/a\/app\.ts:1: /);
  });

  test('any other failure exits 1 with one line', async () => {
    expectOneLineError(
      await run(['serve', '--config', config], { fail: new Error('worker crashed\nstack...') }),
      1,
      /^stratum: worker crashed\n$/,
    );
  });

  test('a config error stops before anything starts', async () => {
    const r = await run(['serve', '--config', config, '--listen', 'bad']);
    expect(r.code).toBe(2);
    expect(r.calls).toEqual([]);
  });

  test('top gets the admin address, token and interval', async () => {
    const r = await run(['top', '--interval', '0.5', '--once'], {
      env: { STRATUM_ADMIN: '127.0.0.1:9999', STRATUM_ADMIN_TOKEN: 't' },
    });
    expect(r.code).toBe(0);
    expect(r.calls).toEqual([
      { fn: 'runTop', arg: { admin: '127.0.0.1:9999', token: 't', interval: 0.5, once: true } },
    ]);
  });

  test('top defaults to the default admin address', async () => {
    const r = await run(['top']);
    expect(r.calls[0]!.arg).toEqual({ admin: '127.0.0.1:9900', token: null, interval: 1, once: false });
  });
});
