// The one schema of stratum's configuration: it validates the YAML file (plus environment and
// flags, merged by load.ts), it is the source of the TypeScript types (`StratumConfig`), and
// docs.ts renders docs/config.md from it. Every field says which nginx / uWSGI option it mirrors.
//
// Error texts are written here, next to the field, as "expected …, got …" so that load.ts can
// prefix them with the dotted path and print one line.

import { statSync } from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';
import { z } from 'zod';
import { ConfigInvalid } from '../errors.ts';
import { parseCron } from '../pool/cron.ts';
import { parseTrustedProxy } from '../proxy/forward.ts';

export type Address = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export type Target =
  | { kind: 'pool'; raw: string; app?: string }
  | ({ kind: 'uwsgi'; raw: string; address: Address } & ServerOptions)
  | ({ kind: 'http'; raw: string; url: URL; address: Address } & ServerOptions)
  | { kind: 'static'; raw: string; root: string };

/** A group server's options, written after its address (`http://10.0.0.2:80 weight=3 backup`), as nginx's `server`. */
export type ServerOptions = { weight?: number; backup?: boolean };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const TARGET_FORMS = 'pool, uwsgi://HOST:PORT, unix:/path, http://HOST:PORT or static:/dir';
const ADDRESS_FORMS = 'HOST:PORT or a socket path';

/** How a bad value is quoted in an error message. */
export function show(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (Array.isArray(value)) return 'a list';
  if (value !== null && typeof value === 'object') return 'a mapping';
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function expected(what: string): (iss: { input?: unknown }) => string {
  return (iss) => (iss.input === undefined ? `missing; expected ${what}` : `expected ${what}, got ${show(iss.input)}`);
}

// --- addresses -------------------------------------------------------------------------------

/** The address, or the reason it is not one. */
function addressOrReason(s: string): Address | string {
  const text = s.startsWith('unix:') ? s.slice(5) : s;
  if (text.includes('/')) return { kind: 'unix', path: text };
  const m = /^(?:\[([^\]]*)\]|([^:[\]]*)):(\d{1,5})$/.exec(text);
  if (!m) return `expected ${ADDRESS_FORMS}, got ${show(s)}`;
  const port = Number(m[3]);
  if (port > 65535) return `port must be 0..65535, got ${show(s)}`;
  if (m[1] !== undefined) {
    if (!isIPv6(m[1])) return `not an IPv6 address: ${show(s)}`;
    return { kind: 'tcp', host: m[1], port };
  }
  const host = m[2]!;
  if (
    host === '' ||
    !(isIPv4(host) || /^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(host))
  ) {
    return `expected ${ADDRESS_FORMS}, got ${show(s)}`;
  }
  return { kind: 'tcp', host, port };
}

/**
 * Parses `HOST:PORT` (`[::1]:80` for IPv6; port 0 = the OS picks) or a socket path (anything
 * containing "/", optionally prefixed `unix:`). Throws ConfigInvalid naming `path`.
 */
export function parseAddress(s: string, path = 'address'): Address {
  const a = addressOrReason(s);
  if (typeof a === 'string') throw new ConfigInvalid(path, a);
  return a;
}

/** `host:port`, with brackets for IPv6 — the form users type and error messages show. */
export function formatAddress(a: Address): string {
  if (a.kind === 'unix') return a.path;
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

const address = z
  .string({ error: expected(ADDRESS_FORMS) })
  .superRefine((s, ctx) => {
    const a = addressOrReason(s);
    if (typeof a === 'string') ctx.addIssue({ code: 'custom', message: a, input: s });
  })
  .meta({ docType: 'address' });

// --- scalar kinds ------------------------------------------------------------------------------

function int(min: number, max?: number) {
  const error = expected(max === undefined ? `an integer >= ${min}` : `an integer ${min}..${max}`);
  const s = z.int({ error }).min(min, { error });
  return max === undefined ? s : s.max(max, { error });
}

function num(min: number, max: number) {
  const error = expected(`a number ${min}..${max}`);
  return z.number({ error }).min(min, { error }).max(max, { error });
}

const seconds = () => {
  const error = expected('a number of seconds >= 0');
  return z.number({ error }).min(0, { error }).meta({ docType: 'seconds ≥ 0' });
};
const positiveSeconds = () => {
  const error = expected('a number of seconds > 0');
  return z.number({ error }).gt(0, { error }).meta({ docType: 'seconds > 0' });
};
const bool = () => z.boolean({ error: expected('true or false') });

const SIZE_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };
const SIZE_FORMS = 'a size in bytes or like "512k", "100m", "1g"';

/** nginx sizes: a number of bytes, or a string with an optional k/m/g suffix (case-insensitive). */
export function parseSize(v: number | string): number | null {
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? v : null;
  const m = /^\s*(\d+)\s*([kmg]?)\s*$/i.exec(v);
  if (!m) return null;
  const bytes = Number(m[1]) * SIZE_UNITS[m[2]!.toLowerCase()]!;
  return Number.isSafeInteger(bytes) ? bytes : null;
}

const size = () =>
  z
    .union([z.number(), z.string()], { error: expected(SIZE_FORMS) })
    .transform((v, ctx) => {
      const bytes = parseSize(v);
      if (bytes === null) {
        ctx.issues.push({ code: 'custom', message: `expected ${SIZE_FORMS}, got ${show(v)}`, input: v });
        return z.NEVER;
      }
      return bytes;
    })
    .meta({ docType: 'size' });

// --- compression and static files (src/proxy/compress.ts, upstream-static.ts) --------------------

/** What proxy.compression.types holds unless set: nginx's gzip_types and the usual additions. */
export const COMPRESSIBLE_TYPES = [
  'text/*',
  'application/json',
  'application/*+json',
  'application/javascript',
  'application/x-javascript',
  'application/ecmascript',
  'application/xml',
  'application/*+xml',
  'application/wasm',
  'application/yaml',
  'image/svg+xml',
  'image/x-icon',
  'image/vnd.microsoft.icon',
  'image/bmp',
  'font/ttf',
  'font/otf',
  'application/vnd.ms-fontobject',
];

