// TLS on the front listener, with real clients, in both topologies: openssl s_client for the protocol
// versions and the certificate chosen per SNI name, curl --resolve --cacert for requests, start-up
// refused on a bad certificate (exit 2, one line naming the file), and certificates swapped on disk
// (the file watch, and SIGHUP) under a bounded load of HTTPS requests with none failing.
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { requirePeer } from '../helpers/peers.ts';
import { makeTempDir, spawnTracked, waitUntil } from '../helpers/processes.ts';
import { REPO_ROOT, STRATUM_BIN, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { makeCert, makeExpiredCert, type TestCert } from './certs.ts';

afterAll(stopAllStratum);

const APP = join(REPO_ROOT, 'test/fixtures/apps/listener.ts');
const peers = requirePeer('openssl') && requirePeer('curl');

function run(cmd: string, args: string[], input = ''): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { timeout: 10_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) || 1 : 0, out: stdout + stderr }),
    );
    child.stdin?.end(input);
  });
}

/** `openssl s_client -brief`: the protocol and the peer certificate's subject, or the failure text. */
async function sClient(port: number, extra: string[]): Promise<{ code: number; out: string }> {
  return run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-brief', ...extra]);
}

function fingerprint(file: string): string {
  return new X509Certificate(readFileSync(file)).fingerprint256;
}

/** The certificate the server presents for `servername`, by fingerprint. */
function servedFingerprint(port: number, servername: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.once('error', reject);
  });
}

function portOf(front: string | undefined): number {
  expect(front).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
  return Number(new URL(front!).port);
}

async function runToExit(args: string[]): Promise<{ code: number | null; stderr: string; stdout: string }> {
  const t = spawnTracked(process.execPath, [STRATUM_BIN, ...args], { cwd: REPO_ROOT });
  const timer = setTimeout(() => void t.stop('SIGKILL', 0), 20_000);
  const code = await t.exited;
  clearTimeout(timer);
  return { code, stderr: t.stderr(), stdout: t.stdout() };
}

/**
 * A bounded load: `loops` clients, each sending GETs one after another (half on one kept
 * connection, half on a fresh connection each), until stop() — counted, with every failure kept.
 */
function load(port: number, ca: string[], loops: number) {
  let running = true;
  let ok = 0;
  const failures: string[] = [];
  const kept = new https.Agent({ keepAlive: true, maxSockets: 1 });
  const one = (agent: https.Agent | false) =>
    new Promise<void>((resolve) => {
      const req = https.get(
        { host: '127.0.0.1', port, path: '/', servername: 'a.test', headers: { host: 'a.test' }, ca, agent },
        (res) => {
          res.resume();
          res.once('end', () => {
            if (res.statusCode === 200) ok++;
            else failures.push(`status ${res.statusCode}`);
            resolve();
          });
        },
      );
      req.setTimeout(10_000, () => req.destroy(new Error('timeout')));
      req.once('error', (e) => {
        failures.push(String(e));
        resolve();
      });
    });
  const clients = Array.from({ length: loops }, async (_, i) => {
    for (let n = 0; running && n < 20_000; n++) await one(i % 2 === 0 ? kept : false);
  });
  return {
    get ok() {
      return ok;
    },
    failures,
    async stop() {
      running = false;
      await Promise.all(clients);
      kept.destroy();
    },
  };
}

