// Every error Stratum raises is declared here once, with a stable code, an HTTP status (where it
// maps to a response), the exit code of a command it ends, and the data it carries — the way
// Fastify's lib/errors.js does. Code throws these; tests assert on `err.code` (and the data, like
// ConfigInvalid's `path`), never on message text. docs/errors.md is generated from this table
// (`npm run docs:errors`; src/errors.test.ts fails when it is stale).
//
// Exit codes are the same for every command: 0 ok, 1 runtime failure, 2 usage or configuration.

export const EXIT_OK = 0;
export const EXIT_RUNTIME = 1;
export const EXIT_USAGE = 2;

export class StratumError extends Error {
  readonly code: string;
  readonly statusCode: number;
  /** What a command that ends on this error exits with: 1 runtime, 2 usage or configuration. */
  readonly exitCode: number;
  constructor(code: string, message: string, statusCode = 500, options?: { cause?: unknown; exitCode?: number }) {
    super(message, options);
    this.code = code;
    this.statusCode = statusCode;
    this.exitCode = options?.exitCode ?? EXIT_RUNTIME;
  }
  override get name(): string {
    return `StratumError [${this.code}]`;
  }
}

export interface StratumErrorClass<A extends unknown[], D extends object = object> {
  new (...args: A): StratumError & Readonly<D>;
  readonly code: string;
}

/** One row of the table: what docs/errors.md shows and the CLI maps to an exit code. */
export interface ErrorEntry {
  code: string;
  /** Where it comes from: the heading it is listed under in docs/errors.md. */
  area: string;
  /** HTTP status of the answer it becomes, or null for an error that never becomes one. */
  status: number | null;
  exit: number;
  /** The message with each argument shown as <name>. */
  template: string;
  /** What to do about it, when the message alone does not say. */
  hint: string | undefined;
  /** Names of the data fields an instance carries (`err.path`, …). */
  data: string[];
}

const TABLE = new Map<string, ErrorEntry>();
let currentArea = '';

/** The entries so far, in declaration order (docs/errors.md's order). */
export function errorTable(): ErrorEntry[] {
  return [...TABLE.values()];
}

/** The table's row for a code (also for an error that crossed a process boundary as `{ code }`). */
export function errorEntry(code: string | undefined): ErrorEntry | undefined {
  return code === undefined ? undefined : TABLE.get(code);
}

function area(name: string): void {
  currentArea = name;
}

type Meta<A extends unknown[], D extends object> = {
  /** HTTP status, or null: the error never becomes an HTTP answer (a startup, CLI or config error). */
  status?: number | null;
  exit?: number;
  hint?: string;
  /** Data the instance carries beside its message. */
  data?: (...args: A) => D;
};

function define<A extends unknown[], D extends object = object>(
  code: string,
  message: (...args: A) => string,
  meta: Meta<A, D> = {},
): StratumErrorClass<A, D> {
  const status = meta.status === undefined ? 500 : meta.status;
  const exit = meta.exit ?? EXIT_RUNTIME;
  const toData = meta.data;
  const cls = class extends StratumError {
    static readonly code = code;
    constructor(...args: A) {
      super(code, message(...args), status ?? 500, { exitCode: exit });
      if (toData) Object.assign(this, toData(...args));
    }
  };
  Object.defineProperty(cls, 'name', { value: code });
  if (TABLE.has(code)) throw new Error(`error code ${code} declared twice`);
  const names = parameterNames(message);
  const template = (message as (...a: unknown[]) => string)(...names.map((n) => `<${n}>`));
  const data = toData ? Object.keys((toData as (...a: unknown[]) => D)(...names.map((n) => `<${n}>`))) : [];
  TABLE.set(code, { code, area: currentArea, status, exit, template, hint: meta.hint, data });
  return cls as unknown as StratumErrorClass<A, D>;
}

/** The parameter names of an arrow function (types are stripped by the time it runs). */
function parameterNames(fn: (...args: never[]) => unknown): string[] {
  const head = /^\s*(?:\(([^)]*)\)|([\w$]+))\s*=>/.exec(fn.toString());
  const list = head?.[1] ?? head?.[2] ?? '';
  return list.split(',').map((p) => p.trim().split(/[\s:=]/)[0]!).filter(Boolean);
}