const compression = z
  .strictObject(
    {
      enabled: bool()
        .default(true)
        .describe('Encode responses for clients that accept it (nginx `gzip on`); a route\'s `compression` overrides.'),
      encodings: z
        .array(z.enum(['br', 'zstd', 'gzip'], { error: expected('"br", "zstd" or "gzip"') }), {
          error: expected('a list of "br", "zstd", "gzip"'),
        })
        .default(['br', 'zstd', 'gzip'])
        .describe(
          'Encodings offered, in order of preference when Accept-Encoding gives several the same q-value ' +
            '(zstd only where node:zlib has it).',
        ),
      gzipLevel: int(1, 9).default(6).describe('gzip level (nginx `gzip_comp_level`).'),
      brotliQuality: int(0, 11)
        .default(4)
        .describe('Brotli quality (ngx_brotli `brotli_comp_level`); above 5 the CPU cost climbs steeply.'),
      zstdLevel: int(1, 19).default(3).describe('zstd level.'),
      minLength: size()
        .prefault('1k')
        .describe('Smallest Content-Length encoded (nginx `gzip_min_length`); a body of unknown length always is.'),
      types: z
        .array(z.string({ error: expected('a media type like "text/*" or "application/json"') }), {
          error: expected('a list of media types'),
        })
        .default(COMPRESSIBLE_TYPES)
        .describe(
          'Media types encoded (nginx `gzip_types`); `*` matches any characters, as in `text/*` or ' +
            '`application/*+json`. text/event-stream never is.',
        )
        .meta({ docDefault: 'text/*, JSON, JavaScript, XML, SVG, WebAssembly, YAML, icons, TTF/OTF fonts' }),
    },
    { error: expected('a mapping') },
  )
  .prefault({})
  .describe(
    'Response compression (gzip, brotli, zstd), chosen by Accept-Encoding with q-values: never for HEAD, ' +
      '1xx/204/304, ranges, `Cache-Control: no-transform`, or a body already encoded.',
  );

const RELATIVE_FILE = /^\/?(?!.*(?:^|\/)\.\.?(?:\/|$))[^\0\\]+$/;

const staticFiles = z
  .strictObject(
    {
      index: z
        .string({ error: expected('a file name or null') })
        .regex(/^[^/\\\0]+$/, { error: expected('a file name (no "/") or null') })
        .meta({ docType: 'string' })
        .nullable()
        .default('index.html')
        .describe('File served for a directory (nginx `index`); null = none, a directory is 404.'),
      fallback: z
        .string({ error: expected('a file path inside the root, or null') })
        .regex(RELATIVE_FILE, { error: expected('a file path inside the root (no "..")') })
        .meta({ docType: 'string' })
        .nullable()
        .default(null)
        .describe(
          'File, relative to the root, served (200) for any GET or HEAD under the route with no file of its own: ' +
            "a single-page app's `index.html` (nginx `try_files $uri $uri/ /index.html`). null = 404.",
        ),
      cacheControl: z
        .string({ error: expected('a Cache-Control value or null') })
        .min(1, { error: expected('a Cache-Control value or null') })
        .nullable()
        .default(null)
        .describe(
          'Cache-Control of every file served, e.g. `public, max-age=31536000, immutable` on a route of hashed ' +
            'asset names (nginx `expires` / `add_header Cache-Control`); null = none.',
        ),
      precompressed: bool()
        .default(true)
        .describe(
          'Serve `FILE.br` / `FILE.zst` / `FILE.gz` beside FILE when the client accepts that encoding (nginx ' +
            '`gzip_static`, ngx_brotli `brotli_static`).',
        ),
      allowSymlinksOutside: bool()
        .default(false)
        .describe(
          'Follow symlinks whose target is outside the root; false = such a file is 403 (nginx ' +
            '`disable_symlinks`). Symlinks inside the root are always followed.',
        ),
    },
    { error: expected('a mapping') },
  )
  .prefault({})
  .describe('How a `static:` route serves its folder; ignored by other targets.');

// --- routes ------------------------------------------------------------------------------------

type TargetIssue = { message: string; input: string };

function parseTarget(raw: string): Target | TargetIssue {
  const bad = (why?: string): TargetIssue => ({
    message: why ?? `expected ${TARGET_FORMS}, got ${show(raw)}`,
    input: raw,
  });
  if (raw === 'pool') return { kind: 'pool', raw };
  if (raw.startsWith('pool:')) {
    const app = raw.slice('pool:'.length);
    if (!APP_NAME.test(app)) return bad(`expected pool:NAME with ${APP_NAME_FORMS}, got ${show(raw)}`);
    return { kind: 'pool', raw, app };
  }
  if (raw.startsWith('uwsgi://')) {
    const a = addressOrReason(raw.slice('uwsgi://'.length).replace(/\/$/, ''));
    if (typeof a === 'string' || a.kind !== 'tcp') return bad(`expected uwsgi://HOST:PORT, got ${show(raw)}`);
    if (a.port === 0) return bad(`uwsgi target needs a port 1..65535, got ${show(raw)}`);
    return { kind: 'uwsgi', raw, address: a };
  }
  if (raw.startsWith('unix:')) {
    const path = raw.slice('unix:'.length);
    if (path === '') return bad(`expected unix:/path/to/socket, got ${show(raw)}`);
    return { kind: 'uwsgi', raw, address: { kind: 'unix', path: resolve(path) } };
  }
  if (raw.startsWith('http://')) {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      return bad(`expected http://HOST:PORT, got ${show(raw)}`);
    }
    if (url.username || url.password || url.search || url.hash || url.pathname !== '/') {
      return bad(`expected http://HOST:PORT without path, query or credentials, got ${show(raw)}`);
    }
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    return { kind: 'http', raw, url, address: { kind: 'tcp', host, port: url.port === '' ? 80 : Number(url.port) } };
  }
  if (raw.startsWith('static:')) {
    const dir = raw.slice('static:'.length);
    if (dir === '') return bad(`expected static:/dir, got ${show(raw)}`);
    const root = resolve(dir);
    const st = statSync(root, { throwIfNoEntry: false });
    if (!st) return bad(`static root not found: ${root}`);
    if (!st.isDirectory()) return bad(`static root is not a directory: ${root}`);
    return { kind: 'static', raw, root };
  }
  return bad();
}

// --- upstream groups (src/proxy/balancer.ts, health.ts) ----------------------------------------

