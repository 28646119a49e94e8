// Loads the configuration: schema defaults < YAML file < environment < command-line flags, then
// one validation pass through the schema and the checks that depend on the command being run.
// Every failure is a ConfigInvalid whose message is one line: "<dotted.path>: <what was expected>".

import { readFileSync, statSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { ConfigInvalid, type StratumError } from '../errors.ts';
import { schema, show, type StratumConfig } from './schema.ts';
import { loadCertificates } from '../proxy/tls.ts';

export type Mode = 'serve' | 'pool' | 'proxy' | 'check';

/** Command-line overrides, as parsed by the CLI (numbers may still be strings). */
export type Flags = {
  listen: string;
  admin: string;
  socket: string;
  socketMode: string;
  workers: string | number;
  app: string;
  /** `PREFIX=TARGET` strings; when given they replace the config file's routes. */
  route: string[];
  /** `--trusted-proxy CIDR`, repeatable; when given they replace proxy.trustedProxies. */
  trustedProxy: string[];
  harakiri: string | number;
  maxRequests: string | number;
  reloadOnRss: string | number;
  logLevel: string;
  topology: string;
  tlsCert: string;
  tlsKey: string;
};

type Override = { path: string; numeric?: boolean };

/** Environment variables and the config field each one sets (docs.ts lists them too). */
export const ENV_OVERRIDES: Readonly<Record<string, Override>> = {
  STRATUM_LISTEN: { path: 'listen' },
  STRATUM_ADMIN: { path: 'admin.listen' },
  STRATUM_ADMIN_TOKEN: { path: 'admin.token' },
  STRATUM_WORKERS: { path: 'pool.workers', numeric: true },
  STRATUM_SOCKET: { path: 'pool.socket' },
  STRATUM_APP: { path: 'app.module' },
  STRATUM_LOG_LEVEL: { path: 'log.level' },
  STRATUM_TOPOLOGY: { path: 'topology' },
  STRATUM_TLS_CERT: { path: 'tls.cert' },
  STRATUM_TLS_KEY: { path: 'tls.key' },
};

/** Scalar flags and the config field each one sets; the lists (`route`, `trustedProxy`) are handled apart. */
export const FLAG_OVERRIDES: Readonly<
  Record<Exclude<keyof Flags, 'route' | 'trustedProxy'>, Override & { flag: string; value: string }>
> = {
  listen: { flag: '--listen', value: 'HOST:PORT', path: 'listen' },
  admin: { flag: '--admin', value: 'HOST:PORT', path: 'admin.listen' },
  socket: { flag: '--socket', value: 'PATH|HOST:PORT', path: 'pool.socket' },
  socketMode: { flag: '--socket-mode', value: 'MODE', path: 'pool.socketMode' },
  workers: { flag: '--workers', value: 'N', path: 'pool.workers', numeric: true },
  app: { flag: '--app', value: 'MODULE', path: 'app.module' },
  harakiri: { flag: '--harakiri', value: 'SEC', path: 'pool.harakiri', numeric: true },
  maxRequests: { flag: '--max-requests', value: 'N', path: 'pool.maxRequests', numeric: true },
  reloadOnRss: { flag: '--reload-on-rss', value: 'MIB', path: 'pool.reloadOnRss', numeric: true },
  logLevel: { flag: '--log-level', value: 'LEVEL', path: 'log.level' },
  topology: { flag: '--topology', value: 'worker|master', path: 'topology' },
  tlsCert: { flag: '--tls-cert', value: 'FILE', path: 'tls.cert' },
  tlsKey: { flag: '--tls-key', value: 'FILE', path: 'tls.key' },
};

export type LoadOptions = {
  file?: string | null;
  flags?: Partial<Flags>;
  env?: NodeJS.ProcessEnv;
  mode: Mode;
  /** Directory that relative paths from flags and environment resolve against; default process.cwd(). */
  cwd?: string;
  /**
   * The file's settings already read: the default export of a config module (stratum.config.ts,
   * written with defineConfig()), which only an async import can load. `file` still names it, for
   * messages and as the directory its relative paths resolve against.
   */
  data?: unknown;
};

type Tree = Record<string, unknown>;

export function loadConfig(opts: LoadOptions): StratumConfig {
  const cwd = opts.cwd ?? process.cwd();
  const origins = new Map<string, string>(); // dotted path -> "STRATUM_X" / "--flag", for messages
  const rawModule: { value?: string } = {};

  let merged: unknown = {};
  if (opts.file) {
    const file = opts.data === undefined ? readYaml(opts.file, cwd) : topLevel(opts.data, opts.file);
    if (file !== undefined) {
      merged = resolvePaths(file, dirname(resolve(cwd, opts.file)), rawModule);
    }
  }
  merged = deepMerge(merged, resolvePaths(envLayer(opts.env ?? {}, origins), cwd, rawModule));
  merged = deepMerge(merged, resolvePaths(flagLayer(opts.flags ?? {}, origins), cwd, rawModule));

  const parsed = schema.safeParse(merged);
  if (!parsed.success) throw toConfigInvalid(parsed.error.issues, origins);
  checkMode(parsed.data, opts.mode, rawModule.value);
  return parsed.data;
}

// --- sources -----------------------------------------------------------------------------------

function readYaml(file: string, cwd: string): unknown {
  let text: string;
  try {
    text = readFileSync(resolve(cwd, file), 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'file not found'
        : code === 'EISDIR'
          ? 'is a directory, not a file'
          : code === 'EACCES'
            ? 'permission denied'
            : `cannot read: ${(err as Error).message}`;
    throw new ConfigInvalid(file, why);
  }
  const doc = parseDocument(text, { prettyErrors: true });
  const error = doc.errors[0];
  if (error) {
    const line = error.linePos?.[0].line;
    const what = error.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    throw new ConfigInvalid(file, `YAML syntax error${line === undefined ? '' : ` at line ${line}`}: ${what}`);
  }
  return topLevel(doc.toJS(), file);
}

function topLevel(value: unknown, file: string): unknown {
  if (value === null || value === undefined) return undefined; // an empty file: all defaults
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new ConfigInvalid(file, `expected a mapping of settings at the top level, got ${show(value)}`);
  }
  return value;
}

function envLayer(env: NodeJS.ProcessEnv, origins: Map<string, string>): Tree {
  const layer: Tree = {};
  for (const [name, o] of Object.entries(ENV_OVERRIDES)) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    setPath(layer, o.path, o.numeric ? numeric(value) : value);
    origins.set(o.path, name);
  }
  return layer;
}