/**
 * The whole answer, as raw bytes on a socket that has no ServerResponse (a request Node's parser
 * refused, an upgrade that goes nowhere, a worker's watchdog): status line, the reason as a
 * plain-text body, `Cache-Control: no-store`, `Connection: close` — the headers of the proxy's own
 * error answers, with its `Retry-After: 1` on a 503.
 */
export function rawHttpAnswer(err: StratumError): string {
  // getBuiltinModule, not an ES import: that one would load Node's bundled undici (see admin/server.ts).
  const reason = process.getBuiltinModule('node:http').STATUS_CODES[err.statusCode] ?? 'Error';
  const body = `${reason}\n`;
  const retry = err.statusCode === 503 ? 'Retry-After: 1\r\n' : '';
  return `HTTP/1.1 ${err.statusCode} ${reason}\r\nContent-Type: text/plain; charset=utf-8\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nCache-Control: no-store\r\n${retry}Connection: close\r\n\r\n${body}`;
}

// --- uwsgi wire (src/uwsgi/) ---------------------------------------------------------------
area('uwsgi wire (src/uwsgi/)');
export const UwsgiTruncatedHeader = define('STRATUM_ERR_UWSGI_TRUNCATED_HEADER', (got: number) =>
  `uwsgi packet ended inside its 4-byte header (got ${got} bytes)`, { status: 400 });
export const UwsgiEmptyVars = define('STRATUM_ERR_UWSGI_EMPTY_VARS', () =>
  'uwsgi packet has an empty vars block', { status: 400 });
export const UwsgiVarsTooLarge = define('STRATUM_ERR_UWSGI_VARS_TOO_LARGE', (size: number, max: number) =>
  `uwsgi vars block of ${size} bytes exceeds the limit of ${max} bytes (buffer-size)`, { status: 400 });
export const UwsgiTruncatedVars = define('STRATUM_ERR_UWSGI_TRUNCATED_VARS', (got: number, want: number) =>
  `uwsgi connection ended after ${got} of ${want} vars bytes (datasize past the end)`, { status: 400 });
export const UwsgiBadVar = define('STRATUM_ERR_UWSGI_BAD_VAR', (offset: number, what: string) =>
  `uwsgi vars block malformed at byte ${offset}: ${what}`, { status: 400 });
export const UwsgiBadContentLength = define('STRATUM_ERR_UWSGI_BAD_CONTENT_LENGTH', (value: string) =>
  `uwsgi CONTENT_LENGTH is not a valid length: ${JSON.stringify(value.slice(0, 40))}`, { status: 400 });
export const UwsgiTruncatedBody = define('STRATUM_ERR_UWSGI_TRUNCATED_BODY', (got: number, want: number) =>
  `uwsgi connection ended after ${got} of ${want} body bytes`, { status: 400 });
export const UwsgiReadTimeout = define('STRATUM_ERR_UWSGI_READ_TIMEOUT', (ms: number) =>
  `uwsgi client sent nothing for ${ms} ms in the middle of a request (socket-timeout)`, { status: 408 });
export const UwsgiUnsupportedModifier = define('STRATUM_ERR_UWSGI_MODIFIER', (m1: number) =>
  `uwsgi modifier1 ${m1} is not supported (only 0, a WSGI/HTTP request)`, { status: 400 });

// --- upstream responses (src/uwsgi/response.ts, src/proxy/) ---------------------------------
area('upstreams (src/uwsgi/response.ts, src/proxy/)');
export const UpstreamBadResponse = define('STRATUM_ERR_UPSTREAM_BAD_RESPONSE', (what: string) =>
  `upstream sent an invalid HTTP response: ${what}`, { status: 502 });
export const UpstreamHeadersTooLarge = define('STRATUM_ERR_UPSTREAM_HEADERS_TOO_LARGE', (max: number) =>
  `upstream response headers exceed ${max} bytes`, { status: 502 });
