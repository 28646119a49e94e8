import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import tls from 'node:tls';
import { pino, type Logger } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { makeCert, makeExpiredCert } from '../../test/edge/certs.ts';
import { TLS_DEFAULT_CIPHERS, type TlsSettings } from '../config/schema.ts';
import { loadCertificate, loadCertificates, SniTable, TlsStore } from './tls.ts';

const dir = mkdtempSync(join(tmpdir(), 'stratum-tls-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const a = makeCert(dir, 'a', ['a.test', 'www.a.test']);
const wild = makeCert(dir, 'wild', ['*.b.test']);
const other = makeCert(dir, 'other', ['other.test']);
const expired = makeExpiredCert(dir, 'expired', 'old.test');

function settings(certificates: Array<{ cert: string; key: string; names?: string[] | null }>): TlsSettings {
  return {
    minVersion: 'TLSv1.2',
    ciphers: TLS_DEFAULT_CIPHERS,
    http2: false,
    redirect: null,
    hsts: null,
    watchInterval: 0,
    certificates: certificates.map((c) => ({ names: null, ...c })),
  };
}

function logger(): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk: Buffer, _e, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { log: pino({ level: 'info' }, stream) as unknown as Logger, lines };
}

describe('loading a certificate', () => {
  it('takes its SNI names from subjectAltName and its expiry from notAfter', () => {
    const c = loadCertificate({ ...a, names: null }, settings([a]));
    expect(c.names).toEqual(['a.test', 'www.a.test']);
    expect(c.expiresAt * 1000).toBeGreaterThan(Date.now() + 29 * 86_400_000);
    expect(c.expiresAt * 1000).toBeLessThan(Date.now() + 31 * 86_400_000);
  });

  it('refuses an unreadable file, a key of another certificate, a non-PEM file and an expired certificate', () => {
    const cases: Array<[{ cert: string; key: string }, string, RegExp]> = [
      [{ cert: join(dir, 'missing.crt'), key: a.key }, join(dir, 'missing.crt'), /file not found/],
      [{ cert: a.cert, key: other.key }, other.key, /does not match the certificate/],
      [{ cert: a.key, key: a.key }, a.key, /not a PEM certificate/],
      [expired, expired.cert, /expired on 2020-01-02/],
    ];
    for (const [entry, file, why] of cases) {
      let err: { code?: string; file?: string; message?: string; exitCode?: number } = {};
      try {
        loadCertificate({ ...entry, names: null }, settings([entry]));
      } catch (e) {
        err = e as typeof err;
      }
      expect(err.code, file).toBe('STRATUM_ERR_TLS_CERT');
      expect(err.file).toBe(file);
      expect(err.exitCode).toBe(2);
      expect(err.message).toMatch(why);
      expect(err.message!.startsWith(`${file}: `)).toBe(true);
    }
  });

  it('a certificate that expires later is refused once that moment has passed', () => {
    expect(() => loadCertificates(settings([a]), Date.now() + 40 * 86_400_000)).toThrow(/expired on/);
  });
});

describe('SNI', () => {
  it('an exact name wins over a wildcard, a wildcard covers one label, anything else gets the first', () => {
    const s = settings([a, wild, { ...other, names: ['other.test', '*.a.test'] }]);
    const certs = loadCertificates(s);
    const t = new SniTable(certs);
    expect(t.match('a.test')).toBe(certs[0]);
    expect(t.match('WWW.A.TEST.')).toBe(certs[0]);
    expect(t.match('x.a.test')).toBe(certs[2]);
    expect(t.match('x.b.test')).toBe(certs[1]);
    expect(t.match('y.x.b.test')).toBe(certs[0]);
    expect(t.match('b.test')).toBe(certs[0]);
    expect(t.match('other.test')).toBe(certs[2]);
    expect(t.match(undefined)).toBe(certs[0]);
  });
});

describe('TlsStore reloads', () => {
  it('swaps a changed certificate, keeps the old one (and logs) when the new files fail', async () => {
    const live = { cert: join(dir, 'live.crt'), key: join(dir, 'live.key') };
    copyFileSync(a.cert, live.cert);
    copyFileSync(a.key, live.key);
    const { log, lines } = logger();
    const store = new TlsStore(settings([live]), log);
    const first = store.certificates[0]!.fingerprint;
    const server = tls.createServer(store.serverOptions());
    store.attach(server);
    expect(store.reload('test')).toBe(0);

    // A mismatched pair on disk: logged with the file, the old certificate stays.
    copyFileSync(other.cert, live.cert);
    expect(store.reload('test')).toBe(0);
    expect(store.certificates[0]!.fingerprint).toBe(first);
    expect(store.failures).toBe(1);
    const failure = lines.find((l) => l.code === 'STRATUM_ERR_TLS_CERT');
    expect(failure?.file).toBe(live.key);
    expect(String(failure?.msg)).toMatch(/stays in use/);

    copyFileSync(other.key, live.key);
    expect(store.reload('test')).toBe(1);
    expect(store.certificates[0]!.names).toEqual(['other.test']);
    expect(store.expiries()).toEqual([
      { name: 'other.test', file: live.cert, expiresAt: store.certificates[0]!.expiresAt },
    ]);
    store.close();
    server.close();
  });

  it('a worker falls back on the copy the master validated when the file on disk is broken', () => {
    const live = { cert: join(dir, 'fb.crt'), key: join(dir, 'fb.key') };
    copyFileSync(a.cert, live.cert);
    copyFileSync(a.key, live.key);
    const master = new TlsStore(settings([live]), logger().log, { snapshot: true });
    writeFileSync(live.cert, 'garbage');
    const { log, lines } = logger();
    // As a worker forked by that master: the directory named in the environment it inherits.
    const worker = new TlsStore(settings([live]), log);
    expect(worker.certificates[0]!.fingerprint).toBe(master.certificates[0]!.fingerprint);
    expect(lines.some((l) => l.file === live.cert)).toBe(true);
    // Without the master's copy the start fails.
    master.close();
    expect(() => new TlsStore(settings([live]), log)).toThrow(/not a PEM certificate/);
    delete process.env.STRATUM_TLS_SNAPSHOT;
  });
});

describe('the tls block and --tls-cert / --tls-key', () => {
  it("resolves relative paths against the config file, and puts the flags' pair first", async () => {
    const { loadConfig } = await import('../config/load.ts');
    const file = join(dir, 'stratum.yaml');
    writeFileSync(file, 'tls:\n  certificates:\n    - { cert: wild.crt, key: wild.key }\n');
    const flags = { tlsCert: a.cert, tlsKey: a.key, route: [`/=static:${dir}`] };
    const c = loadConfig({ file, mode: 'proxy', cwd: '/', flags });
    expect(c.tls!.certificates).toEqual([
      { cert: a.cert, key: a.key, names: null },
      { cert: wild.cert, key: wild.key, names: null },
    ]);
    expect(c.tls!.minVersion).toBe('TLSv1.2');
    expect(loadConfig({ mode: 'proxy', flags: { route: flags.route } }).tls).toBeNull();
  });

  it('refuses half a pair, an empty block and an old protocol, naming the field', async () => {
    const { loadConfig } = await import('../config/load.ts');
    const route = [`/=static:${dir}`];
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return (e as { path?: string }).path;
      }
      return undefined;
    };
    expect(code(() => loadConfig({ mode: 'proxy', flags: { tlsCert: a.cert, route } }))).toBe('tls.key');
    const file = join(dir, 'empty-tls.yaml');
    writeFileSync(file, 'tls: {}\n');
    expect(code(() => loadConfig({ file, mode: 'proxy', flags: { route } }))).toBe('tls.certificates');
    writeFileSync(file, `tls: { cert: ${a.cert}, key: ${a.key}, minVersion: TLSv1.1 }\n`);
    expect(code(() => loadConfig({ file, mode: 'proxy', flags: { route } }))).toBe('tls.minVersion');
  });
});