function flagLayer(flags: Partial<Flags>, origins: Map<string, string>): Tree {
  const layer: Tree = {};
  for (const [key, o] of Object.entries(FLAG_OVERRIDES)) {
    const value = flags[key as keyof typeof FLAG_OVERRIDES];
    if (value === undefined) continue;
    setPath(layer, o.path, o.numeric ? numeric(value) : value);
    origins.set(o.path, o.flag);
  }
  if (flags.route && flags.route.length > 0) {
    layer.routes = flags.route.map(parseRouteFlag);
    flags.route.forEach((_, i) => origins.set(`routes.${i}`, '--route'));
  }
  if (flags.trustedProxy && flags.trustedProxy.length > 0) {
    setPath(layer, 'proxy.trustedProxies', flags.trustedProxy);
    flags.trustedProxy.forEach((_, i) => origins.set(`proxy.trustedProxies.${i}`, '--trusted-proxy'));
  }
  return layer;
}

/** Flags and environment are strings; numeric-looking ones become numbers, the rest stay for the schema to reject. */
function numeric(value: string | number): string | number {
  return typeof value === 'string' && /^\s*-?\d+(\.\d+)?\s*$/.test(value) ? Number(value) : value;
}

/**
 * `--route PREFIX=TARGET`: PREFIX is a path ("/api") or `host/path` ("api.example.com/v1",
 * "*.example.com"); TARGET is one target, or several uwsgi servers separated by commas.
 */
export function parseRouteFlag(spec: string): { host: string | null; path: string; target: string | string[] } {
  const eq = spec.indexOf('=');
  if (eq <= 0 || eq === spec.length - 1) {
    throw new ConfigInvalid(
      '--route',
      `expected PREFIX=TARGET (like /=pool or api.example.com/v1=uwsgi://127.0.0.1:3031), got ${show(spec)}`,
    );
  }
  const prefix = spec.slice(0, eq);
  const targetText = spec.slice(eq + 1);
  const targets = targetText.split(',').map((t) => t.trim());
  const target = targets.length === 1 ? targets[0]! : targets;
  if (prefix.startsWith('/')) return { host: null, path: prefix, target };
  const slash = prefix.indexOf('/');
  return slash === -1
    ? { host: prefix, path: '/', target }
    : { host: prefix.slice(0, slash), path: prefix.slice(slash), target };
}