export const UpstreamTruncated = define('STRATUM_ERR_UPSTREAM_TRUNCATED', (what: string) =>
  `upstream closed the connection early: ${what}`, { status: 502 });
export const UpstreamUnreachable = define('STRATUM_ERR_UPSTREAM_UNREACHABLE', (target: string, cause: string) =>
  `upstream ${target} is unreachable: ${cause}`, { status: 502 });
/** errno codes of a connection that was never made: nothing was sent, so a retry elsewhere is safe. */
export const UNREACHABLE_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED', 'ENOENT', 'EHOSTUNREACH', 'ENETUNREACH', 'EACCES', 'EAI_AGAIN', 'ENOTFOUND',
]);
export const UpstreamTimeout = define(
  'STRATUM_ERR_UPSTREAM_TIMEOUT',
  (target: string, phase: string, ms: number) => `upstream ${target} timed out (${phase}) after ${ms} ms`,
  { status: 504 },
);
export const UpstreamReset = define('STRATUM_ERR_UPSTREAM_RESET', (target: string, cause: string) =>
  `upstream ${target} failed mid-response: ${cause}`, { status: 502 });
export const UpstreamNextServer = define('STRATUM_ERR_UPSTREAM_NEXT', (target: string, status: number) =>
  `upstream ${target} answered ${status}: the request went on to the group's next server`, {
  status: 502,
  hint: 'Internal to an upstream group\'s retry (proxy_next_upstream http_502 http_503): the answer is dropped ' +
    'before any byte reaches the client and counts as a failure of that server; the client sees the next one\'s.',
});

// --- proxy (src/proxy/) -------------------------------------------------------------------
area('front proxy (src/proxy/)');
export const RouteNotFound = define('STRATUM_ERR_ROUTE_NOT_FOUND', (host: string, path: string) =>
  `no route matches host ${JSON.stringify(host)} path ${JSON.stringify(path)}`, { status: 404 });
export const UpgradeUnsupported = define('STRATUM_ERR_UPGRADE_UNSUPPORTED', (route: string) =>
  `route ${route} cannot carry an upgrade (WebSocket): only http:// upstreams do`, {
  status: 501,
  hint: 'Route the WebSocket path to an http:// upstream; uwsgi has no upgrade, as with nginx\'s uwsgi_pass.',
});
export const BodyTooLarge = define('STRATUM_ERR_BODY_TOO_LARGE', (limit: number) =>
  `request body exceeds the route's limit of ${limit} bytes`, { status: 413, hint: 'Raise the route\'s maxBodySize.' });
export const PoolOverloaded = define('STRATUM_ERR_POOL_OVERLOADED', (queued: number) =>
  `worker pool is saturated (listen queue full at ${queued})`, {
  status: 503,
  hint: 'Answered with Retry-After: 1. More workers (pool.workers) or a longer pool.listen queue.',
});
export const PoolUnavailable = define('STRATUM_ERR_POOL_UNAVAILABLE', () => 'no worker is available', { status: 503 });
export const Harakiri = define('STRATUM_ERR_HARAKIRI', (pid: number, seconds: number) =>
  `worker ${pid} killed: request ran past harakiri (${seconds} s)`, { status: 504 });
export const HarakiriTimeout = define('STRATUM_ERR_HARAKIRI_TIMEOUT', (seconds: number) =>
  `request ran past harakiri (${seconds} s): answered 504 and abandoned`, { status: 504 });
export const ClientBadRequest = define('STRATUM_ERR_BAD_REQUEST', (what: string) =>
  `malformed request refused: ${what}`, { status: 400 });
export const ClientHeadersTooLarge = define('STRATUM_ERR_HEADERS_TOO_LARGE', (max: number) =>
  `request headers exceed ${max} bytes`, { status: 431, hint: 'Raise proxy.maxHeaderSize.' });
export const ClientHeaderTimeout = define('STRATUM_ERR_CLIENT_HEADER_TIMEOUT', (seconds: number) =>
  `client sent no complete request head within ${seconds} s (client_header_timeout)`, { status: 408 });
