// TLS for the front listener: certificates loaded and checked (readable, PEM, the key matches,
// not expired), chosen by the SNI name a client sends (exact, then `*.` one label, then the first
// as the default), and swapped while serving — on SIGHUP and when the files change — without
// dropping a connection: a handshake picks the context current at that moment, connections already
// open keep theirs. A certificate that fails at start stops start-up (exit 2, one line naming the
// file); one that fails at a reload is logged and the one loaded before stays in use.
//
// In the worker topology each worker serves TLS itself and loads the files too. The master loads
// them first (to refuse a bad start, for the expiry metric) and leaves what it validated in a
// private directory (named to the workers by STRATUM_TLS_SNAPSHOT, which they inherit): a worker
// started while a broken file sits on disk (a respawn, a SIGHUP's rolling reload) serves the
// master's last good copy instead of failing to start.

import { createPrivateKey, X509Certificate } from 'node:crypto';
import {
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  unwatchFile,
  watchFile,
  writeFileSync,
  type Stats,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { TlsSettings } from '../config/schema.ts';
import { TlsCertificateInvalid } from '../errors.ts';

type CertificateEntry = TlsSettings['certificates'][number];

/** One certificate as loaded: its files, the names it answers and the context handshakes use. */
export interface LoadedCertificate {
  certFile: string;
  keyFile: string;
  /** SNI names, lower case: exact names and `*.suffix` wildcards. */
  names: string[];
  /** notAfter, in unix seconds. */
  expiresAt: number;
  fingerprint: string;
  /** What the server's own (default) context is made from (tls.Server.setSecureContext). */
  options: tls.SecureContextOptions;
  context: tls.SecureContext;
}

/** The name under which the expiry metric shows a certificate: its first SNI name, else its file. */
export function certificateLabel(c: LoadedCertificate): string {
  return c.names[0] ?? c.certFile;
}

function readPem(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'file not found' : code === 'EACCES' ? 'permission denied' : String(code);
    throw new TlsCertificateInvalid(file, `cannot read the TLS ${what}: ${why}`);
  }
}

/** DNS names of the certificate's subjectAltName, or its CN when it has none. */
function namesOf(x509: X509Certificate): string[] {
  const san = x509.subjectAltName;
  if (san) {
    const dns = san
      .split(/,\s*/)
      .filter((s) => s.startsWith('DNS:'))
      .map((s) => s.slice(4).toLowerCase());
    if (dns.length > 0) return dns;
  }
  const cn = /(?:^|\n)CN=([^\n]+)/.exec(x509.subject)?.[1];
  return cn ? [cn.toLowerCase()] : [];
}

/** The TLS settings every context shares: TLS 1.2 and 1.3 only, the configured TLS 1.2 suites. */
function protocolOptions(settings: TlsSettings): tls.SecureContextOptions {
  return {
    minVersion: settings.minVersion,
    maxVersion: 'TLSv1.3',
    ciphers: settings.ciphers,
    // The server's order, not the client's: the list is ordered strongest-and-fastest first.
    honorCipherOrder: true,
  };
}

/**
 * Loads and checks one certificate from PEM bytes (`certFile`/`keyFile` name them in errors).
 * Throws TlsCertificateInvalid naming the file at fault.
 */
export function certificateFrom(
  entry: CertificateEntry,
  certPem: Buffer,
  keyPem: Buffer,
  settings: TlsSettings,
  now = Date.now(),
): LoadedCertificate {
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(certPem);
  } catch {
    throw new TlsCertificateInvalid(entry.cert, 'not a PEM certificate');
  }
  let key: ReturnType<typeof createPrivateKey>;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    const encrypted = /passphrase|encrypted/i.test(String((err as Error).message));
    throw new TlsCertificateInvalid(entry.key, encrypted ? 'the private key is encrypted' : 'not a PEM private key');
  }
  if (!x509.checkPrivateKey(key))
    throw new TlsCertificateInvalid(entry.key, `the private key does not match the certificate ${entry.cert}`);
  const expires = x509.validToDate.getTime();
  if (expires <= now)
    throw new TlsCertificateInvalid(entry.cert, `the TLS certificate expired on ${x509.validToDate.toISOString()}`);
  const options: tls.SecureContextOptions = { ...protocolOptions(settings), cert: certPem, key: keyPem };
  let context: tls.SecureContext;
  try {
    context = tls.createSecureContext(options);
  } catch (err) {
    throw new TlsCertificateInvalid(entry.cert, `OpenSSL refused it: ${(err as Error).message}`);
  }
  return {
    certFile: entry.cert,
    keyFile: entry.key,
    names: entry.names ?? namesOf(x509),
    expiresAt: Math.floor(expires / 1000),
    fingerprint: x509.fingerprint256,
    options,
    context,
  };
}

/** Reads, loads and checks one certificate entry from its files. */
export function loadCertificate(entry: CertificateEntry, settings: TlsSettings, now = Date.now()): LoadedCertificate {
  return certificateFrom(entry, readPem(entry.cert, 'certificate'), readPem(entry.key, 'private key'), settings, now);
}