// --- relative paths ----------------------------------------------------------------------------

/**
 * Makes the layer's relative paths absolute against `base` (the config file's directory, or cwd):
 * app.module, a unix pool.socket, and unix:/static: route targets. Anything of the wrong type is
 * left alone for the schema to report.
 */
function resolvePaths(layer: unknown, base: string, rawModule: { value?: string }): unknown {
  if (!isTree(layer)) return layer;
  const out: Tree = { ...layer };
  if (isTree(out.app) && typeof out.app.module === 'string' && out.app.module !== '') {
    rawModule.value = out.app.module;
    out.app = { ...out.app, module: resolve(base, out.app.module) };
  }
  if (isTree(out.pool) && typeof out.pool.socket === 'string') {
    const s = out.pool.socket;
    const path = s.startsWith('unix:') ? s.slice(5) : s;
    if (path.includes('/') && !isAbsolute(path)) out.pool = { ...out.pool, socket: resolve(base, path) };
  }
  if (Array.isArray(out.apps)) {
    out.apps = out.apps.map((a: unknown) => {
      if (!isTree(a)) return a;
      const app: Tree = { ...a };
      for (const key of ['module', 'cwd', 'envFile'])
        if (typeof app[key] === 'string' && app[key] !== '') app[key] = resolve(base, app[key]);
      const s = app.socket;
      const path = typeof s === 'string' ? (s.startsWith('unix:') ? s.slice(5) : s) : '';
      if (path.includes('/') && !isAbsolute(path)) app.socket = resolve(base, path);
      return app;
    });
  }
  if (isTree(out.tls)) {
    const fix = (v: unknown) => (typeof v === 'string' && v !== '' ? resolve(base, v) : v);
    const t: Tree = { ...out.tls, cert: fix(out.tls.cert), key: fix(out.tls.key) };
    if (Array.isArray(t.certificates))
      t.certificates = t.certificates.map((c: unknown) =>
        isTree(c) ? { ...c, cert: fix(c.cert), key: fix(c.key) } : c,
      );
    for (const k of ['cert', 'key']) if (t[k] === undefined) delete t[k];
    out.tls = t;
  }
  if (Array.isArray(out.routes)) {
    out.routes = out.routes.map((r: unknown) => {
      if (!isTree(r)) return r;
      const t = r.target;
      const fix = (s: unknown) => (typeof s === 'string' ? resolveTarget(s, base) : s);
      return { ...r, target: Array.isArray(t) ? t.map(fix) : fix(t) };
    });
  }
  return out;
}

/**
 * A whole config object (as written, before validation) with its relative paths made absolute
 * against `base`, the way a config file's are against its directory: what the programmatic API
 * (src/index.ts) does before it hands the object to a child stratum in a temporary file.
 */
export function resolveRelativePaths<T>(config: T, base: string): T {
  return resolvePaths(config, base, {}) as T;
}

function resolveTarget(target: string, base: string): string {
  for (const scheme of ['static:', 'unix:']) {
    if (target.startsWith(scheme)) {
      const path = target.slice(scheme.length);
      return path === '' || isAbsolute(path) ? target : scheme + resolve(base, path);
    }
  }
  return target;
}

// --- merging -----------------------------------------------------------------------------------

function isTree(v: unknown): v is Tree {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Mappings merge key by key; anything else (scalars, lists) in `over` replaces what is in `base`. */
function deepMerge(base: unknown, over: unknown): unknown {
  if (!isTree(over)) return over === undefined ? base : over;
  if (!isTree(base)) return Object.keys(over).length === 0 ? base : over;
  const out: Tree = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = deepMerge(base[k], v);
  return out;
}

function setPath(tree: Tree, dotted: string, value: unknown): void {
  const keys = dotted.split('.');
  let node = tree;
  for (const k of keys.slice(0, -1)) {
    if (!isTree(node[k])) node[k] = {};
    node = node[k] as Tree;
  }
  node[keys.at(-1)!] = value;
}

// --- errors ------------------------------------------------------------------------------------

function toConfigInvalid(issues: readonly z.core.$ZodIssue[], origins: Map<string, string>): StratumError {
  const issue = issues[0]!;
  let path = issue.path.join('.');
  let what = issue.message;
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0]!;
    path = path ? `${path}.${key}` : key;
    const guess = closest(key, knownKeys(issue.path));
    what = `unknown field${guess ? ` (did you mean ${guess}?)` : ''}`;
  }
  const origin = [...origins].find(([p]) => path === p || path.startsWith(`${p}.`))?.[1];
  if (origin) what += ` (from ${origin})`;
  if (issues.length > 1) what += ` (and ${issues.length - 1} more problem${issues.length > 2 ? 's' : ''})`;
  return new ConfigInvalid(path, what);
}

