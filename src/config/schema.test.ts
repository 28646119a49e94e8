import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { COMPRESSIBLE_TYPES, parseAddress, parseSize, schema } from './schema.ts';

const dir = mkdtempSync(join(tmpdir(), 'stratum-schema-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The first issue as "dotted.path: message", the way load.ts reports it. */
function firstIssue(input: unknown): string {
  const r = schema.safeParse(input);
  if (r.success) throw new Error('expected the config to be rejected');
  const i = r.error.issues[0]!;
  return `${i.path.join('.')}: ${i.message}`;
}

describe('defaults', () => {
  test('an empty config gets every documented default', () => {
    const c = schema.parse({});
    expect(c.listen).toBe('0.0.0.0:8080');
    expect(c.admin).toEqual({ listen: '127.0.0.1:9900', token: null, metricsPublic: true, allowedHosts: [] });
    expect(c.app).toEqual({ module: null, export: 'default' });
    expect(c.pool).toEqual({
      socket: null,
      socketMode: '0660',
      workers: availableParallelism(),
      bufferSize: 65535,
      harakiri: 60,
      maxRequests: 0,
      reloadOnRss: 0,
      listen: 1024,
      maxInflight: 64,
      gracefulTimeout: 30,
      socketTimeout: 60,
      cheaper: { enabled: false, min: 1, max: null },
    });
    expect(c.proxy).toEqual({
      clientMaxBodySize: 100 * 1024 * 1024,
      connectTimeout: 5,
      readTimeout: 60,
      sendTimeout: 60,
      keepAliveTimeout: 75,
      maxConnections: null,
      clientHeaderTimeout: 60,
      clientBodyTimeout: 60,
      clientBodyMinRate: 1024,
      clientBodyMinRateGrace: 10,
      requestBuffering: true,
      maxHeaderSize: 32768,
      compression: {
        enabled: true,
        encodings: ['br', 'zstd', 'gzip'],
        gzipLevel: 6,
        brotliQuality: 4,
        zstdLevel: 3,
        minLength: 1024,
        types: COMPRESSIBLE_TYPES,
      },
      serverTiming: true,
      h2c: false,
      trustedProxies: [],
      proxyProtocol: false,
      buffering: { enabled: true, memory: 256 * 1024, maxTempFile: 1024 * 1024 * 1024, sendTimeout: 60 },
    });
    expect(c.routes).toEqual([
      {
        host: null,
        path: '/',
        target: 'pool',
        targets: [{ kind: 'pool', raw: 'pool' }],
        readTimeout: null,
        harakiri: null,
        compression: null,
        static: {
          index: 'index.html',
          fallback: null,
          cacheControl: null,
          precompressed: true,
          allowSymlinksOutside: false,
        },
        clientMaxBodySize: null,
        buffering: null,
        upstream: {
          balance: 'round-robin',
          hashKey: 'client',
          maxFails: 1,
          failTimeout: 10,
          tries: 0,
          tryTimeout: 0,
          healthCheck: { enabled: false, interval: 5, timeout: 2, path: '/', status: [200], fails: 1, passes: 1 },
        },
      },
    ]);
    expect(c.log).toEqual({ level: 'info', access: true });
    expect(c.tracing).toEqual({ enabled: false, sampleRatio: 1, serviceName: 'stratum' });
    expect(c.metrics).toEqual({ enabled: true });
  });

  test('a partly written section keeps the defaults of its other fields', () => {
    const c = schema.parse({ pool: { workers: 3, cheaper: { enabled: true } } });
    expect(c.pool.workers).toBe(3);
    expect(c.pool.harakiri).toBe(60);
    expect(c.pool.cheaper).toEqual({ enabled: true, min: 1, max: null });
  });
});

describe('sizes', () => {
  test.each([
    [1024, 1024],
    ['1024', 1024],
    ['512k', 512 * 1024],
    ['100m', 100 * 1024 ** 2],
    ['1g', 1024 ** 3],
    ['2K', 2048],
    ['0', 0],
  ])('%j is %d bytes', (input, bytes) => {
    expect(parseSize(input)).toBe(bytes);
    expect(schema.parse({ proxy: { clientMaxBodySize: input } }).proxy.clientMaxBodySize).toBe(bytes);
  });

  test.each(['1x', '1.5m', '-1', 'm', ''])('%j is not a size', (input) => {
    expect(firstIssue({ proxy: { clientMaxBodySize: input } })).toMatch(/^proxy\.clientMaxBodySize: expected a size/);
  });

  test('a route may override the body size with a size string', () => {
    const c = schema.parse({ routes: [{ path: '/upload', target: 'pool', clientMaxBodySize: '1g' }] });
    expect(c.routes[0]!.clientMaxBodySize).toBe(1024 ** 3);
  });
});

describe('addresses', () => {
  test.each([
    ['127.0.0.1:8080', { kind: 'tcp', host: '127.0.0.1', port: 8080 }],
    ['0.0.0.0:0', { kind: 'tcp', host: '0.0.0.0', port: 0 }],
    ['localhost:3031', { kind: 'tcp', host: 'localhost', port: 3031 }],
    ['[::1]:80', { kind: 'tcp', host: '::1', port: 80 }],
    ['/run/stratum.sock', { kind: 'unix', path: '/run/stratum.sock' }],
    ['unix:/run/stratum.sock', { kind: 'unix', path: '/run/stratum.sock' }],
  ])('%s parses', (input, address) => {
    expect(parseAddress(input)).toEqual(address);
  });

  test.each(['8080', '::1:80', 'host:99999', 'host:', ':80', 'a b:1'])(
    '%s is rejected with STRATUM_ERR_CONFIG',
    (input) => {
      expect(() => parseAddress(input)).toThrow(expect.objectContaining({ code: 'STRATUM_ERR_CONFIG' }));
    },
  );

  test('listen fields and pool.socket are validated as addresses', () => {
    expect(firstIssue({ listen: 'nope' })).toMatch(/^listen: expected HOST:PORT/);
    expect(firstIssue({ admin: { listen: 'x:y' } })).toMatch(/^admin\.listen: /);
    expect(firstIssue({ pool: { socket: 'nope' } })).toMatch(/^pool\.socket: /);
  });
});

describe('targets', () => {
  test('each target form parses into its kind', () => {
    writeFileSync(join(dir, 'index.html'), 'hi');
    const c = schema.parse({
      routes: [
        { path: '/', target: 'pool' },
        { path: '/legacy', target: 'uwsgi://10.0.0.1:3031' },
        { path: '/sock', target: 'unix:/run/app.sock' },
        { path: '/http', target: 'http://127.0.0.1:9000' },
        { path: '/files', target: `static:${dir}` },
      ],
    });
    expect(c.routes.map((r) => r.targets[0])).toEqual([
      { kind: 'pool', raw: 'pool' },
      { kind: 'uwsgi', raw: 'uwsgi://10.0.0.1:3031', address: { kind: 'tcp', host: '10.0.0.1', port: 3031 } },
      { kind: 'uwsgi', raw: 'unix:/run/app.sock', address: { kind: 'unix', path: '/run/app.sock' } },
      {
        kind: 'http',
        raw: 'http://127.0.0.1:9000',
        url: new URL('http://127.0.0.1:9000'),
        address: { kind: 'tcp', host: '127.0.0.1', port: 9000 },
      },
      { kind: 'static', raw: `static:${dir}`, root: dir },
    ]);
    expect(c.routes[1]!.target).toBe('uwsgi://10.0.0.1:3031');
  });

  test('a list of uwsgi servers becomes several targets', () => {
    const c = schema.parse({
      routes: [{ target: ['uwsgi://10.0.0.1:3031', 'uwsgi://[::1]:3031', 'unix:/run/a.sock'] }],
    });
    expect(c.routes[0]!.targets.map((t) => t.kind)).toEqual(['uwsgi', 'uwsgi', 'uwsgi']);
  });

  test('a list of http servers is a group; each may carry weight= and backup', () => {
    const c = schema.parse({
      routes: [
        {
          target: ['http://10.0.0.1:80 weight=3', 'http://10.0.0.2:80', 'http://10.0.0.3:80 backup'],
          upstream: { balance: 'least-conn', healthCheck: { enabled: true, path: '/health' } },
        },
      ],
    });
    const r = c.routes[0]!;
    expect(r.targets.map((t) => [t.kind, t.raw, 'weight' in t ? t.weight : 1, 'backup' in t && t.backup])).toEqual([
      ['http', 'http://10.0.0.1:80', 3, false],
      ['http', 'http://10.0.0.2:80', 1, false],
      ['http', 'http://10.0.0.3:80', 1, true],
    ]);
    expect(r.upstream.balance).toBe('least-conn');
    expect(r.upstream.healthCheck).toMatchObject({ enabled: true, path: '/health', interval: 5, status: [200] });
  });

  test('a group may not mix kinds, and server parameters are checked', () => {
    const bad = (target: unknown, upstream?: unknown) =>
      schema.safeParse({ routes: [{ target, ...(upstream ? { upstream } : {}) }] });
    expect(bad(['http://10.0.0.1:80', 'uwsgi://10.0.0.2:3031']).success).toBe(false);
    expect(bad(['http://10.0.0.1:80', 'pool']).success).toBe(false);
    expect(bad(['http://10.0.0.1:80 weight=0']).success).toBe(false);
    expect(bad(['http://10.0.0.1:80 heavy']).success).toBe(false);
    expect(bad('static:/tmp weight=2').success).toBe(false);
    expect(bad('pool', { balance: 'random' }).success).toBe(false);
    expect(bad('pool', { hashKey: 'header:' }).success).toBe(false);
    expect(bad(['uwsgi://10.0.0.2:3031 weight=2', 'unix:/run/a.sock backup'], { balance: 'hash' }).success).toBe(true);
  });

  test('a bad target URL names the route and lists the accepted forms', () => {
    expect(firstIssue({ routes: [{ target: 'pool' }, { path: '/x', target: 'ftp://x' }] })).toBe(
      'routes.1.target: expected pool, uwsgi://HOST:PORT, unix:/path, http://HOST:PORT or static:/dir, got "ftp://x"',
    );
  });

  test('a list may hold only uwsgi servers', () => {
    expect(firstIssue({ routes: [{ target: ['uwsgi://a:1', 'http://b:2'] }] })).toMatch(
      /^routes\.0\.target\.1: a list of targets may only hold uwsgi servers/,
    );
  });

  test('an empty target list is rejected', () => {
    expect(firstIssue({ routes: [{ target: [] }] })).toMatch(/^routes\.0\.target: expected at least one target/);
  });

  test('a uwsgi target needs a real port', () => {
    expect(firstIssue({ routes: [{ target: 'uwsgi://a:0' }] })).toMatch(/^routes\.0\.target: /);
  });

  test('an http target with a path is rejected', () => {
    expect(firstIssue({ routes: [{ target: 'http://a:80/prefix' }] })).toMatch(
      /^routes\.0\.target: expected http:\/\/HOST:PORT without path/,
    );
  });

  test('a static root that does not exist is rejected', () => {
    expect(firstIssue({ routes: [{ target: `static:${join(dir, 'missing')}` }] })).toMatch(
      /^routes\.0\.target: static root not found/,
    );
  });

  test('a static root that is a file is rejected', () => {
    writeFileSync(join(dir, 'file.txt'), 'x');
    expect(firstIssue({ routes: [{ target: `static:${join(dir, 'file.txt')}` }] })).toMatch(
      /^routes\.0\.target: static root is not a directory/,
    );
  });

  test('a route without a target names the missing field', () => {
    expect(firstIssue({ routes: [{ path: '/a' }] })).toMatch(/^routes\.0\.target: missing/);
  });
});

describe('routes', () => {
  test('hosts are lower-cased and may be *. wildcards', () => {
    const c = schema.parse({
      routes: [
        { host: 'API.Example.com', target: 'pool' },
        { host: '*.example.com', target: 'pool' },
      ],
    });
    expect(c.routes.map((r) => r.host)).toEqual(['api.example.com', '*.example.com']);
  });

  test('a host with a port is rejected', () => {
    expect(firstIssue({ routes: [{ host: 'example.com:80', target: 'pool' }] })).toMatch(/^routes\.0\.host: /);
  });

  test('a path must start with /', () => {
    expect(firstIssue({ routes: [{ path: 'api', target: 'pool' }] })).toMatch(
      /^routes\.0\.path: expected a path prefix/,
    );
  });

  test('two routes for the same host and path are rejected', () => {
    expect(firstIssue({ routes: [{ target: 'pool' }, { path: '/', target: 'uwsgi://a:1' }] })).toMatch(
      /^routes\.1: duplicate route/,
    );
  });
});

describe('validation names the field', () => {
  test.each([
    [{ pool: { workers: 'abc' } }, 'pool.workers: expected an integer >= 1, got "abc"'],
    [{ pool: { workers: 0 } }, 'pool.workers: expected an integer >= 1, got 0'],
    [{ pool: { workers: 1.5 } }, 'pool.workers: expected an integer >= 1, got 1.5'],
    [{ pool: { bufferSize: 100 } }, 'pool.bufferSize: expected an integer 512..65535, got 100'],
    [{ pool: { socketMode: '0999' } }, 'pool.socketMode: expected an octal mode like "0660", got "0999"'],
    [{ pool: { harakiri: -1 } }, 'pool.harakiri: expected a number of seconds >= 0, got -1'],
    [{ proxy: { readTimeout: 0 } }, 'proxy.readTimeout: expected a number of seconds > 0, got 0'],
    [
      { log: { level: 'loud' } },
      'log.level: expected one of fatal, error, warn, info, debug, trace, silent, got "loud"',
    ],
    [{ log: { access: 'yes' } }, 'log.access: expected true or false, got "yes"'],
    [{ tracing: { sampleRatio: 2 } }, 'tracing.sampleRatio: expected a number 0..1, got 2'],
    [{ admin: 'x' }, 'admin: expected a mapping, got "x"'],
    [{ routes: { path: '/' } }, 'routes: expected a list of routes, got a mapping'],
  ])('%j', (input, message) => {
    expect(firstIssue(input)).toBe(message);
  });

  test('an unquoted YAML mode (a number) is explained', () => {
    expect(firstIssue({ pool: { socketMode: 660 } })).toMatch(
      /^pool\.socketMode: expected an octal mode string like "0660" \(quote it in YAML/,
    );
  });

  test('cheaper bounds must fit within the workers', () => {
    expect(firstIssue({ pool: { workers: 4, cheaper: { enabled: true, max: 8 } } })).toMatch(
      /^pool\.cheaper\.max: expected at most pool\.workers \(4\)/,
    );
    expect(firstIssue({ pool: { workers: 4, cheaper: { enabled: true, min: 6 } } })).toMatch(/^pool\.cheaper\.min: /);
    expect(schema.parse({ pool: { workers: 4, cheaper: { enabled: true, min: 2, max: 4 } } }).pool.cheaper.max).toBe(4);
  });

  test('unknown fields are errors', () => {
    const r = schema.safeParse({ pool: { wrokers: 4 } });
    expect(r.success).toBe(false);
    expect(r.error!.issues[0]).toMatchObject({ code: 'unrecognized_keys', keys: ['wrokers'], path: ['pool'] });
  });
});

test('an IPv6 literal host is kept without brackets', () => {
  expect(schema.parse({ routes: [{ host: '[::1]', target: 'pool' }] }).routes[0]!.host).toBe('::1');
});

describe('static routes and compression', () => {
  const first = (input: unknown) => {
    const r = schema.safeParse(input);
    return r.success ? null : `${r.error.issues[0]!.path.join('.')}: ${r.error.issues[0]!.message}`;
  };

  test('a fallback must stay inside the root, an index is a file name', () => {
    const route = (s: unknown) => ({ routes: [{ path: '/app', target: `static:${tmpdir()}`, static: s }] });
    expect(first(route({ fallback: 'index.html' }))).toBeNull();
    expect(first(route({ fallback: '/spa/index.html' }))).toBeNull();
    expect(first(route({ fallback: '../etc/passwd' }))).toMatch(/^routes\.0\.static\.fallback: expected a file path/);
    expect(first(route({ fallback: 'a/./b' }))).toMatch(/^routes\.0\.static\.fallback/);
    expect(first(route({ index: 'sub/index.html' }))).toMatch(/^routes\.0\.static\.index/);
    expect(first(route({ followSymlinks: true }))).toMatch(/^routes\.0\.static/);
  });

  test('compression levels and encodings are checked', () => {
    expect(first({ proxy: { compression: { brotliQuality: 12 } } })).toMatch(/^proxy\.compression\.brotliQuality/);
    expect(first({ proxy: { compression: { encodings: ['deflate'] } } })).toMatch(/^proxy\.compression\.encodings/);
    expect(first({ proxy: { compression: { minLength: '2k' } } })).toBeNull();
  });
});
