// Every error Stratum raises is declared here once, with a stable code and (where it maps to a
// response) an HTTP status — the way Fastify's lib/errors.js does. Code throws these; tests
// assert on `err.code`, never on message text.

export class StratumError extends Error {
  readonly code: string;
  readonly statusCode: number;
  constructor(code: string, message: string, statusCode = 500, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.statusCode = statusCode;
  }
  override get name(): string {
    return `StratumError [${this.code}]`;
  }
}

export interface StratumErrorClass<A extends unknown[]> {
  new (...args: A): StratumError;
  readonly code: string;
}

function define<A extends unknown[]>(
  code: string,
  statusCode: number,
  message: (...args: A) => string,
): StratumErrorClass<A> {
  const cls = class extends StratumError {
    static readonly code = code;
    constructor(...args: A) {
      super(code, message(...args), statusCode);
    }
  };
  Object.defineProperty(cls, 'name', { value: code });
  return cls;
}

// --- uwsgi wire (src/uwsgi/) ---------------------------------------------------------------
export const UwsgiTruncatedHeader = define('STRATUM_ERR_UWSGI_TRUNCATED_HEADER', 400, (got: number) =>
  `uwsgi packet ended inside its 4-byte header (got ${got} bytes)`);
export const UwsgiEmptyVars = define('STRATUM_ERR_UWSGI_EMPTY_VARS', 400, () =>
  'uwsgi packet has an empty vars block');
export const UwsgiVarsTooLarge = define('STRATUM_ERR_UWSGI_VARS_TOO_LARGE', 400, (size: number, max: number) =>
  `uwsgi vars block of ${size} bytes exceeds the limit of ${max} bytes (buffer-size)`);
export const UwsgiTruncatedVars = define('STRATUM_ERR_UWSGI_TRUNCATED_VARS', 400, (got: number, want: number) =>
  `uwsgi connection ended after ${got} of ${want} vars bytes (datasize past the end)`);
export const UwsgiBadVar = define('STRATUM_ERR_UWSGI_BAD_VAR', 400, (offset: number, what: string) =>
  `uwsgi vars block malformed at byte ${offset}: ${what}`);
export const UwsgiBadContentLength = define('STRATUM_ERR_UWSGI_BAD_CONTENT_LENGTH', 400, (value: string) =>
  `uwsgi CONTENT_LENGTH is not a valid length: ${JSON.stringify(value.slice(0, 40))}`);
export const UwsgiTruncatedBody = define('STRATUM_ERR_UWSGI_TRUNCATED_BODY', 400, (got: number, want: number) =>
  `uwsgi connection ended after ${got} of ${want} body bytes`);
export const UwsgiReadTimeout = define('STRATUM_ERR_UWSGI_READ_TIMEOUT', 408, (ms: number) =>
  `uwsgi client sent nothing for ${ms} ms in the middle of a request (socket-timeout)`);
export const UwsgiUnsupportedModifier = define('STRATUM_ERR_UWSGI_MODIFIER', 400, (m1: number) =>
  `uwsgi modifier1 ${m1} is not supported (only 0, a WSGI/HTTP request)`);

// --- upstream responses (src/uwsgi/response-parser.ts, src/proxy/) --------------------------
export const UpstreamBadResponse = define('STRATUM_ERR_UPSTREAM_BAD_RESPONSE', 502, (what: string) =>
  `upstream sent an invalid HTTP response: ${what}`);
export const UpstreamHeadersTooLarge = define('STRATUM_ERR_UPSTREAM_HEADERS_TOO_LARGE', 502, (max: number) =>
  `upstream response headers exceed ${max} bytes`);
export const UpstreamTruncated = define('STRATUM_ERR_UPSTREAM_TRUNCATED', 502, (what: string) =>
  `upstream closed the connection early: ${what}`);
export const UpstreamUnreachable = define('STRATUM_ERR_UPSTREAM_UNREACHABLE', 502, (target: string, cause: string) =>
  `upstream ${target} is unreachable: ${cause}`);
/** errno codes of a connection that was never made: nothing was sent, so a retry elsewhere is safe. */
export const UNREACHABLE_CODES: ReadonlySet<string> = new Set(['ECONNREFUSED', 'ENOENT', 'EHOSTUNREACH', 'ENETUNREACH', 'EACCES', 'EAI_AGAIN', 'ENOTFOUND']);
export const UpstreamTimeout = define('STRATUM_ERR_UPSTREAM_TIMEOUT', 504, (target: string, phase: string, ms: number) =>
  `upstream ${target} timed out (${phase}) after ${ms} ms`);
export const UpstreamReset = define('STRATUM_ERR_UPSTREAM_RESET', 502, (target: string, cause: string) =>
  `upstream ${target} failed mid-response: ${cause}`);

// --- proxy (src/proxy/) -------------------------------------------------------------------
export const RouteNotFound = define('STRATUM_ERR_ROUTE_NOT_FOUND', 404, (host: string, path: string) =>
  `no route matches host ${JSON.stringify(host)} path ${JSON.stringify(path)}`);
export const BodyTooLarge = define('STRATUM_ERR_BODY_TOO_LARGE', 413, (limit: number) =>
  `request body exceeds the route's limit of ${limit} bytes`);
export const PoolOverloaded = define('STRATUM_ERR_POOL_OVERLOADED', 503, (queued: number) =>
  `worker pool is saturated (listen queue full at ${queued})`);
export const PoolUnavailable = define('STRATUM_ERR_POOL_UNAVAILABLE', 503, () =>
  'no worker is available');
export const Harakiri = define('STRATUM_ERR_HARAKIRI', 504, (pid: number, seconds: number) =>
  `worker ${pid} killed: request ran past harakiri (${seconds} s)`);
export const ClientBadRequest = define('STRATUM_ERR_BAD_REQUEST', 400, (what: string) =>
  `malformed request refused: ${what}`);
export const ClientHeadersTooLarge = define('STRATUM_ERR_HEADERS_TOO_LARGE', 431, (max: number) =>
  `request headers exceed ${max} bytes`);
export const ClientHeaderTimeout = define('STRATUM_ERR_CLIENT_HEADER_TIMEOUT', 408, (seconds: number) =>
  `client sent no complete request head within ${seconds} s (client_header_timeout)`);
export const ClientBodyTimeout = define('STRATUM_ERR_CLIENT_BODY_TIMEOUT', 408, (seconds: number) =>
  `client sent no body bytes for ${seconds} s (client_body_timeout)`);
export const ClientClosed = define('STRATUM_ERR_CLIENT_CLOSED', 499, () =>
  'client closed the connection before its request body was complete');
export const BodySpoolFailed = define('STRATUM_ERR_BODY_SPOOL', 500, (cause: string) =>
  `cannot buffer the request body to a temporary file: ${cause}`);
export const StaticForbidden = define('STRATUM_ERR_STATIC_FORBIDDEN', 403, (path: string) =>
  `path escapes the static root: ${JSON.stringify(path)}`);

// --- app host (src/host/) -----------------------------------------------------------------
export const AppLoadFailed = define('STRATUM_ERR_APP_LOAD', 500, (module: string, cause: string) =>
  `cannot load application module ${module}: ${cause}`);
export const AppKindUnknown = define('STRATUM_ERR_APP_KIND', 500, (module: string, got: string) =>
  `application module ${module} exports ${got}: expected a Fastify instance (or a function returning one), a (req, res) listener, or a fetch handler`);

// --- config (src/config/) -----------------------------------------------------------------
export const ConfigInvalid = define('STRATUM_ERR_CONFIG', 2, (path: string, what: string) =>
  `${path || '(root)'}: ${what}`);