export const ClientBodyTimeout = define('STRATUM_ERR_CLIENT_BODY_TIMEOUT', (seconds: number) =>
  `client sent no body bytes for ${seconds} s (client_body_timeout)`, { status: 408 });
export const ClientClosed = define('STRATUM_ERR_CLIENT_CLOSED', () =>
  'client closed the connection before its request body was complete', { status: 499 });
export const ProxyProtocolInvalid = define('STRATUM_ERR_PROXY_PROTOCOL', (what: string) =>
  `PROXY protocol header refused: ${what}`, {
  status: 400,
  hint: 'proxy.proxyProtocol is on: every connection must start with a v1 or v2 header (a load balancer\'s, ' +
    'nginx `proxy_protocol on`); the connection is closed, warnings are logged at most once per 10 s.',
});
export const StaticForbidden = define('STRATUM_ERR_STATIC_FORBIDDEN', (path: string) =>
  `path escapes the static root: ${JSON.stringify(path)}`, { status: 403 });
export const BodySpoolUnavailable = define('STRATUM_ERR_BODY_SPOOL_UNAVAILABLE', (errno: string, cause: string) =>
  `cannot spool the request body to a temporary file (${errno}): ${cause}`, {
  status: 507,
  hint: 'The temp dir (TMPDIR, else /tmp) is full, out of inodes, read-only or gone, or the process is out of ' +
    'descriptors. Only that request is refused (507 Insufficient Storage); the next large body tries again.',
  data: (errno: string) => ({ errno }),
});
export const ClientBodyTooSlow = define('STRATUM_ERR_CLIENT_BODY_SLOW', (rate: number, minRate: number) =>
  `client sent its request body at ${rate} bytes/s, below proxy.clientBodyMinRate (${minRate} bytes/s)`, {
  status: 408,
  hint: 'A trickled body holds a connection and its buffer; lower proxy.clientBodyMinRate or raise its grace.',
});
export const ConnectionLimitReached = define('STRATUM_ERR_CONNECTION_LIMIT', (listener: string, limit: number) =>
  `connection refused: ${listener} already holds proxy.maxConnections (${limit}) client connections`, {
  status: 503,
  hint: 'Answered at once with 503, Retry-After: 1 and Connection: close (a TLS listener closes the connection), ' +
    'counted in stratum_connections_refused_total, logged at most once per 10 s. The cap is per process that ' +
    'runs the front (each worker in the worker topology); raise proxy.maxConnections or the open-file limit.',
  data: (listener: string, limit: number) => ({ listener, limit }),
});

// --- admin (src/admin/server.ts) ----------------------------------------------------------
area('admin surface (src/admin/)');
export const AdminHostRefused = define('STRATUM_ERR_ADMIN_HOST', (host: string) =>
  `admin request for host ${JSON.stringify(host)} refused: not the admin's own address nor in admin.allowedHosts`, {
  status: 421,
  hint: 'A DNS-rebinding page sends its own name; add real names the admin is reached by to admin.allowedHosts.',
});
export const AdminCrossSite = define('STRATUM_ERR_ADMIN_CROSS_SITE', (why: string) =>
  `state-changing admin request refused: ${why}`, {
  status: 403,
  hint: 'POST from a script or curl without an Origin header (or with the admin\'s own origin), with no body or a ' +
    'JSON one; a web page cannot forge these.',
});
export const AdminExposed = define('STRATUM_ERR_ADMIN_EXPOSED', (path: string) =>
  `admin ${path} refused: the admin listens beyond loopback without admin.token`, {
  status: 403,
  hint: 'Set admin.token, or keep admin.listen on 127.0.0.1 / ::1; without a token only /metrics, /livez and ' +
    '/readyz are served there.',
});

// --- app host (src/host/) -----------------------------------------------------------------
area('app host (src/host/)');
export const AppLoadFailed = define('STRATUM_ERR_APP_LOAD', (module: string, cause: string) =>
  `cannot load application module ${module}: ${cause}`, { hint: 'The cause is the error the import threw.' });