/** `http://10.0.0.2:80 weight=3 backup`: the target, then nginx `server` parameters. */
function parseServer(raw: string): Target | TargetIssue {
  const [head = '', ...params] = raw.trim().split(/\s+/);
  const t = parseTarget(params.length === 0 ? raw : head);
  if ('message' in t || params.length === 0) return t;
  if (t.kind !== 'uwsgi' && t.kind !== 'http') {
    return { message: `only uwsgi and http servers take weight= or backup, got ${show(raw)}`, input: raw };
  }
  const opts: ServerOptions = {};
  for (const p of params) {
    const w = /^weight=(\d{1,4})$/.exec(p);
    if (w && Number(w[1]) >= 1 && Number(w[1]) <= 1000) opts.weight = Number(w[1]);
    else if (p === 'backup') opts.backup = true;
    else {
      const message = `expected weight=1..1000 or backup after the server, got ${show(p)} in ${show(raw)}`;
      return { message, input: raw };
    }
  }
  return { ...t, ...opts };
}

const HASH_KEY_FORMS = '"client", "uri", "header:NAME" or "cookie:NAME"';

const healthCheck = z
  .strictObject(
    {
      enabled: bool()
        .default(false)
        .describe('Check every server of the group on its own, as nginx Plus `health_check`.'),
      interval: positiveSeconds().default(5).describe('Seconds between two checks of a server.'),
      timeout: positiveSeconds()
        .default(2)
        .describe('Seconds a check may take (connect and answer) before it counts as failed.'),
      path: z
        .string({ error: expected('a request target starting with "/"') })
        .regex(/^\/\S*$/, { error: expected('a request target starting with "/"') })
        .meta({ docType: 'string' })
        .default('/')
        .describe('Path a check asks for with GET (over uwsgi for uwsgi servers, as a request from the front).'),
      status: z
        .array(int(100, 599), { error: expected('a list of HTTP status codes') })
        .min(1, { error: expected('at least one status code') })
        .default([200])
        .describe('Answers that count as healthy.'),
      fails: int(1).default(1).describe('Consecutive failed checks that take a server out (nginx Plus `fails`).'),
      passes: int(1).default(1).describe('Consecutive good checks that bring it back (nginx Plus `passes`).'),
    },
    { error: expected('a mapping') },
  )
  .prefault({})
  .describe(
    "Active health checks. Each process that runs the front checks its own groups' servers (every worker in the " +
      'worker topology): one small GET per server per interval and process.',
  );