describe.skipIf(!peers).each(['worker', 'master'] as const)('TLS listener, %s topology', (topology) => {
  let dir: string;
  let a: TestCert;
  let wild: TestCert;
  let s: StratumProcess;
  let port: number;

  beforeAll(async () => {
    dir = makeTempDir(`tls-${topology}`);
    a = makeCert(dir, 'a', ['a.test', 'www.a.test']);
    wild = makeCert(dir, 'wild', ['*.b.test']);
    const config = {
      listen: '127.0.0.1:0',
      topology,
      admin: { listen: '127.0.0.1:0' },
      app: { module: APP },
      pool: { workers: 2 },
      log: { access: false },
      // Relative paths: they resolve against the config file's directory.
      tls: {
        certificates: [
          { cert: 'a.crt', key: 'a.key' },
          { cert: 'wild.crt', key: 'wild.key' },
        ],
        watchInterval: 0.2,
      },
    };
    writeFileSync(join(dir, 'stratum.yaml'), stringify(config));
    s = await startStratum(['serve', '--config', join(dir, 'stratum.yaml')]);
    port = portOf(s.front);
  });
  afterAll(async () => {
    await s?.stop();
  });

  it('speaks TLS 1.3 and 1.2, with the certificate of the SNI name; the first one without SNI', async () => {
    const v13 = await sClient(port, ['-servername', 'a.test', '-tls1_3']);
    expect(v13.out).toMatch(/Protocol version: TLSv1\.3/);
    expect(v13.out).toMatch(/Peer certificate: CN = a\.test/);
    const v12 = await sClient(port, ['-servername', 'x.b.test', '-tls1_2']);
    expect(v12.out).toMatch(/Protocol version: TLSv1\.2/);
    expect(v12.out).toMatch(/Peer certificate: CN = \*\.b\.test/);
    // An AEAD suite with forward secrecy: the modern list, not OpenSSL's whole default.
    expect(v12.out).toMatch(/Ciphersuite: ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)/);
    const other = await sClient(port, ['-servername', 'unknown.test']);
    expect(other.out).toMatch(/Peer certificate: CN = a\.test/);
    const none = await sClient(port, ['-noservername']);
    expect(none.out).toMatch(/Peer certificate: CN = a\.test/);
  });

  it('refuses TLS 1.1 and 1.0 (the client offers them; the server answers "protocol version")', async () => {
    for (const v of ['-tls1_1', '-tls1']) {
      const r = await sClient(port, ['-servername', 'a.test', v, '-cipher', 'DEFAULT@SECLEVEL=0']);
      expect(r.out, v).toMatch(/alert protocol version/);
      expect(r.out, v).not.toMatch(/Protocol version: TLSv1(\.1)?\n/);
    }
    const cbc = await sClient(port, ['-servername', 'a.test', '-tls1_2', '-cipher', 'ECDHE-ECDSA-AES128-SHA']);
    expect(cbc.out).toMatch(/handshake failure|no shared cipher/);
  });

  it('serves requests to curl --resolve --cacert for each name; the app sees https', async () => {
    const one = await run('curl', [
      '-sS',
      '--resolve',
      `a.test:${port}:127.0.0.1`,
      '--cacert',
      a.cert,
      `https://a.test:${port}/echo`,
    ]);
    expect(one.code, one.out).toBe(0);
    const doc = JSON.parse(one.out) as { headers: [string, string][] };
    const proto = doc.headers.find(([k]) => k.toLowerCase() === 'x-forwarded-proto')?.[1];
    expect(proto).toBe('https');
    const two = await run('curl', [
      '-sS',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code} %{ssl_verify_result}',
      '--resolve',
      `x.b.test:${port}:127.0.0.1`,
      '--cacert',
      wild.cert,
      `https://x.b.test:${port}/`,
    ]);
    expect(two.out).toBe('200 0');
    // The wrong trust anchor for the name: curl refuses the certificate (it is the other one).
    const wrong = await run('curl', [
      '-sS',
      '--resolve',
      `x.b.test:${port}:127.0.0.1`,
      '--cacert',
      a.cert,
      `https://x.b.test:${port}/`,
    ]);
    expect(wrong.code).toBe(60);
  });

  it('exports each certificate expiry as a unix time', async () => {
    const body = await (await fetch(`${s.admin}/metrics`)).text();
    const expiry = (file: string) => Math.floor(new X509Certificate(readFileSync(file)).validToDate.getTime() / 1000);
    expect(body).toContain(`stratum_tls_certificate_expiry_seconds{name="a.test",file="${a.cert}"} ${expiry(a.cert)}`);
    expect(body).toContain(
      `stratum_tls_certificate_expiry_seconds{name="*.b.test",file="${wild.cert}"} ${expiry(wild.cert)}`,
    );
  });

  it('a certificate swapped on disk under load: 0 failed requests, and the new one is served', async () => {
    const next = makeCert(dir, 'a-next', ['a.test', 'www.a.test']);
    const ca = [readFileSync(a.cert, 'utf8'), readFileSync(next.cert, 'utf8')];
    const l = load(port, ca, 4);
    await waitUntil(async () => l.ok >= 50, { timeoutMs: 15_000, describe: () => `only ${l.ok} requests` });
    // As a certificate manager writes: new files renamed over the old ones, certificate first.
    copyFileSync(next.cert, join(dir, 'tmp.crt'));
    copyFileSync(next.key, join(dir, 'tmp.key'));
    renameSync(join(dir, 'tmp.crt'), a.cert);
    renameSync(join(dir, 'tmp.key'), a.key);
    const want = fingerprint(next.cert);
    // Every process serving it (each worker) has loaded it: several fresh handshakes in a row see it.
    let seen = 0;
    await waitUntil(async () => ((await servedFingerprint(port, 'a.test')) === want ? ++seen >= 8 : (seen = 0) > 0), {
      timeoutMs: 15_000,
      intervalMs: 20,
      describe: () => 'the new certificate is not served',
    });
    const before = l.ok;
    await waitUntil(async () => l.ok >= before + 50, { timeoutMs: 15_000, describe: () => 'load stalled' });
    await l.stop();
    expect(l.failures).toEqual([]);
    expect(l.ok).toBeGreaterThan(100);
  });

  it('a broken file at a reload (SIGHUP, the watch): logged with its file, the old certificate stays', async () => {
    const served = await servedFingerprint(port, 'x.b.test');
    const anchor = join(dir, 'wild-anchor.crt');
    copyFileSync(wild.cert, anchor);
    writeFileSync(wild.cert, 'not a certificate\n');
    await waitUntil(async () => s.logs().some((l) => l.code === 'STRATUM_ERR_TLS_CERT' && l.file === wild.cert), {
      timeoutMs: 10_000,
      describe: () => 'no error logged for the broken certificate',
    });
    const errors = () => s.logs().filter((l) => l.code === 'STRATUM_ERR_TLS_CERT' && l.file === wild.cert);
    const before = errors().length;
    process.kill(s.proc.pid!, 'SIGHUP');
    await waitUntil(async () => errors().length > before, {
      timeoutMs: 10_000,
      describe: () => 'SIGHUP logged nothing about the broken certificate',
    });
    if (topology === 'worker') {
      // A worker that dies while the broken file sits on disk: its replacement serves the master's
      // last good copy instead of failing to start.
      type Stats = { workers: Array<{ pid: number; state: string }> };
      const stats = async () => (await (await fetch(`${s.admin}/stats`)).json()) as Stats;
      const victim = (await stats()).workers[0]!.pid;
      process.kill(victim, 'SIGKILL');
      await waitUntil(
        async () => {
          const w = (await stats()).workers;
          return w.length === 2 && w.every((x) => x.pid !== victim && /idle|busy/.test(x.state));
        },
        { timeoutMs: 20_000, describe: () => 'the killed worker was not replaced' },
      );
      await waitUntil(async () => errors().some((l) => /the master validated/.test(String(l.msg))), {
        timeoutMs: 5_000,
        describe: () => `the new worker logged no fallback: ${JSON.stringify(errors())}`,
      });
    }
    for (let i = 0; i < 8; i++) expect(await servedFingerprint(port, 'x.b.test')).toBe(served);
    const r = await run('curl', [
      '-sS',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}',
      '--resolve',
      `x.b.test:${port}:127.0.0.1`,
      '--cacert',
      anchor,
      `https://x.b.test:${port}/`,
    ]);
    expect(r.out).toBe('200');
    const entry = s.logs().find((l) => l.code === 'STRATUM_ERR_TLS_CERT')!;
    expect(String(entry.msg)).toMatch(/not a PEM certificate .*stays in use/);
  });
});