export const AppKindUnknown = define('STRATUM_ERR_APP_KIND', (module: string, got: string) =>
  `application module ${module} exports ${got}: expected a Fastify instance (or a function returning one), ` +
  'a (req, res) listener, or a fetch handler');
export const AppTypeScriptSyntax = define('STRATUM_ERR_APP_TYPESCRIPT', (file: string, what: string) =>
  `${file}: ${what}, which Node's type stripping cannot run: use a const object instead of an enum, fields ` +
  'assigned in the constructor instead of parameter properties, no namespaces (tsc --erasableSyntaxOnly lists ' +
  'them all), or compile the app with tsc and point app.module at the .js', {
  hint: 'Node 24 runs TypeScript by erasing its types, without a compiler. Enums, namespaces, parameter ' +
    'properties and `import x = require()` generate code, so it refuses them (ERR_UNSUPPORTED_TYPESCRIPT_SYNTAX).',
  data: (file: string) => ({ file }),
});
export const AppTypeScriptInNodeModules = define('STRATUM_ERR_APP_TYPESCRIPT_NODE_MODULES', (file: string) =>
  `${file}: Node strips no types from a .ts file under node_modules: ` +
  'compile that package to .js (tsc), or keep the app\'s own .ts files outside node_modules', {
  data: (file: string) => ({ file }),
});

/**
 * The coded error for an app module whose import threw: AppTypeScriptSyntax, naming the file and
 * line that Node refused (the app's own file or one it imports; Node's message names neither),
 * when it is TypeScript that type stripping cannot run; AppLoadFailed otherwise.
 * src/host/app.ts's loadApp throws what this returns.
 */
export function appImportError(module: string, err: unknown): StratumError {
  const e = err as NodeJS.ErrnoException | undefined;
  const first = (e?.message ?? String(err)).split('\n')[0]!;
  if (e?.code === 'ERR_UNSUPPORTED_TYPESCRIPT_SYNTAX' || e?.code === 'ERR_INVALID_TYPESCRIPT_SYNTAX') {
    // The stack's first line is "<file>:<line>", the place of the syntax (Node prints the source after it).
    // (a file: URL or a path, depending on how the module was reached).
    const where = /^(.+):(\d+)$/.exec(e.stack?.split('\n')[0] ?? '');
    const path = where?.[1]?.startsWith('file:') ? decodeURIComponent(new URL(where[1]).pathname) : where?.[1];
    const file = where ? `${path}:${where[2]}` : module;
    return new AppTypeScriptSyntax(file, first.replace(/ is not supported in strip-only mode$/, ''));
  }
  if (e?.code === 'ERR_UNSUPPORTED_NODE_MODULES_TYPE_STRIPPING') {
    const url = /"(file:[^"]+)"/.exec(first)?.[1];
    return new AppTypeScriptInNodeModules(url ? decodeURIComponent(new URL(url).pathname) : module);
  }
  if (/^(Unexpected token 'export'|Cannot use import statement outside a module)/.test(first)) {
    // Node read the file as CommonJS (a .ts or .js file in a package without "type": "module").
    const hint = 'ES module syntax in a file Node loads as CommonJS: name it .mjs or .mts, or set "type": "module" ' +
      'in its package.json';
    return new AppLoadFailed(module, `${first} (${hint})`);
  }
  return new AppLoadFailed(module, first);
}

// --- listeners (src/pool/sockets.ts, src/listen.ts) ------------------------------------------
area('listeners');
export const AddressInUse = define('STRATUM_ERR_ADDRESS_IN_USE', (address: string) =>
  `cannot listen on ${address}: address already in use`, {
  status: null,
  exit: EXIT_USAGE,
  hint: 'Another process holds it (`ss -ltnp`), or pick another address (--listen, --admin, --socket).',
  data: (address: string) => ({ address }),
});
export const ListenFailed = define('STRATUM_ERR_LISTEN', (address: string, why: string) =>
  `listen ${address}: ${why}`, {
  status: null,
  exit: EXIT_USAGE,
  hint: 'EACCES: a port below 1024 needs root or CAP_NET_BIND_SERVICE; EADDRNOTAVAIL: no interface has that address.',
  data: (address: string) => ({ address }),
});