/** Loads every certificate or throws for the first bad one (start-up, `stratum check`). */
export function loadCertificates(settings: TlsSettings, now = Date.now()): LoadedCertificate[] {
  return settings.certificates.map((e) => loadCertificate(e, settings, now));
}

/**
 * The certificate for an SNI name: an exact name, else a `*.` name covering its first label,
 * else the first certificate. The first certificate listing a name wins it.
 */
export class SniTable {
  readonly #exact = new Map<string, LoadedCertificate>();
  readonly #wildcard = new Map<string, LoadedCertificate>();
  readonly fallback: LoadedCertificate;

  constructor(certs: readonly LoadedCertificate[]) {
    if (certs.length === 0) throw new Error('SniTable needs at least one certificate');
    this.fallback = certs[0]!;
    for (const c of certs) {
      for (const name of c.names) {
        const map = name.startsWith('*.') ? this.#wildcard : this.#exact;
        const key = name.startsWith('*.') ? name.slice(2) : name;
        if (!map.has(key)) map.set(key, c);
      }
    }
  }

  match(servername: string | undefined): LoadedCertificate {
    if (!servername) return this.fallback;
    const name = servername.toLowerCase().replace(/\.$/, '');
    const exact = this.#exact.get(name);
    if (exact) return exact;
    const dot = name.indexOf('.');
    return (dot > 0 ? this.#wildcard.get(name.slice(dot + 1)) : undefined) ?? this.fallback;
  }
}

const SNAPSHOT_FILE = 'tls-certificates.json';
/** The master's snapshot directory, inherited by the workers it forks. */
export const TLS_SNAPSHOT_ENV = 'STRATUM_TLS_SNAPSHOT';
type Snapshot = Array<{ cert: string; key: string; certPem: string; keyPem: string }>;

export interface TlsStoreOptions {
  /** The master of a worker topology: leave what it validated for the workers to fall back on. */
  snapshot?: boolean;
  /** A worker: where the master left its last good copy (default: $STRATUM_TLS_SNAPSHOT). */
  fallbackDir?: string;
}

/**
 * The certificates a process serves, swapped in place: handshakes read the current table, the
 * listening servers get the new default context, and a file that fails keeps the old one.
 */
export class TlsStore {
  readonly settings: TlsSettings;
  #certs: LoadedCertificate[];
  #table: SniTable;
  #log: Logger;
  #servers = new Set<tls.Server>();
  #watched: string[] = [];
  #pending: NodeJS.Timeout | null = null;
  #snapshotDir: string | undefined;
  /** Failed reloads since start (a test and an operator can read it). */
  failures = 0;
  /** Certificates swapped since start. */
  swaps = 0;