describe.skipIf(!peers)('a bad certificate at start', () => {
  let dir: string;
  let good: TestCert;
  beforeAll(() => {
    dir = makeTempDir('tls-start');
    good = makeCert(dir, 'good', ['good.test']);
  });

  const cases: Array<[string, () => { cert: string; key: string; file: string; why: RegExp }]> = [
    ['expired', () => ({ ...makeExpiredCert(dir, 'old', 'old.test'), file: join(dir, 'old.crt'), why: /expired/ })],
    [
      'mismatched',
      () => {
        const other = makeCert(dir, 'other', ['other.test']);
        return { cert: good.cert, key: other.key, file: other.key, why: /does not match the certificate/ };
      },
    ],
    [
      'unreadable',
      () => ({ cert: join(dir, 'nope.crt'), key: good.key, file: join(dir, 'nope.crt'), why: /not found/ }),
    ],
  ];
  for (const topology of ['worker', 'master'] as const) {
    for (const [what, make] of cases) {
      it(`${what} (${topology} topology): exit 2, one line naming the file`, async () => {
        const c = make();
        const r = await runToExit([
          'serve',
          '--listen',
          '127.0.0.1:0',
          '--admin',
          '127.0.0.1:0',
          '--workers',
          '1',
          '--topology',
          topology,
          '--app',
          APP,
          '--tls-cert',
          c.cert,
          '--tls-key',
          c.key,
        ]);
        expect(r.code, r.stderr + r.stdout).toBe(2);
        const lines = r.stderr.trimEnd().split('\n');
        expect(lines).toHaveLength(1);
        expect(lines[0]).toContain(c.file);
        expect(lines[0]).toMatch(c.why);
        expect(r.stdout).not.toMatch(/stratum ready/);
      });
    }
  }

  it('stratum check loads the certificates too (nginx -t)', async () => {
    const other = makeCert(dir, 'other2', ['other.test']);
    const bad = await runToExit(['check', '--app', APP, '--tls-cert', good.cert, '--tls-key', other.key]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain(other.key);
    const ok = await runToExit(['check', '--app', APP, '--tls-cert', good.cert, '--tls-key', good.key]);
    expect(ok.code, ok.stderr).toBe(0);
    const half = await runToExit(['check', '--app', APP, '--tls-cert', good.cert]);
    expect(half.code).toBe(2);
    expect(half.stderr).toMatch(/tls\.key: missing/);
  });
});

describe.skipIf(!peers)('HTTP → HTTPS redirect (tls.redirect) and HSTS (tls.hsts)', () => {
  let s: StratumProcess;
  let cert: TestCert;
  let tlsPort: number;
  let httpPort: number;
  beforeAll(async () => {
    const dir = makeTempDir('tls-redirect');
    cert = makeCert(dir, 'a', ['a.test']);
    const config = {
      listen: '127.0.0.1:0',
      admin: { listen: '127.0.0.1:0' },
      app: { module: APP },
      pool: { workers: 1 },
      tls: { cert: cert.cert, key: cert.key, redirect: '127.0.0.1:0', hsts: 'max-age=600; includeSubDomains' },
    };
    writeFileSync(join(dir, 'stratum.yaml'), stringify(config));
    s = await startStratum(['serve', '--config', join(dir, 'stratum.yaml')]);
    tlsPort = portOf(s.front);
    expect(s.ready.redirect).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    httpPort = Number(new URL(String(s.ready.redirect)).port);
  });
  afterAll(async () => {
    await s?.stop();
  });

  it('answers 308 to the same host and path on the TLS port; curl -L lands there, with HSTS', async () => {
    const head = await run('curl', [
      '-sS',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code} %{redirect_url}',
      '-H',
      'Host: a.test',
      '-X',
      'POST',
      '-d',
      'x',
      `http://127.0.0.1:${httpPort}/echo?q=1`,
    ]);
    expect(head.out).toBe(`308 https://a.test:${tlsPort}/echo?q=1`);
    const followed = await run('curl', [
      '-sS',
      '-L',
      '-D',
      '-',
      '-o',
      '/dev/null',
      '--resolve',
      `a.test:${httpPort}:127.0.0.1`,
      '--resolve',
      `a.test:${tlsPort}:127.0.0.1`,
      '--cacert',
      cert.cert,
      `http://a.test:${httpPort}/`,
    ]);
    const heads = followed.out.split(/\r?\n\r?\n/).filter((h) => h.trim() !== '');
    expect(heads).toHaveLength(2);
    expect(heads[0]).toMatch(/^HTTP\/1\.1 308/);
    expect(heads[0]).not.toMatch(/strict-transport-security/i);
    expect(heads[1]).toMatch(/^HTTP\/2 200/);
    expect(heads[1]).toMatch(/strict-transport-security: max-age=600; includeSubDomains/i);
  });

  it('refuses to build a Location from a Host that is not a name', async () => {
    const r = await run('curl', [
      '-sS',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}',
      '-H',
      'Host: evil.test/x?',
      `http://127.0.0.1:${httpPort}/`,
    ]);
    expect(r.out).toBe('400');
  });
});