/** Field names of the mapping at `path` in the schema, for "did you mean". */
function knownKeys(path: readonly PropertyKey[]): string[] {
  let node: unknown = schema;
  for (const key of path) {
    node = unwrap(node);
    const shape = (node as { shape?: Tree }).shape;
    const element = (node as { element?: unknown }).element;
    node = typeof key === 'number' ? element : shape?.[String(key)];
  }
  const shape = (unwrap(node) as { shape?: Tree } | undefined)?.shape;
  return shape ? Object.keys(shape) : [];
}

function unwrap(node: unknown): unknown {
  // Walk through default/prefault/nullable wrappers and transform pipes down to the object or array.
  for (let i = 0; i < 10 && node; i++) {
    const def = (node as { _zod: { def: { type: string; innerType?: unknown; in?: unknown } } })._zod.def;
    if (def.innerType) node = def.innerType;
    else if (def.type === 'pipe') node = def.in;
    else break;
  }
  return node;
}

function closest(word: string, candidates: string[]): string | null {
  let best: string | null = null;
  let bestDistance = Math.max(2, Math.floor(word.length / 3)) + 1;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  return best;
}

/** Optimal string alignment distance: edits plus adjacent transpositions ("wrokers" → "workers" is 1). */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const row = d[i]!;
      row[j] = Math.min(d[i - 1]![j]! + 1, row[j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        row[j] = Math.min(row[j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}

// --- checks that depend on the command ---------------------------------------------------------

function checkMode(config: StratumConfig, mode: Mode, rawModule: string | undefined): void {
  const usesPool = config.routes.some((r) => r.targets.some((t) => t.kind === 'pool'));
  if (mode === 'proxy') {
    const i = config.routes.findIndex((r) => r.targets.some((t) => t.kind === 'pool'));
    if (i !== -1) {
      throw new ConfigInvalid(
        `routes.${i}.target`,
        '"pool" needs stratum serve; stratum proxy routes to uwsgi/http/static only',
      );
    }
  }
  const needsApp = mode === 'serve' || mode === 'pool' || (mode === 'check' && usesPool);
  if (needsApp && config.app.module === null && !config.apps.some((a) => a.kind === 'http')) {
    throw new ConfigInvalid(
      'app.module',
      `required by stratum ${mode === 'check' ? 'serve' : mode} (set app.module, --app or STRATUM_APP)`,
    );
  }
  if (config.app.module !== null && mode !== 'proxy') {
    const st = statSync(config.app.module, { throwIfNoEntry: false });
    const shown = rawModule ?? config.app.module;
    const where = shown === config.app.module ? '' : ` (${config.app.module})`;
    if (!st) throw new ConfigInvalid('app.module', `file not found: ${shown}${where}`);
    if (!st.isFile()) throw new ConfigInvalid('app.module', `not a file: ${shown}${where}`);
  }
  config.apps.forEach((a, i) => {
    if (mode === 'proxy') return;
    const st = statSync(a.module, { throwIfNoEntry: false });
    if (!st || !st.isFile())
      throw new ConfigInvalid(`apps.${i}.module`, `${st ? 'not a file' : 'file not found'}: ${a.module}`);
    for (const key of ['cwd', 'envFile'] as const) {
      const p = a[key];
      const stat = p === null ? null : statSync(p, { throwIfNoEntry: false });
      const want = key === 'cwd' ? 'a directory' : 'a file';
      if (p !== null && !(key === 'cwd' ? stat?.isDirectory() : stat?.isFile()))
        throw new ConfigInvalid(`apps.${i}.${key}`, `${stat ? `not ${want}` : 'not found'}: ${p}`);
    }
  });
  // nginx -t loads the certificates too: a bad one stops start-up with one line naming its file.
  if (config.tls && mode !== 'pool') loadCertificates(config.tls);
  if (mode === 'pool' && config.pool.socket === null) {
    throw new ConfigInvalid(
      'pool.socket',
      'stratum pool needs an address to listen on (pool.socket, --socket or STRATUM_SOCKET)',
    );
  }
}