  constructor(settings: TlsSettings, log: Logger, opts: TlsStoreOptions = {}) {
    this.settings = settings;
    this.#log = log;
    const fallbackDir = opts.fallbackDir ?? (opts.snapshot ? undefined : process.env[TLS_SNAPSHOT_ENV]);
    this.#certs = settings.certificates.map((e, i) => {
      try {
        return loadCertificate(e, settings);
      } catch (err) {
        const fallback = fallbackDir ? fromSnapshot(fallbackDir, i, e, settings) : null;
        if (!fallback) throw err;
        this.#logFailure(err, 'the copy the master validated stays in use');
        return fallback;
      }
    });
    this.#table = new SniTable(this.#certs);
    if (opts.snapshot) {
      // Private (0700): the copy holds the private keys. The workers forked from now on inherit its name.
      this.#snapshotDir = mkdtempSync(join(tmpdir(), 'stratum-tls-'));
      process.env[TLS_SNAPSHOT_ENV] = this.#snapshotDir;
      this.#snapshot();
    }
  }

  get certificates(): readonly LoadedCertificate[] {
    return this.#certs;
  }

  /** Options for https.createServer / http2.createSecureServer: the default context and SNI. */
  serverOptions(): tls.TlsOptions {
    return {
      ...this.#table.fallback.options,
      SNICallback: (servername, cb) => cb(null, this.#table.match(servername).context),
    };
  }

  /** A listening server whose default context follows the reloads. */
  attach(server: tls.Server): void {
    this.#servers.add(server);
    server.once('close', () => this.#servers.delete(server));
  }

  /** Certificate expiry, for stratum_tls_certificate_expiry_seconds. */
  expiries(): Array<{ name: string; file: string; expiresAt: number }> {
    return this.#certs.map((c) => ({ name: certificateLabel(c), file: c.certFile, expiresAt: c.expiresAt }));
  }

  /**
   * Reads every file again. A certificate that loads and differs replaces its old one; one that
   * fails is logged and the old one stays. Returns how many were swapped.
   */
  reload(reason: string): number {
    let swapped = 0;
    const next = this.settings.certificates.map((e, i) => {
      const old = this.#certs[i]!;
      try {
        const c = loadCertificate(e, this.settings);
        if (c.fingerprint === old.fingerprint && c.options.key!.toString() === old.options.key!.toString()) return old;
        swapped++;
        return c;
      } catch (err) {
        this.failures++;
        this.#logFailure(err, `${reason}: the certificate loaded before stays in use`);
        return old;
      }
    });
    if (swapped === 0) return 0;
    const defaultChanged = next[0] !== this.#certs[0];
    this.#certs = next;
    this.#table = new SniTable(next);
    if (defaultChanged) for (const s of this.#servers) s.setSecureContext(next[0]!.options);
    this.swaps += swapped;
    this.#snapshot();
    this.#log.info(
      { reason, certificates: next.map((c) => ({ file: c.certFile, names: c.names, expiresAt: c.expiresAt })) },
      `TLS certificates reloaded (${swapped} changed)`,
    );
    return swapped;
  }

  /** Poll the files every settings.watchInterval seconds; a change reloads them (debounced). */
  watch(): void {
    if (this.settings.watchInterval <= 0 || this.#watched.length > 0) return;
    const interval = this.settings.watchInterval * 1000;
    const files = [...new Set(this.settings.certificates.flatMap((e) => [e.cert, e.key]))];
    const changed = (cur: Stats, prev: Stats) => {
      if (cur.mtimeMs === prev.mtimeMs && cur.ino === prev.ino && cur.size === prev.size) return;
      // A certificate and its key are rarely written in the same instant: wait for both.
      if (this.#pending) clearTimeout(this.#pending);
      this.#pending = setTimeout(
        () => {
          this.#pending = null;
          this.reload('file changed');
        },
        Math.min(500, interval),
      );
      this.#pending.unref();
    };
    // Stat polling, not inotify: a renamed-over file (how cert managers write) keeps being seen.
    for (const f of files) watchFile(f, { interval, persistent: false }, changed);
    this.#watched = files;
  }

  close(): void {
    for (const f of this.#watched) unwatchFile(f);
    this.#watched = [];
    if (this.#pending) clearTimeout(this.#pending);
    this.#servers.clear();
    if (this.#snapshotDir) rmSync(this.#snapshotDir, { recursive: true, force: true });
    this.#snapshotDir = undefined;
  }

  #logFailure(err: unknown, outcome: string): void {
    const e = err as { code?: string; file?: string; message?: string };
    this.#log.error({ code: e.code, file: e.file }, `${e.message ?? String(err)} (${outcome})`);
  }

  #snapshot(): void {
    if (!this.#snapshotDir) return;
    const data: Snapshot = this.#certs.map((c) => ({
      cert: c.certFile,
      key: c.keyFile,
      certPem: String(c.options.cert),
      keyPem: String(c.options.key),
    }));
    const file = join(this.#snapshotDir, SNAPSHOT_FILE);
    try {
      writeFileSync(`${file}.tmp`, JSON.stringify(data), { mode: 0o600 });
      renameSync(`${file}.tmp`, file);
    } catch (err) {
      this.#log.warn({ err: String(err) }, 'cannot leave the validated TLS certificates for the workers');
    }
  }
}

function fromSnapshot(dir: string, i: number, e: CertificateEntry, settings: TlsSettings): LoadedCertificate | null {
  try {
    const snap = (JSON.parse(readFileSync(join(dir, SNAPSHOT_FILE), 'utf8')) as Snapshot)[i];
    if (!snap || snap.cert !== e.cert || snap.key !== e.key) return null;
    return certificateFrom(e, Buffer.from(snap.certPem), Buffer.from(snap.keyPem), settings);
  } catch {
    return null;
  }
}

const REDIRECT_HOST =
  /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])$/;

/**
 * An HTTP listener that sends every request to HTTPS (nginx `return 308 https://$host$request_uri`):
 * the same host and path on the TLS listener's port; 308 keeps the method and body of a POST. A Host
 * that is not a plain name or address literal gets 400 rather than a Location made from it.
 */
export async function startRedirect(
  listen: string,
  httpsPort: number,
  log: Logger,
): Promise<{ url: string; close(): void }> {
  const http = process.getBuiltinModule('node:http');
  const server = http.createServer({ requestTimeout: 10_000, headersTimeout: 10_000 }, (req, res) => {
    const host = (req.headers.host ?? '').replace(/:\d{1,5}$/, '');
    if (!REDIRECT_HOST.test(host) || !(req.url ?? '').startsWith('/')) {
      res.writeHead(400, { 'content-type': 'text/plain; charset=utf-8', 'content-length': 12, connection: 'close' });
      return void res.end('Bad Request\n');
    }
    const location = `https://${host}${httpsPort === 443 ? '' : `:${httpsPort}`}${req.url}`;
    res.writeHead(308, { location, 'content-length': 0, 'cache-control': 'no-store' });
    res.end();
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  const { listenAt } = await import('../listen.ts');
  const url = await listenAt(server, listen, 'tls.redirect');
  log.debug({ redirect: url, httpsPort }, 'HTTP to HTTPS redirect listening');
  return { url, close: () => server.close() };
}