// --- TLS (src/proxy/tls.ts) --------------------------------------------------------------
area('TLS (src/proxy/tls.ts)');
export const TlsCertificateInvalid = define('STRATUM_ERR_TLS_CERT', (file: string, why: string) =>
  `${file}: ${why}`, {
  status: null,
  exit: EXIT_USAGE,
  hint: 'At start it stops start-up (unreadable, not PEM, the key does not match, expired, not yet valid); at a ' +
    'reload (SIGHUP or the file changed) it is logged and the certificate already loaded stays in use.',
  data: (file: string) => ({ file }),
});

// --- config (src/config/) -----------------------------------------------------------------
area('configuration (src/config/)');
export const ConfigInvalid = define('STRATUM_ERR_CONFIG', (path: string, what: string) =>
  `${path || '(root)'}: ${what}`, {
  status: null,
  exit: EXIT_USAGE,
  hint: 'One line: the dotted path of the bad field (`err.path`; a file, flag or env name when the problem is ' +
    'there), then what was expected. Reference: docs/config.md.',
  data: (path: string, what: string) => ({ path, what }),
});

// --- the command line (src/cli.ts, src/admin/top.ts, src/init.ts, bin/) ---------------------
area('command line (src/cli.ts, src/init.ts, src/admin/top.ts, bin/)');
export const UsageInvalid = define('STRATUM_ERR_USAGE', (what: string) => what, {
  status: null,
  exit: EXIT_USAGE,
  hint: 'An unknown command or option, or an option without its value: `stratum --help`, `stratum COMMAND --help`.',
});
export const TopRequestFailed = define('STRATUM_ERR_TOP', (url: string, status: number) =>
  `${url} answered ${status}`, {
  status: null,
  hint: '401: set STRATUM_ADMIN_TOKEN; 404: the admin server runs no pool (stratum proxy has no /stats).',
});
export const ReloadFailed = define('STRATUM_ERR_RELOAD', (url: string, status: number, why: string) =>
  `${url} answered ${status}: ${why}`, {
  status: null,
  hint: '`stratum reload`, or a reload that failed after its config was valid (an app that did not start: the ' +
    'running ones stay). A config the service refuses is STRATUM_ERR_CONFIG, with the field; 401: set ' +
    'STRATUM_ADMIN_TOKEN.',
});
export const InitExists = define('STRATUM_ERR_INIT_EXISTS', (file: string) =>
  `${file} already exists (stratum init --force overwrites it)`, { status: null, exit: EXIT_USAGE });
export const InitNoApp = define('STRATUM_ERR_INIT_NO_APP', (dir: string, tried: string) =>
  `found no app module in ${dir} (tried package.json "main", ${tried}); name it: stratum init --app ./server.js`, {
  status: null,
  exit: EXIT_USAGE,
});
export const NodeUnsupported = define('STRATUM_ERR_NODE_VERSION', (version: string, execPath: string) =>
  `needs Node.js >= 24, this is v${version} (${execPath}). In a clone, \`npm ci\` installs ` +
  'Node 24 into node_modules (the pinned `node` devDependency) and npm scripts run it; ' +
  'elsewhere install Node 24 (`nvm install` reads .nvmrc, or https://nodejs.org)', {
  status: null,
  hint: 'Printed by bin/check-node.js, the first module of every entry point (bin/, npm start, npm test, ' +
    'npm pack), before anything that an old Node would fail to parse or link.',
});
export const BuildMissing = define('STRATUM_ERR_NO_BUILD', () =>
  'no build in dist/ (run `npm run build:server`, or `npm start` which builds first)', {
  status: null,
  exit: EXIT_USAGE,
});
export const BuildStale = define('STRATUM_ERR_STALE_BUILD', () =>
  'dist/ is older than src/ (run `npm run build:server`, or `npm start` which builds first)', {
  status: null,
  exit: EXIT_USAGE,
});
