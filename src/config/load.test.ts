import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { loadConfig, parseRouteFlag, type LoadOptions } from './load.ts';

let dir: string;
let app: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'stratum-load-'));
  mkdirSync(join(dir, 'conf'));
  mkdirSync(join(dir, 'public'));
  app = join(dir, 'app.ts');
  writeFileSync(app, 'export default async function app() {}\n');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function yaml(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

/** The ConfigInvalid loadConfig throws (tests assert the code, and that the message starts with the field path). */
function failure(opts: LoadOptions): { code: string; message: string } {
  try {
    loadConfig(opts);
  } catch (err) {
    return err as { code: string; message: string };
  }
  throw new Error('expected loadConfig to throw');
}

describe('sources and precedence', () => {
  test('with no file, env or flags the schema defaults apply', () => {
    const c = loadConfig({ mode: 'check', env: {}, flags: { app } });
    expect(c.listen).toBe('0.0.0.0:8080');
    expect(c.proxy.clientMaxBodySize).toBe(100 * 1024 * 1024);
  });

  test('the file overrides defaults, the environment overrides the file, flags override the environment', () => {
    const file = yaml(
      'precedence.yaml',
      'listen: 127.0.0.1:1000\nadmin: { listen: 127.0.0.1:2000 }\npool: { workers: 2, harakiri: 5 }\nlog: { level: ' +
        'warn }\n',
    );
    const env = { STRATUM_LISTEN: '127.0.0.1:3000', STRATUM_WORKERS: '3', STRATUM_LOG_LEVEL: 'debug' };
    const c = loadConfig({ file, env, flags: { listen: '127.0.0.1:4000', app }, mode: 'serve' });
    expect(c.listen).toBe('127.0.0.1:4000'); // flag > env > file
    expect(c.pool.workers).toBe(3); // env > file
    expect(c.log.level).toBe('debug'); // env > file
    expect(c.admin.listen).toBe('127.0.0.1:2000'); // file > default
    expect(c.pool.harakiri).toBe(5); // file, sibling of an env-set field
    expect(c.pool.bufferSize).toBe(65535); // default, in a section the file wrote
  });

  test('every environment variable sets its field', () => {
    const c = loadConfig({
      mode: 'pool',
      env: {
        STRATUM_LISTEN: '127.0.0.1:1',
        STRATUM_ADMIN: '127.0.0.1:2',
        STRATUM_WORKERS: '7',
        STRATUM_SOCKET: '127.0.0.1:3031',
        STRATUM_APP: app,
        STRATUM_LOG_LEVEL: 'error',
        STRATUM_ADMIN_TOKEN: 's3cret',
      },
    });
    expect(c.listen).toBe('127.0.0.1:1');
    expect(c.admin).toMatchObject({ listen: '127.0.0.1:2', token: 's3cret' });
    expect(c.pool).toMatchObject({ workers: 7, socket: '127.0.0.1:3031' });
    expect(c.app.module).toBe(app);
    expect(c.log.level).toBe('error');
  });

  test('empty environment variables are ignored', () => {
    const c = loadConfig({ mode: 'check', env: { STRATUM_ADMIN_TOKEN: '', STRATUM_WORKERS: '' }, flags: { app } });
    expect(c.admin.token).toBeNull();
  });

  test('numeric flags given as strings become numbers', () => {
    const c = loadConfig({
      mode: 'serve',
      env: {},
      flags: { app, workers: '5', harakiri: '0.5', maxRequests: '1000', reloadOnRss: '512', socketMode: '0600' },
    });
    expect(c.pool).toMatchObject({
      workers: 5,
      harakiri: 0.5,
      maxRequests: 1000,
      reloadOnRss: 512,
      socketMode: '0600',
    });
  });

  test('an empty file means all defaults', () => {
    const c = loadConfig({ file: yaml('empty.yaml', '# nothing\n'), mode: 'check', env: {}, flags: { app } });
    expect(c.pool.harakiri).toBe(60);
  });

  test('size strings in the file become bytes', () => {
    const c = loadConfig({
      file: yaml('sizes.yaml', 'proxy:\n  clientMaxBodySize: 512k\n  maxHeaderSize: 16k\n'),
      mode: 'check',
      env: {},
      flags: { app },
    });
    expect(c.proxy.clientMaxBodySize).toBe(512 * 1024);
    expect(c.proxy.maxHeaderSize).toBe(16 * 1024);
  });
});

describe('relative paths', () => {
  test("paths in the file resolve against the file's directory", () => {
    writeFileSync(join(dir, 'conf', 'app.ts'), 'export default 1;\n');
    mkdirSync(join(dir, 'conf', 'www'), { recursive: true });
    const file = yaml(
      'conf/relative.yaml',
      'app: { module: ./app.ts }\npool: { socket: run/pool.sock }\nroutes:\n  - { path: /s, target: static:www }\n  ' +
        '- { path: /u, target: unix:run/other.sock }\n  - { path: /, target: pool }\n',
    );
    const c = loadConfig({ file, mode: 'serve', env: {}, cwd: '/' });
    expect(c.app.module).toBe(join(dir, 'conf', 'app.ts'));
    expect(c.pool.socket).toBe(join(dir, 'conf', 'run', 'pool.sock'));
    expect(c.routes[0]!.targets[0]).toMatchObject({ kind: 'static', root: join(dir, 'conf', 'www') });
    expect(c.routes[1]!.targets[0]).toMatchObject({
      kind: 'uwsgi',
      address: { kind: 'unix', path: join(dir, 'conf', 'run', 'other.sock') },
    });
  });

  test('paths from flags and the environment resolve against the working directory', () => {
    const c = loadConfig({
      mode: 'serve',
      env: { STRATUM_APP: './app.ts' },
      flags: { route: ['/s=static:public', '/=pool'] },
      cwd: dir,
    });
    expect(c.app.module).toBe(app);
    expect(c.routes[0]!.targets[0]).toMatchObject({ kind: 'static', root: join(dir, 'public') });
  });
});

describe('--route', () => {
  test('a prefix starting with / is a path', () => {
    expect(parseRouteFlag('/api=uwsgi://127.0.0.1:3031')).toEqual({
      host: null,
      path: '/api',
      target: 'uwsgi://127.0.0.1:3031',
    });
  });

  test('any other prefix is host/path', () => {
    expect(parseRouteFlag('api.example.com/v1=http://127.0.0.1:9000')).toEqual({
      host: 'api.example.com',
      path: '/v1',
      target: 'http://127.0.0.1:9000',
    });
    expect(parseRouteFlag('*.example.com=pool')).toEqual({ host: '*.example.com', path: '/', target: 'pool' });
  });

  test('comma-separated uwsgi servers become a list', () => {
    expect(parseRouteFlag('/=uwsgi://10.0.0.1:3031,uwsgi://10.0.0.2:3031').target).toEqual([
      'uwsgi://10.0.0.1:3031',
      'uwsgi://10.0.0.2:3031',
    ]);
  });

  test.each(['/api', '=pool', '/api='])('%j is a usage error naming --route', (spec) => {
    expect(() => parseRouteFlag(spec)).toThrow(
      expect.objectContaining({ code: 'STRATUM_ERR_CONFIG', message: expect.stringMatching(/^--route: /) }),
    );
  });

  test("flag routes replace the file's routes", () => {
    const file = yaml(
      'routes.yaml',
      'routes:\n  - { path: /old, target: "uwsgi://127.0.0.1:1" }\n  - { path: /, target: pool }\n',
    );
    const c = loadConfig({
      file,
      mode: 'serve',
      env: {},
      flags: { app, route: ['api.example.com/v1=uwsgi://10.0.0.1:3031,uwsgi://10.0.0.2:3031', '/=pool'] },
    });
    expect(c.routes).toHaveLength(2);
    expect(c.routes[0]).toMatchObject({ host: 'api.example.com', path: '/v1' });
    expect(c.routes[0]!.targets).toHaveLength(2);
    expect(c.routes[1]!.targets).toEqual([{ kind: 'pool', raw: 'pool' }]);
  });

  test('a bad flag route names the route and the flag', () => {
    const e = failure({ mode: 'proxy', env: {}, flags: { route: ['/=ftp://x'] } });
    expect(e.code).toBe('STRATUM_ERR_CONFIG');
    expect(e.message).toMatch(/^routes\.0\.target: .*got "ftp:\/\/x" \(from --route\)$/);
  });
});

describe('errors name the field', () => {
  test('a wrong type in the file', () => {
    const e = failure({ file: yaml('type.yaml', 'pool:\n  workers: many\n'), mode: 'check', env: {}, flags: { app } });
    expect(e.code).toBe('STRATUM_ERR_CONFIG');
    expect(e.message).toBe('pool.workers: expected an integer >= 1, got "many"');
  });

  test('a wrong value from the environment says where it came from', () => {
    const e = failure({ mode: 'check', env: { STRATUM_WORKERS: 'abc' }, flags: { app } });
    expect(e.message).toBe('pool.workers: expected an integer >= 1, got "abc" (from STRATUM_WORKERS)');
  });

  test('a wrong value from a flag says where it came from', () => {
    const e = failure({ mode: 'check', env: {}, flags: { app, workers: 'abc' } });
    expect(e.message).toBe('pool.workers: expected an integer >= 1, got "abc" (from --workers)');
  });

  test('an unknown field, with a suggestion', () => {
    const e = failure({ file: yaml('unknown.yaml', 'pool:\n  wrokers: 4\n'), mode: 'check', env: {}, flags: { app } });
    expect(e.code).toBe('STRATUM_ERR_CONFIG');
    expect(e.message).toBe('pool.wrokers: unknown field (did you mean workers?)');
  });

  test('an unknown top-level field', () => {
    const e = failure({ file: yaml('unknown-top.yaml', 'server: {}\n'), mode: 'check', env: {}, flags: { app } });
    expect(e.message).toMatch(/^server: unknown field/);
  });

  test('an unknown field inside a route', () => {
    const e = failure({
      file: yaml('unknown-route.yaml', 'routes:\n  - { path: /, target: pool, backend: x }\n'),
      mode: 'check',
      env: {},
      flags: { app },
    });
    expect(e.message).toMatch(/^routes\.0\.backend: unknown field/);
  });

  test('a bad target URL', () => {
    const e = failure({
      file: yaml('target.yaml', 'routes:\n  - { path: /, target: pool }\n  - { path: /x, target: "ftp://x" }\n'),
      mode: 'check',
      env: {},
      flags: { app },
    });
    expect(e.message).toBe(
      'routes.1.target: expected pool, uwsgi://HOST:PORT, unix:/path, http://HOST:PORT or static:/dir, got "ftp://x"',
    );
  });

  test('a bad socket mode', () => {
    const e = failure({
      file: yaml('mode.yaml', 'pool:\n  socketMode: "0888"\n'),
      mode: 'check',
      env: {},
      flags: { app },
    });
    expect(e.message).toMatch(/^pool\.socketMode: expected an octal mode/);
  });

  test('several problems are one line that counts the rest', () => {
    const e = failure({
      file: yaml('many.yaml', 'listen: x\npool:\n  workers: 0\n  harakiri: -1\n'),
      mode: 'check',
      env: {},
      flags: { app },
    });
    expect(e.message).toMatch(/^listen: .*\(and 2 more problems\)$/);
    expect(e.message).not.toContain('\n');
  });

  test('bad YAML names the file and the line', () => {
    const file = yaml('bad.yaml', 'listen: 127.0.0.1:8080\npool:\n  workers: [1, 2\n');
    const e = failure({ file, mode: 'check', env: {}, flags: { app } });
    expect(e.code).toBe('STRATUM_ERR_CONFIG');
    expect(e.message).toMatch(
      new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: YAML syntax error at line \\d+: `),
    );
    expect(e.message).not.toContain('\n');
  });

  test('duplicate keys in YAML are a syntax error', () => {
    const e = failure({
      file: yaml('dup.yaml', 'listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n'),
      mode: 'check',
      env: {},
      flags: { app },
    });
    expect(e.message).toMatch(/YAML syntax error at line 2: /);
  });

  test('a file that is not a mapping', () => {
    const e = failure({ file: yaml('list.yaml', '- a\n- b\n'), mode: 'check', env: {}, flags: { app } });
    expect(e.message).toMatch(/list\.yaml: expected a mapping of settings at the top level, got a list$/);
  });

  test('a missing file names the file', () => {
    const e = failure({ file: join(dir, 'nope.yaml'), mode: 'check', env: {} });
    expect(e.code).toBe('STRATUM_ERR_CONFIG');
    expect(e.message).toBe(`${join(dir, 'nope.yaml')}: file not found`);
  });
});

describe('checks that depend on the command', () => {
  test('serve and pool need app.module', () => {
    expect(failure({ mode: 'serve', env: {} }).message).toMatch(/^app\.module: required by stratum serve/);
    expect(failure({ mode: 'pool', env: { STRATUM_SOCKET: '127.0.0.1:3031' } }).message).toMatch(
      /^app\.module: required by stratum pool/,
    );
  });

  test('a missing app module names the path as written', () => {
    const e = failure({ mode: 'serve', env: {}, flags: { app: './x.ts' }, cwd: dir });
    expect(e.code).toBe('STRATUM_ERR_CONFIG');
    expect(e.message).toMatch(/^app\.module: file not found: \.\/x\.ts/);
  });

  test('an app module that is a directory is rejected', () => {
    expect(failure({ mode: 'serve', env: {}, flags: { app: dir } }).message).toMatch(/^app\.module: not a file/);
  });

  test('pool needs an address', () => {
    expect(failure({ mode: 'pool', env: {}, flags: { app } }).message).toMatch(
      /^pool\.socket: stratum pool needs an address/,
    );
    expect(loadConfig({ mode: 'pool', env: {}, flags: { app, socket: '127.0.0.1:0' } }).pool.socket).toBe(
      '127.0.0.1:0',
    );
  });

  test('proxy refuses pool targets', () => {
    const e = failure({ mode: 'proxy', env: {}, flags: { route: ['/x=uwsgi://127.0.0.1:3031', '/=pool'] } });
    expect(e.message).toBe(
      'routes.1.target: "pool" needs stratum serve; stratum proxy routes to uwsgi/http/static only',
    );
  });

  test('proxy needs no app module', () => {
    const c = loadConfig({ mode: 'proxy', env: {}, flags: { route: ['/=uwsgi://127.0.0.1:3031'] } });
    expect(c.app.module).toBeNull();
  });

  test('check needs an app module only when a route uses the pool', () => {
    expect(failure({ mode: 'check', env: {} }).message).toMatch(/^app\.module: required/);
    expect(loadConfig({ mode: 'check', env: {}, flags: { route: ['/=http://127.0.0.1:9000'] } }).app.module).toBeNull();
  });
});