const upstreamGroup = z
  .strictObject(
    {
      balance: z
        .enum(['round-robin', 'least-conn', 'hash'], { error: expected('"round-robin", "least-conn" or "hash"') })
        .default('round-robin')
        .describe(
          'Which server takes a request: `round-robin` (smooth and weighted, as nginx), `least-conn` (fewest ' +
            'active requests per weight; ties rotate; nginx `least_conn`) or `hash` (consistent hash of `hashKey`, ' +
            'so a client sticks to a server; nginx `hash … consistent`).',
        ),
      hashKey: z
        .string({ error: expected(HASH_KEY_FORMS) })
        .regex(/^(client|uri|header:[A-Za-z0-9!#$%&'*+.^_`|~-]+|cookie:[^\s;=,]+)$/, {
          error: expected(HASH_KEY_FORMS),
        })
        .meta({ docType: 'string' })
        .default('client')
        .describe(
          'What `hash` hashes: `client` (the client address, sticky sessions; nginx `hash $remote_addr consistent`), ' +
            '`uri`, `header:NAME` or `cookie:NAME`. A request without that header or cookie goes round-robin.',
        ),
      maxFails: int(0)
        .default(1)
        .describe(
          'Failed tries within `failTimeout` that take a server out for `failTimeout` (nginx `max_fails`); ' +
            '0 = never. When every server is out, the one whose time out ends first is still tried (a lone ' +
            'server always is), as a blip should not refuse all traffic.',
        ),
      failTimeout: positiveSeconds()
        .default(10)
        .describe('Window in which failures are counted, and how long a server stays out (nginx `fail_timeout`).'),
      tries: int(0)
        .default(0)
        .describe(
          'Most servers one request is tried on (nginx `proxy_next_upstream_tries`); 0 = each server of the group ' +
            'once. A failed connection moves any request on; a reset before the answer or a 502/503 answer only ' +
            'GET, HEAD, PUT, DELETE, OPTIONS; a body streamed without buffering never (it cannot be sent twice).',
        ),
      tryTimeout: seconds()
        .default(0)
        .describe(
          'Seconds after the first try past which no other server is tried (nginx `proxy_next_upstream_timeout`); ' +
            '0 = no bound.',
        ),
      healthCheck,
    },
    { error: expected('a mapping') },
  )
  .prefault({})
  .describe('How a route with several http or uwsgi servers spreads and retries requests (nginx `upstream {}`).');

const HOST_PATTERN = /^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$|^\[[0-9a-f:.]+\]$/;
const HOST_FORMS = 'a host name like "example.com" or "*.example.com" (no port), or null';

const route = z
  .strictObject(
    {
      host: z
        .string({ error: expected(HOST_FORMS) })
        .transform((h) => h.toLowerCase())
        .refine((h) => HOST_PATTERN.test(h), { error: expected(HOST_FORMS) })
        // An IPv6 literal is matched without brackets, like the Host header's.
        .transform((h) => h.replace(/^\[(.*)\]$/, '$1'))
        .nullable()
        // Not .default(): a default on a transforming schema is dropped from the input JSON Schema (docs).
        .prefault(null)
        .describe(
          'Match requests whose Host header (port stripped) equals this name, or, written `*.example.com`, ends in ' +
            '`.example.com` (nginx `server_name`). null = any host.',
        ),
      path: z
        .string({ error: expected('a path prefix starting with "/"') })
        .regex(/^\/[^\s?#]*$/, { error: expected('a path prefix starting with "/"') })
        .meta({ docType: 'string' })
        .default('/')
        .describe(
          'URL path prefix, starting with "/" (nginx `location /prefix`), matched on segment boundaries: `/api` ' +
            'matches `/api` and `/api/x`, not `/apix`.',
        ),
      target: z
        .union([z.string(), z.array(z.string())], {
          error: expected(`${TARGET_FORMS}, or a list of uwsgi or http servers`),
        })
        .describe(
          'Where matching requests go: `pool` (the built-in worker pool, like uWSGI behind nginx), ' +
            '`uwsgi://HOST:PORT` or `unix:/path` ' +
            '(an external uwsgi server; nginx `uwsgi_pass`), `http://HOST:PORT` (nginx `proxy_pass`) or ' +
              '`static:/dir` (files; nginx `root`). ' +
            'A list of uwsgi servers, or of http servers, is a group balanced by `upstream` (nginx `upstream`); ' +
            'each may be followed by `weight=N` and `backup`, as nginx\'s `server` line.',
        )
        .meta({ docType: 'string | string[]' }),
      readTimeout: positiveSeconds()
        .nullable()
        .default(null)
        .describe("This route's `proxy.readTimeout`; null = the global one."),
      harakiri: seconds()
        .nullable()
        .default(null)
        .describe("This route's `pool.harakiri` (pool targets); null = the global one."),
      compression: bool()
        .nullable()
        .default(null)
        .describe("Compress this route's responses (true/false); null = `proxy.compression.enabled`."),
      static: staticFiles,
      clientMaxBodySize: size()
        .nullable()
        .prefault(null)
        .describe("This route's `proxy.clientMaxBodySize`; null = the global one."),
      buffering: bool()
        .nullable()
        .default(null)
        .describe("Buffer this route's responses (pool targets; true/false); null = `proxy.buffering.enabled`."),
      upstream: upstreamGroup,
    },
    { error: expected('a route mapping with a target') },
  )
  .transform((r, ctx) => {
    const raws = typeof r.target === 'string' ? [r.target] : r.target;
    if (raws.length === 0) {
      ctx.issues.push({ code: 'custom', message: 'expected at least one target', input: r.target, path: ['target'] });
      return z.NEVER;
    }
    const targets: Target[] = [];
    raws.forEach((raw, i) => {
      const path = typeof r.target === 'string' ? ['target'] : ['target', i];
      const t = parseServer(raw);
      const first = targets[0]?.kind;
      if ('message' in t) {
        ctx.issues.push({ code: 'custom', ...t, path });
      } else if (
        typeof r.target !== 'string' &&
        (t.kind === 'pool' || t.kind === 'static' || (first !== undefined && t.kind !== first))
      ) {
        ctx.issues.push({
          code: 'custom',
          message:
            'a list of targets may only hold uwsgi servers (uwsgi://HOST:PORT or unix:/path) or only http servers, ' +
            `got ${show(raw)}`,
          input: raw,
          path,
        });
      } else {
        targets.push(t);
      }
    });
    return targets.length === raws.length ? { ...r, targets } : z.NEVER;
  });

// --- TLS (src/proxy/tls.ts) -------------------------------------------------------------------

/** Mozilla's "intermediate" TLS 1.2 suites (forward secrecy, AEAD only); TLS 1.3 keeps OpenSSL's three. */
export const TLS_DEFAULT_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

const pemFile = (what: string) =>
  z.string({ error: expected(`the path of a PEM ${what} file`) }).min(1, { error: expected(`a PEM ${what} file`) });
const SNI_NAME = /^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/;

const tlsCertificate = z.strictObject(
  {
    cert: pemFile('certificate').describe('PEM certificate chain: the certificate first, then intermediates.'),
    key: pemFile('private key').describe('PEM private key of the certificate.'),
    names: z
      .array(
        z
          .string({ error: expected('a host name or *.wildcard') })
          .transform((h) => h.toLowerCase())
          .refine((h) => SNI_NAME.test(h), { error: expected('a host name like "example.com" or "*.example.com"') }),
        { error: expected('a list of host names') },
      )
      .nullable()
      .default(null)
      .describe(
        'SNI names this certificate answers (exact, or `*.example.com` for one label); null = the DNS names of ' +
          'its subjectAltName (its CN when it has none).',
      ),
  },
  { error: expected('a mapping with cert and key') },
);

const tlsSettings = z
  .strictObject(
    {
      cert: pemFile('certificate')
        .nullable()
        .default(null)
        .describe('Certificate of the default entry (--tls-cert), put first in `certificates`.'),
      key: pemFile('private key').nullable().default(null).describe('Its private key (--tls-key).'),
      certificates: z
        .array(tlsCertificate, { error: expected('a list of {cert, key, names} mappings') })
        .default([])
        .describe(
          'Certificates chosen by the SNI name the client sends: an exact name wins over a `*.` one; a client ' +
            'that sends none, or an unknown name, gets the first (nginx: one `server` per certificate).',
        ),
      minVersion: z
        .enum(['TLSv1.2', 'TLSv1.3'], { error: expected('"TLSv1.2" or "TLSv1.3"') })
        .default('TLSv1.2')
        .describe('Oldest protocol accepted (nginx `ssl_protocols`); older ones never are.'),
      ciphers: z
        .string({ error: expected('an OpenSSL cipher list') })
        .min(1, { error: expected('an OpenSSL cipher list') })
        .default(TLS_DEFAULT_CIPHERS)
        .describe('TLS 1.2 cipher suites, an OpenSSL list (nginx `ssl_ciphers`); the default is forward-secret AEAD.')
        .meta({ docDefault: "Mozilla's intermediate list (ECDHE with AES-GCM or ChaCha20-Poly1305)" }),
      http2: bool()
        .default(true)
        .describe(
          'Offer HTTP/2 by ALPN (`h2`, then `http/1.1`), as nginx `listen … ssl http2`: at most 100 concurrent ' +
            'streams, header lists up to proxy.maxHeaderSize, flood limits of nghttp2. false = HTTP/1.1 only.',
        ),
      redirect: address
        .nullable()
        .default(null)
        .describe(
          'HOST:PORT of a plain HTTP listener that answers every request with 308 to the same host and path on ' +
            'the TLS listener (nginx `return 308 https://$host$request_uri`); null = none.',
        ),
      hsts: z
        .string({ error: expected('a Strict-Transport-Security value like "max-age=31536000" or null') })
        .regex(/^max-age=\d+(\s*;\s*(includeSubDomains|preload))*$/i, {
          error: expected('a Strict-Transport-Security value like "max-age=31536000; includeSubDomains"'),
        })
        .nullable()
        .default(null)
        .describe(
          'Strict-Transport-Security header added to every response of the TLS listener (nginx `add_header ' +
            'Strict-Transport-Security … always`); null = none.',
        ),
      watchInterval: seconds()
        .default(5)
        .describe(
          'Seconds between checks of the certificate and key files; a change is loaded without dropping a ' +
            'connection (a bad one is logged, the old certificate stays). 0 = only on SIGHUP.',
        ),
    },
    { error: expected('a mapping') },
  )
  .superRefine((t, ctx) => {
    if ((t.cert === null) !== (t.key === null)) {
      const missing = t.cert === null ? 'cert' : 'key';
      const other = missing === 'cert' ? 'key' : 'cert';
      ctx.addIssue({ code: 'custom', message: `missing; expected a PEM file (--tls-${missing}) beside ${other}`,
        path: [missing], input: null });
    } else if (t.cert === null && t.certificates.length === 0) {
      ctx.addIssue({ code: 'custom', message: 'expected cert and key, or at least one of certificates',
        path: ['certificates'], input: t.certificates });
    }
  })
  .transform(({ cert, key, certificates, ...rest }) => ({
    ...rest,
    certificates: cert !== null && key !== null ? [{ cert, key, names: null }, ...certificates] : certificates,
  }));

// --- apps (src/pool/apps.ts) -------------------------------------------------------------------

/** The names `apps[].name` and `pool:NAME` take. */
export const APP_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$/;
const APP_NAME_FORMS = 'a name of letters, digits, "-" and "_" (at most 40, starting with a letter or digit)';

const app = z
  .strictObject(
    {
      name: z
        .string({ error: expected(APP_NAME_FORMS) })
        .regex(APP_NAME, { error: expected(APP_NAME_FORMS) })
        .meta({ docType: 'string' })
        .describe("The app's name: routes reach it as `pool:NAME`; logs, /stats and metrics (`app` label) show it."),
      kind: z
        .enum(['http', 'process'], { error: expected('"http" or "process"') })
        .default('http')
        .describe(
          '`http`: a worker pool serving the module over the front and a uwsgi socket, like `app`. `process`: ' +
            'the module is run as a plain Node program that serves no HTTP (a queue consumer, a scheduler), ' +
            'supervised the same way: respawned with back-off, restarted gracefully, its memory bounded (PM2).',
        ),
      module: z
        .string({ error: expected('a module path') })
        .min(1, { error: expected('a module path') })
        .describe("Path of the app's module (`app.module`; PM2 `script`). Relative: against the config file."),
      export: z
        .string({ error: expected('an export name') })
        .min(1, { error: expected('an export name') })
        .default('default')
        .describe('Named export holding the app (`http` only; uWSGI `callable`).'),
      args: z
        .array(z.string({ error: expected('a string') }), { error: expected('a list of strings') })
        .default([])
        .describe('Command-line arguments of a `process` app (PM2 `args`).'),
      cwd: z
        .string({ error: expected('a directory or null') })
        .min(1, { error: expected('a directory or null') })
        .nullable()
        .default(null)
        .describe("Working directory of the app's processes (uWSGI `chdir`, PM2 `cwd`); null = stratum's own."),
      env: z
        .record(
          z.string(),
          z.union([z.string(), z.number(), z.boolean()], { error: expected('a string, number or boolean') }),
          { error: expected('a mapping of variable names to values') },
        )
        .default({})
        .meta({ docType: 'mapping' })
        .describe("Environment variables of the app's processes, over stratum's own and `envFile`'s."),
      envFile: z
        .string({ error: expected('a file path or null') })
        .min(1, { error: expected('a file path or null') })
        .nullable()
        .default(null)
        .describe(
          'A file of `NAME=value` lines (`#` comments, optional quotes; dotenv) read at start and at every reload.',
        ),
      workers: int(1)
        .nullable()
        .default(null)
        .describe('Processes of this app; null = `pool.workers` (`http`), 1 (`process`; PM2 `instances`).'),
      harakiri: seconds().nullable().default(null).describe('This app\'s `pool.harakiri`; null = the global one.'),
      maxRequests: int(0)
        .nullable()
        .default(null)
        .describe("This app's `pool.maxRequests`; null = the global one."),
      reloadOnRss: int(0)
        .nullable()
        .default(null)
        .describe(
          "This app's `pool.reloadOnRss` in MiB (for a `process` app: PM2 `max_memory_restart`); null = the " +
            'global one.',
        ),
      gracefulTimeout: seconds()
        .nullable()
        .default(null)
        .describe("This app's `pool.gracefulTimeout` (a `process` app gets SIGTERM, then SIGKILL after it)."),
      cheaper: z
        .strictObject(
          {
            enabled: bool().default(true).describe('As `pool.cheaper.enabled`.'),
            min: int(1).default(1).describe('As `pool.cheaper.min`.'),
            max: int(1).nullable().default(null).describe('As `pool.cheaper.max` (null = this app\'s workers).'),
          },
          { error: expected('a mapping or null') },
        )
        .nullable()
        .default(null)
        .describe("This app's `pool.cheaper` (`http` only); null = the global one."),
      socket: address
        .nullable()
        .default(null)
        .describe(
          "This app's uwsgi socket (`pool.socket`; `http` only). null = a socket in a private temporary directory " +
            '(the `default` app: `pool.socket`).',
        ),
      cron: z
        .string({ error: expected('a cron schedule like "0 3 * * *" or null') })
        .superRefine((s, ctx) => {
          const c = parseCron(s);
          if (typeof c === 'string') ctx.addIssue({ code: 'custom', message: c, input: s });
        })
        .nullable()
        .default(null)
        .describe(
          'Restart the app gracefully on this five-field schedule, local time (PM2 `cron_restart`): a rolling ' +
            'reload for `http`, SIGTERM and a fresh process for `process`.',
        ),
    },
    { error: expected('an app mapping with a name and a module') },
  )
  .superRefine((a, ctx) => {
    if (!a.cheaper?.enabled) return;
    const workers = a.workers ?? Infinity;
    if (a.cheaper.max !== null && a.cheaper.max > workers) {
      ctx.addIssue({
        code: 'custom',
        message: `expected at most workers (${workers}), got ${a.cheaper.max}`,
        path: ['cheaper', 'max'],
        input: a.cheaper.max,
      });
    }
  });

/** Cross-field checks of `apps` and the routes that name them (pool:NAME). */
function checkApps(
  c: {
    app: { module: string | null };
    apps: Array<{ name: string; kind: string }>;
    routes: Array<{ targets: Target[] }>;
  },
  ctx: z.core.$RefinementCtx,
): void {
  const kinds = new Map<string, string>();
  if (c.app.module !== null) kinds.set('default', 'http');
  c.apps.forEach((a, i) => {
    if (kinds.has(a.name)) {
      const why = a.name === 'default' && c.app.module !== null ? ' (app.module is the app named default)' : '';
      ctx.addIssue({ code: 'custom', message: `duplicate app name "${a.name}"${why}`, path: ['apps', i, 'name'] });
    } else kinds.set(a.name, a.kind);
  });
  if (c.apps.length === 0) return; // a lone app.module: pool:default only, checked when the pool is built
  c.routes.forEach((r, i) => {
    const t = r.targets[0];
    if (t?.kind !== 'pool') return;
    const path = ['routes', i, 'target'];
    const name = t.app;
    if (name === undefined) {
      if (![...kinds.values()].includes('http'))
        ctx.addIssue({ code: 'custom', message: '"pool" needs an app of kind http', path, input: t.raw });
      return;
    }
    const kind = kinds.get(name);
    if (kind === undefined) {
      const known = [...kinds.keys()].join(', ');
      ctx.addIssue({ code: 'custom', message: `no app named "${name}" (apps: ${known})`, path, input: t.raw });
    } else if (kind !== 'http') {
      ctx.addIssue({ code: 'custom', message: `app "${name}" is kind ${kind}: it serves no HTTP`, path, input: t.raw });
    }
  });
}

// --- the schema --------------------------------------------------------------------------------

export const schema = z
  .strictObject(
    {
      listen: address
        .default('0.0.0.0:8080')
        .describe(
          'Where the front HTTP proxy listens: HOST:PORT (port 0 = the OS picks) or a Unix socket path (nginx ' +
            '`listen`).',
        ),
      topology: z
        .enum(['worker', 'master'], { error: expected('"worker" or "master"') })
        .default('worker')
        .describe(
          'Which process runs the front (serve only). `worker`: every worker accepts client connections on the ' +
            'listener the ' +
            'master holds and runs the whole front layer itself, calling the app in-process for pool routes (one ' +
              'hop, no ' +
            'uwsgi in between). `master`: the front runs in the master, isolated from app code, and reaches the ' +
              'workers over ' +
            'uwsgi (nginx → uWSGI). The workers serve uwsgi on pool.socket in both.',
        ),
      tls: tlsSettings
        .nullable()
        .default(null)
        .describe(
          'Serve the front listener over TLS (nginx `listen … ssl` with `ssl_certificate`); null = plain HTTP. ' +
            'The command line sets the first certificate with --tls-cert and --tls-key.',
        ),
      admin: z
        .strictObject(
          {
            listen: address
              .default('127.0.0.1:9900')
              .describe(
                'Where the admin HTTP server listens (metrics, health, stats for `stratum top`). Keep it on ' +
                  'loopback unless a token is set.',
              ),
            token: z
              .string({ error: expected('a non-empty string or null') })
              .min(1, { error: expected('a non-empty string or null') })
              .nullable()
              .default(null)
              .describe(
                'Bearer token the admin surface requires (`Authorization: Bearer <token>`); null = no authentication.',
              ),
            metricsPublic: bool()
              .default(true)
              .describe('Let scrapers read /metrics without the token; the other admin endpoints still need it.'),
            allowedHosts: z
              .array(
                z
                  .string({ error: expected('a host name (no port), or "*"') })
                  .regex(/^(\*|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$/, { error: expected('a host name (no port), or "*"') })
                  .transform((h) => h.toLowerCase()),
                { error: expected('a list of host names') },
              )
              .default([])
              .describe(
                'Host names (no port) the admin answers to besides its own address: IP literals and `localhost` ' +
                  'are always accepted, any other Host gets 421, so a DNS-rebinding page cannot read it (nginx: a ' +
                  '`server_name` list with a default server that refuses the rest). Add the names scrapers and ' +
                  'probes use (a Kubernetes Service name, say); `*` turns the check off.',
              ),
          },
          { error: expected('a mapping') },
        )
        .prefault({})
        .describe('The admin surface: Prometheus metrics, health and live stats.'),
      app: z
        .strictObject(
          {
            module: z
              .string({ error: expected('a module path or null') })
              .min(1, { error: expected('a module path or null') })
              .nullable()
              .default(null)
              .describe(
                'Path of the application module the workers load (uWSGI `module` / `wsgi-file`). A relative path ' +
                  'resolves against the config ' +
                  "file's directory (against the working directory for --app and STRATUM_APP). Required by `serve` " +
                    'and `pool`.',
              ),
            export: z
              .string({ error: expected('an export name') })
              .min(1, { error: expected('an export name') })
              .default('default')
              .describe('Named export of the module that holds the app (uWSGI `callable`).'),
          },
          { error: expected('a mapping') },
        )
        .prefault({})
        .describe('The application the worker pool hosts (the Flask of nginx → uWSGI → Flask).'),
      pool: z
        .strictObject(
          {
            socket: address
              .nullable()
              .default(null)
              .describe(
                'Where the worker pool speaks the uwsgi protocol: a Unix socket path or HOST:PORT (uWSGI `socket`). ' +
                  'null = a socket in a private temporary directory chosen at start (`serve` only). A relative path ' +
                    'resolves like `app.module`.',
              ),
            socketMode: z
              .string({
                error: expected(
                  'an octal mode string like "0660" (quote it in YAML: unquoted 0660 reads as the number 660)',
                ),
              })
              .regex(/^0?[0-7]{3}$/, { error: expected('an octal mode like "0660"') })
              .meta({ docType: 'octal string' })
              .default('0660')
              .describe(
                'Permissions of a Unix pool socket, as an octal string (uWSGI `chmod-socket`). Quote it in YAML.',
              ),
            workers: int(1)
              .default(() => availableParallelism())
              .describe('Number of worker processes (uWSGI `workers` / `processes`).')
              .meta({ docDefault: 'CPU count (`os.availableParallelism()`)' }),
            bufferSize: int(512, 65535)
              .default(65535)
              .describe(
                'Largest uwsgi vars block (request line, headers, CGI variables) a worker accepts, in bytes (uWSGI ' +
                  '`buffer-size`).',
              ),
            harakiri: seconds()
              .default(60)
              .describe(
                'Seconds a request may run before its worker is killed and replaced (uWSGI `harakiri`); 0 = off.',
              ),
            maxRequests: int(0)
              .default(0)
              .describe('Recycle a worker after it has served this many requests (uWSGI `max-requests`); 0 = never.'),
            reloadOnRss: int(0)
              .default(0)
              .describe(
                'Recycle a worker whose resident memory exceeds this many MiB (uWSGI `reload-on-rss`); 0 = never.',
              ),
            listen: int(1)
              .default(1024)
              .describe(
                'Bound of the queue of requests waiting for a free worker (uWSGI `listen`); when it is full, ' +
                  'requests get 503.',
              ),
            maxInflight: int(1)
              .default(64)
              .describe('Most requests one worker handles at once (a Node worker is async, unlike a uWSGI process).'),
            gracefulTimeout: seconds()
              .default(30)
              .describe(
                'Seconds workers get to finish in-flight requests on reload or shutdown before they are killed ' +
                  '(uWSGI `worker-reload-mercy`).',
              ),
            socketTimeout: positiveSeconds()
              .default(60)
              .describe(
                'Seconds a worker waits for the rest of a uwsgi packet or body from a client that stopped sending, ' +
                  'before it drops that connection (uWSGI `socket-timeout`).',
              ),
            cheaper: z
              .strictObject(
                {
                  enabled: bool()
                    .default(false)
                    .describe('Run between `min` and `max` workers, following the load (uWSGI cheaper subsystem).'),
                  min: int(1).default(1).describe('Workers kept when idle (uWSGI `cheaper`).'),
                  max: int(1)
                    .nullable()
                    .default(null)
                    .describe('Most workers when busy; null = `pool.workers` (uWSGI `workers` with `cheaper`).'),
                },
                { error: expected('a mapping') },
              )
              .prefault({})
              .describe('Adaptive worker count (uWSGI `cheaper`).'),
          },
          { error: expected('a mapping') },
        )
        .superRefine((p, ctx) => {
          if (!p.cheaper.enabled) return;
          const max = p.cheaper.max ?? p.workers;
          if (p.cheaper.max !== null && p.cheaper.max > p.workers) {
            ctx.addIssue({
              code: 'custom',
              message: `expected at most pool.workers (${p.workers}), got ${p.cheaper.max}`,
              path: ['cheaper', 'max'],
              input: p.cheaper.max,
            });
          } else if (p.cheaper.min > max) {
            ctx.addIssue({
              code: 'custom',
              message: `expected at most ${p.cheaper.max === null ? 'pool.workers' : 'cheaper.max'} (${max}), got ` +
                `${p.cheaper.min}`,
              path: ['cheaper', 'min'],
              input: p.cheaper.min,
            });
          }
        })
        .prefault({})
        .describe('The worker pool: processes hosting the app behind a uwsgi socket (uWSGI).'),
      proxy: z
        .strictObject(
          {
            clientMaxBodySize: size()
              .prefault('100m')
              .describe(
                'Largest request body accepted; bigger requests get 413 (nginx `client_max_body_size`). 0 = no limit.',
              ),
            connectTimeout: positiveSeconds()
              .default(5)
              .describe('Seconds to connect to an upstream (nginx `uwsgi_connect_timeout` / `proxy_connect_timeout`).'),
            readTimeout: positiveSeconds()
              .default(60)
              .describe(
                'Seconds between two reads from an upstream before the request fails with 504 (nginx ' +
                  '`uwsgi_read_timeout` / `proxy_read_timeout`).',
              ),
            sendTimeout: positiveSeconds()
              .default(60)
              .describe(
                'Seconds between two writes to an upstream (nginx `uwsgi_send_timeout` / `proxy_send_timeout`).',
              ),
            keepAliveTimeout: seconds()
              .default(75)
              .describe(
                'Seconds an idle client connection stays open (nginx `keepalive_timeout`); 0 disables keep-alive.',
              ),
            clientHeaderTimeout: positiveSeconds()
              .default(60)
              .describe(
                'Seconds a client gets to send a complete request head — from connecting, or from the first byte of ' +
                  'a request on a kept connection; then 408 and close (nginx `client_header_timeout`).',
              ),
            clientBodyTimeout: positiveSeconds()
              .default(60)
              .describe(
                'Seconds a client may go without sending any byte of a request body it announced; then 408 and ' +
                  'close (nginx `client_body_timeout`).',
              ),
            clientBodyMinRate: size()
              .prefault('1k')
              .describe(
                'Least average rate, in bytes per second, at which a request body that the front reads whole ' +
                  '(requestBuffering, chunked bodies) must arrive: it gets clientBodyMinRateGrace plus one second ' +
                  'per this many bytes, then 408 and close. nginx has no such floor (`client_body_timeout` only ' +
                  'bounds stalls); this is Apache `RequestReadTimeout body=…,MinRate=`. 0 = no floor.',
              ),
            clientBodyMinRateGrace: seconds()
              .default(10)
              .describe(
                'Seconds a request body may take before clientBodyMinRate applies (the grace of Apache ' +
                  '`RequestReadTimeout body=10,MinRate=1024`).',
              ),
            requestBuffering: bool()
              .default(true)
              .describe(
                'Read the whole request body (in memory up to 1 MiB, then a temporary file) before passing the ' +
                  'request on, so a slow client never ' +
                  'holds a worker (nginx `uwsgi_request_buffering` / `proxy_request_buffering`). false = ' +
                    'Content-Length bodies stream straight through; ' +
                  'chunked bodies are buffered either way (uwsgi needs the length up front).',
              ),
            maxHeaderSize: size()
              .prefault(32768)
              .describe(
                'Largest request header block accepted from a client; bigger gets 431 (nginx ' +
                  '`large_client_header_buffers`).',
              ),
            compression,
            h2c: bool()
              .default(false)
              .describe(
                'On a plain (non-TLS) listener, also take HTTP/2 from clients that start with its preface (h2c with ' +
                  'prior knowledge, `curl --http2-prior-knowledge`; no Upgrade: h2c), as nginx `listen … http2` ' +
                  'without ssl. Each new connection is read a little before HTTP/1 sees it. ' +
                  'TLS listeners use tls.http2.',
              ),
            serverTiming: bool()
              .default(true)
              .describe('Add a `Server-Timing` response header with the time spent in each layer.'),
            buffering: z
              .strictObject(
                {
                  enabled: bool()
                    .default(true)
                    .describe(
                      'Take what a pool route\'s app (or worker, over uwsgi) writes at once, so the app, its ' +
                        '`pool.maxInflight` slot and its harakiri are released when it has produced the response, ' +
                        'and the client reads it at its own pace (nginx `uwsgi_buffering` / `proxy_buffering`). ' +
                        'Bytes go to the client as soon as its socket takes them (streams and SSE are not held ' +
                        'back); only the rest waits here. A route\'s `buffering` overrides.',
                    ),
                  memory: size()
                    .prefault('256k')
                    .describe(
                      'Bytes of one response held in memory before the temp file is used (nginx ' +
                        '`uwsgi_buffers`).',
                    ),
                  maxTempFile: size()
                    .prefault('1g')
                    .describe(
                      'Bytes of one response held in its temp file (in the OS temp dir, unlinked at once); past ' +
                        'it the app is slowed to the client\'s pace (write() returns false), as nginx ' +
                        '`uwsgi_max_temp_file_size`. 0 = memory only.',
                    ),
                  sendTimeout: seconds()
                    .default(60)
                    .describe(
                      'Seconds a client may read nothing while its response waits in the buffer; then its ' +
                        'connection is closed and what was held dropped (nginx `send_timeout`). 0 = no limit.',
                    ),
                },
                { error: expected('a mapping') },
              )
              .prefault({})
              .describe('Response buffering for pool routes (nginx `uwsgi_buffering`).'),
            maxConnections: int(1)
              .nullable()
              .default(null)
              .describe(
                'Most client connections one process running the front holds (nginx `worker_connections`): each ' +
                  'worker in the worker topology, the master in the master topology and in proxy mode. Past it a new ' +
                  'connection gets 503 with Connection: close at once (a TLS listener closes it), counted in ' +
                  '`stratum_connections_refused_total`. null = from the open-file soft limit: (limit - reserve) / 2, ' +
                  'reserve = max(128, limit / 10), e.g. 9000 at 20000 descriptors.',
              )
              .meta({ docDefault: 'null (from the open-file limit)' }),
            trustedProxies: z
              .array(
                z
                  .string({ error: expected('a CIDR like "10.0.0.0/8", an address, or "unix:"') })
                  .refine((c) => parseTrustedProxy(c) !== null, {
                    error: expected('a CIDR like "10.0.0.0/8" or "fd00::/8", an address, or "unix:"'),
                  }),
                { error: expected('a list of CIDRs') },
              )
              .default([])
              .describe(
                'Peers whose X-Forwarded-For is appended to and whose X-Forwarded-Proto / -Host are kept (nginx ' +
                  '`set_real_ip_from` with `real_ip_recursive on`); the client is the right-most untrusted address ' +
                  'in X-Forwarded-For. From any other peer those headers are replaced. IPv4/IPv6 CIDRs or single ' +
                  'addresses; `unix:` for a Unix-socket listener. `--trusted-proxy CIDR`, repeatable.',
              ),
            proxyProtocol: bool()
              .default(false)
              .describe(
                'The front listener takes the PROXY protocol (v1 and v2, as HAProxy, nginx `proxy_protocol on`, ' +
                  'AWS NLB, GCP and Azure load balancers send it): every connection must start with its header, or ' +
                  'is closed; the header\'s source address is then the peer (checked against trustedProxies). Only ' +
                  'for a listener the balancer alone can reach.',
              ),
          },
          { error: expected('a mapping') },
        )
        .prefault({})
        .describe('The front HTTP proxy (nginx).'),
      apps: z
        .array(app, { error: expected('a list of apps') })
        .default([])
        .describe(
          'Several apps in one service, each with its own processes, environment and limits (NGINX Unit ' +
            '`applications`, a PM2 ecosystem file). Routes reach an `http` app as `pool:NAME`; `pool` alone is ' +
            'the app named `default`, else the first `http` app. `app.module`, when set, is one more app named ' +
            '`default` with the `pool` settings. Fields left null take the `pool` ones.',
        ),
      routes: z
        .array(route, { error: expected('a list of routes') })
        .superRefine((routes, ctx) => {
          const seen = new Map<string, number>();
          routes.forEach((r, i) => {
            const key = `${r.host ?? '*'} ${r.path}`;
            const first = seen.get(key);
            if (first !== undefined) {
              ctx.addIssue({
                code: 'custom',
                message: `duplicate route: routes.${first} already matches host ${r.host ?? 'any'} path ${r.path}`,
                path: [i],
                input: r,
              });
            } else {
              seen.set(key, i);
            }
          });
        })
        .prefault([{ path: '/', target: 'pool' }])
        .describe(
          'Routes from (Host, path prefix) to an upstream, like nginx `server` / `location` blocks. The most ' +
            'specific route wins: ' +
            'an exact host over a `*.` host over any host, then the longest path prefix.',
        ),
      log: z
        .strictObject(
          {
            level: z
              .enum(LOG_LEVELS, { error: expected(`one of ${LOG_LEVELS.join(', ')}`) })
              .default('info')
              .describe('Least severe level logged (pino level; nginx `error_log` level).'),
            access: bool().default(true).describe('Log one line per request (nginx `access_log`).'),
          },
          { error: expected('a mapping') },
        )
        .prefault({})
        .describe('Logging (pino, JSON lines on stdout).'),
      metrics: z
        .strictObject(
          {
            enabled: bool()
              .default(true)
              .describe(
                'Record Prometheus metrics and serve them at /metrics on the admin listener; false leaves /metrics ' +
                  'answering 404 (for measuring their cost).',
              ),
          },
          { error: expected('a mapping') },
        )
        .prefault({})
        .describe('Prometheus metrics (prom-client).'),
      tracing: z
        .strictObject(
          {
            enabled: bool().default(false).describe('Record OpenTelemetry spans for each layer a request crosses.'),
            sampleRatio: num(0, 1).default(1).describe('Fraction of requests traced, 0..1.'),
            serviceName: z
              .string({ error: expected('a non-empty string') })
              .min(1, { error: expected('a non-empty string') })
              .default('stratum')
              .describe('OpenTelemetry `service.name` of the spans.'),
          },
          { error: expected('a mapping') },
        )
        .prefault({})
        .describe('OpenTelemetry tracing.'),
    },
    { error: expected('a mapping') },
  )
  .superRefine((c, ctx) => checkApps(c, ctx))
  .describe('Stratum configuration');

/** The configuration as the rest of stratum sees it: defaults applied, sizes in bytes, targets parsed. */
export type StratumConfig = z.output<typeof schema>;
/** The configuration as written in YAML (every field optional). */
export type StratumConfigInput = z.input<typeof schema>;
export type Route = StratumConfig['routes'][number];
export type AppConfig = StratumConfig['apps'][number];
export type LogLevel = (typeof LOG_LEVELS)[number];
export type TlsSettings = NonNullable<StratumConfig['tls']>;
