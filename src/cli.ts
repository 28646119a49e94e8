// The `stratum` command. bin/stratum.js calls main(); importing this module starts nothing.
//
//   stratum [serve]  front proxy + worker pool + app in one process tree (nginx → uWSGI → Flask)
//   stratum pool     the worker pool alone, on a uwsgi socket (uWSGI)
//   stratum proxy    the front proxy alone, to uwsgi/http/static upstreams (nginx)
//   stratum check    validate the configuration and exit (nginx -t)
//   stratum init     write a commented stratum.yaml for the app in the current folder
//   stratum top      live view of a running stratum's admin stats
//
// Exit codes (src/errors.ts, docs/errors.md): 0 ok, 1 runtime failure, 2 usage or configuration
// error; a failure prints one line on stderr.

import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { ENV_OVERRIDES, FLAG_OVERRIDES, loadConfig, type Flags, type Mode } from './config/load.ts';
import { LOG_LEVELS, parseAddress, schema, type StratumConfig } from './config/schema.ts';
import {
  appImportError, ConfigInvalid, errorEntry, EXIT_OK, EXIT_RUNTIME, ListenFailed, ReloadFailed, UsageInvalid,
} from './errors.ts';
import type { InitOptions, InitResult } from './init.ts';

/** What ./appliance.ts provides; each promise settles when that part of stratum has stopped. */
export type Appliance = {
  runServe(config: StratumConfig, opts?: { reload?: () => Promise<StratumConfig> }): Promise<void>;
  runPool(config: StratumConfig, opts?: { reload?: () => Promise<StratumConfig> }): Promise<void>;
  runProxy(config: StratumConfig): Promise<void>;
};

export type TopOptions = { admin: string; token: string | null; interval: number; once: boolean };
/** What ./admin/top.ts provides. */
export type Top = { runTop(opts: TopOptions): Promise<void> };
/** What ./init.ts provides. */
export type Init = { init(opts: InitOptions): InitResult };

/** Read when no --config is given, the first that exists in the working directory (init writes the YAML). */
const DEFAULT_CONFIG_FILES = ['stratum.yaml', 'stratum.config.ts', 'stratum.config.mjs', 'stratum.config.js'];
const DEFAULT_CONFIG_FILE = DEFAULT_CONFIG_FILES[0]!;
/** A config file that is a module: its default export (an object, or a function returning one) is the config. */
const CONFIG_MODULE = /\.(?:[cm]?js|[cm]?ts)$/;

/** Everything main() touches outside its arguments, replaceable by tests. */
export type CliIO = {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  env: NodeJS.ProcessEnv;
  cwd: string;
  /** Imports a module given relative to src/ ("./appliance.ts"). */
  importModule: (specifier: string) => Promise<unknown>;
};

const COMMANDS = {
  serve: 'Run the whole stack: front proxy, worker pool and app (nginx → uWSGI → Flask). The default command.',
  pool: 'Run the worker pool alone on a uwsgi socket, for a proxy elsewhere to reach (uWSGI).',
  proxy: 'Run the front proxy alone, routing to uwsgi, http and static upstreams (nginx).',
  check: 'Validate the configuration, print "configuration ok" and exit (nginx -t).',
  init: 'Write a commented stratum.yaml for the app in the current folder (guessed, or --app).',
  top: 'Show live stats of a running stratum, read from its admin server.',
  reload: 'Make a running stratum re-read its configuration (as SIGHUP) and print the outcome.',
} as const;
type Command = keyof typeof COMMANDS;

const RUNNERS = { serve: 'runServe', pool: 'runPool', proxy: 'runProxy' } as const;

// Loaded only by the command that needs it (`stratum top` never loads the appliance). Literal
// specifiers, so the production build (tsc, rewriteRelativeImportExtensions) imports its .js files.
const LAZY_MODULES: Record<string, () => Promise<unknown>> = {
  './appliance.ts': () => import('./appliance.ts'),
  './admin/top.ts': () => import('./admin/top.ts'),
  './init.ts': () => import('./init.ts'),
};

const FLAG_HELP: Record<keyof typeof FLAG_OVERRIDES, string> = {
  listen: 'front proxy address',
  admin: 'admin server address (metrics, stats)',
  socket: 'uwsgi socket of the worker pool',
  socketMode: 'permissions of a Unix pool socket (chmod-socket)',
  workers: 'worker processes',
  app: 'application module',
  harakiri: 'seconds a request may run: 504 at the limit, its worker killed if it blocks; 0 = off',
  maxRequests: 'recycle a worker after N requests, 0 = never',
  reloadOnRss: 'recycle a worker above N MiB resident, 0 = never',
  logLevel: LOG_LEVELS.join('|'),
  topology:
    'worker (the front in every worker, the default) | master (the front in the master, uwsgi to the workers)',
  tlsCert: 'serve the front over TLS with this PEM certificate (chain), the default one for SNI',
  tlsKey: 'the PEM private key of --tls-cert',
};

export async function main(argv: string[], io: Partial<CliIO> = {}): Promise<number> {
  const out = io.stdout ?? ((text: string) => void process.stdout.write(text));
  const err = io.stderr ?? ((text: string) => void process.stderr.write(text));
  const env = io.env ?? process.env;
  const cwd = io.cwd ?? process.cwd();
  const importModule = io.importModule ?? ((specifier: string) => LAZY_MODULES[specifier]!());

  try {
    const first = argv[0];
    if (first === '--version' || first === '-v') {
      out(`${version()}\n`);
      return EXIT_OK;
    }
    if (first === undefined || first.startsWith('-')) {
      if (first === '--help' || first === '-h') {
        out(globalHelp());
        return EXIT_OK;
      }
      return await runCommand('serve', argv, { out, env, cwd, importModule });
    }
    if (first === 'help') {
      const topic = argv[1];
      if (topic === undefined) out(globalHelp());
      else if (isCommand(topic)) out(commandHelp(topic, env));
      else throw new UsageInvalid(`unknown command "${topic}" (see stratum --help)`);
      return EXIT_OK;
    }
    if (!isCommand(first)) throw new UsageInvalid(`unknown command "${first}" (see stratum --help)`);
    return await runCommand(first, argv.slice(1), { out, env, cwd, importModule });
  } catch (e) {
    const { code, message } = classify(e);
    err(`stratum: ${message}\n`);
    return code;
  }
}

function isCommand(s: string): s is Command {
  return Object.hasOwn(COMMANDS, s);
}

type Context = {
  out: (text: string) => void;
  env: NodeJS.ProcessEnv;
  cwd: string;
  importModule: (specifier: string) => Promise<unknown>;
};

async function runCommand(command: Command, args: string[], ctx: Context): Promise<number> {
  if (command === 'top') return runTop(args, ctx);
  if (command === 'reload') return runReload(args, ctx);
  if (command === 'init') return runInit(args, ctx);

  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = {
    config: { type: 'string' },
    route: { type: 'string', multiple: true },
    'trusted-proxy': { type: 'string', multiple: true },
    help: { type: 'boolean', short: 'h' },
  };
  for (const o of Object.values(FLAG_OVERRIDES)) options[o.flag.slice(2)] = { type: 'string' };
  const values = parse(command, args, options);
  if (values.help) {
    ctx.out(commandHelp(command, ctx.env));
    return EXIT_OK;
  }

  const flags: Partial<Flags> = {};
  for (const [key, o] of Object.entries(FLAG_OVERRIDES)) {
    const value = values[o.flag.slice(2)];
    if (typeof value === 'string') (flags as Record<string, string>)[key] = value;
  }
  if (Array.isArray(values.route)) flags.route = values.route as string[];
  if (Array.isArray(values['trusted-proxy'])) flags.trustedProxy = values['trusted-proxy'] as string[];
  const file =
    typeof values.config === 'string'
      ? values.config
      : (DEFAULT_CONFIG_FILES.find((name) => existsSync(resolve(ctx.cwd, name))) ?? null);
  const data = file !== null && CONFIG_MODULE.test(file) ? await importConfig(resolve(ctx.cwd, file), file) : undefined;

  const config = loadConfig({ file, data, flags, env: ctx.env, mode: command satisfies Mode, cwd: ctx.cwd });
  if (command === 'check') {
    ctx.out(`stratum: configuration ok (${file ?? 'no config file: defaults, environment and flags'})\n`);
    return EXIT_OK;
  }
  const appliance = (await ctx.importModule('./appliance.ts')) as Appliance;
  // SIGHUP and POST /reload read the same file again, with the same flags and environment over it.
  const reload = async () => {
    const fresh =
      file !== null && CONFIG_MODULE.test(file) ? await importConfig(resolve(ctx.cwd, file), file, true) : undefined;
    return loadConfig({ file, data: fresh, flags, env: ctx.env, mode: command, cwd: ctx.cwd });
  };
  await appliance[RUNNERS[command]](config, { reload });
  return EXIT_OK;
}

/** The settings a config module exports (`export default defineConfig({ ... })`). */
async function importConfig(path: string, shown: string, fresh = false): Promise<unknown> {
  if (!existsSync(path)) throw new ConfigInvalid(shown, 'file not found');
  let mod: { default?: unknown };
  try {
    // A reload imports the edited module anew: another URL, since an ES module is loaded once per URL.
    const url = pathToFileURL(path).href + (fresh ? `?reload=${Date.now()}` : '');
    mod = (await import(url)) as { default?: unknown };
  } catch (err) {
    // The message of the app's own load error fits a config module too (TypeScript that stripping refuses...).
    throw new ConfigInvalid(shown, appImportError(path, err).message.replace(/^cannot load application module /, ''));
  }
  const exported = mod.default;
  if (exported === undefined) {
    throw new ConfigInvalid(shown, 'the module has no default export (export default defineConfig({ ... }))');
  }
  return typeof exported === 'function' ? await (exported as () => unknown)() : exported;
}

async function runInit(args: string[], ctx: Context): Promise<number> {
  const values = parse('init', args, {
    app: { type: 'string' },
    config: { type: 'string' },
    force: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    ctx.out(commandHelp('init', ctx.env));
    return EXIT_OK;
  }
  const { init } = (await ctx.importModule('./init.ts')) as Init;
  const result = init({
    cwd: ctx.cwd,
    app: typeof values.app === 'string' ? values.app : undefined,
    file: typeof values.config === 'string' ? values.config : undefined,
    force: values.force === true,
  });
  const lines = [`stratum: wrote ${result.file} for ${result.app} (from ${result.guessedFrom})`];
  for (const note of result.notes) lines.push(`stratum: note: ${note}`);
  const named = result.file === DEFAULT_CONFIG_FILE ? '' : ` --config ${result.file}`;
  lines.push(`next: npx stratum check${named} && npx stratum serve${named}`);
  ctx.out(`${lines.join('\n')}\n`);
  return EXIT_OK;
}

async function runTop(args: string[], ctx: Context): Promise<number> {
  const values = parse('top', args, {
    admin: { type: 'string' },
    interval: { type: 'string' },
    once: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    ctx.out(commandHelp('top', ctx.env));
    return EXIT_OK;
  }
  const admin = typeof values.admin === 'string' ? values.admin : ctx.env.STRATUM_ADMIN || defaults().admin.listen;
  parseAddress(admin, '--admin');
  const interval = typeof values.interval === 'string' ? Number(values.interval) : 1;
  if (!(interval > 0) || !Number.isFinite(interval)) {
    throw new UsageInvalid(`--interval: expected a number of seconds > 0, got ${JSON.stringify(values.interval)}`);
  }
  const top = (await ctx.importModule('./admin/top.ts')) as Top;
  await top.runTop({ admin, token: ctx.env.STRATUM_ADMIN_TOKEN || null, interval, once: values.once === true });
  return EXIT_OK;
}

/**
 * `stratum reload`: POST /reload?wait=1 to the admin (--admin, else the config file's admin.listen),
 * then one line: what was added, rolled, removed and kept, or the field the service refused.
 */
async function runReload(args: string[], ctx: Context): Promise<number> {
  const values = parse('reload', args, {
    admin: { type: 'string' },
    config: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    ctx.out(commandHelp('reload', ctx.env));
    return EXIT_OK;
  }
  let admin = typeof values.admin === 'string' ? values.admin : ctx.env.STRATUM_ADMIN || null;
  let token = ctx.env.STRATUM_ADMIN_TOKEN || null;
  const file =
    typeof values.config === 'string'
      ? values.config
      : (DEFAULT_CONFIG_FILES.find((name) => existsSync(resolve(ctx.cwd, name))) ?? null);
  if (file !== null && (admin === null || token === null)) {
    // The file may be the bad edit being reloaded: the service is the one to judge it, so only the
    // admin's address and token are read here, and a file that does not load leaves the defaults.
    try {
      const raw = CONFIG_MODULE.test(file)
        ? await importConfig(resolve(ctx.cwd, file), file)
        : (await import('yaml')).parse(readFileSync(resolve(ctx.cwd, file), 'utf8'));
      const a = (raw as { admin?: { listen?: unknown; token?: unknown } } | null)?.admin;
      if (typeof a?.listen === 'string') admin ??= a.listen;
      if (typeof a?.token === 'string') token ??= a.token;
    } catch {
      // the defaults below
    }
  }
  admin ??= defaults().admin.listen;
  parseAddress(admin, '--admin');
  const base = /^https?:\/\//.test(admin) ? admin : `http://${admin.replace(/^0\.0\.0\.0:/, '127.0.0.1:')}`;
  const url = new URL('/reload?wait=1', base);
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(url, { method: 'POST', headers, body: '{}', signal: AbortSignal.timeout(120_000) });
  const body = (await res.json().catch(() => ({}))) as Record<string, unknown>;
  const error = body.error as { code?: string; path?: string; message?: string } | undefined;
  if (res.status === 400 && error?.code === ConfigInvalid.code) {
    const path = error.path ?? '';
    const what = (error.message ?? '').replace(`${path || '(root)'}: `, '');
    throw new ConfigInvalid(path, `${what} (refused: the running config stays)`);
  }
  if (res.status !== 200) throw new ReloadFailed(url.href, res.status, error?.message ?? JSON.stringify(body));
  const list = (k: string) => ((body[k] as string[] | undefined) ?? []).join(', ') || '-';
  const parts = [
    `added ${list('added')}`,
    `rolled ${list('changed')}`,
    `removed ${list('removed')}`,
    `kept ${list('unchanged')}`,
  ];
  if (body.routes) parts.push('routes changed');
  const restart = body.needsRestart as string[] | undefined;
  if (restart && restart.length > 0) parts.push(`needs a restart for: ${restart.join(', ')}`);
  ctx.out(`stratum: reloaded: ${parts.join('; ')}\n`);
  return EXIT_OK;
}

function parse(
  command: Command,
  args: string[],
  options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }>,
): Record<string, string | boolean | (string | boolean)[] | undefined> {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (e) {
    const code = (e as { code?: string }).code;
    const message = (e as Error).message;
    const option = /'(-[^' ]+)/.exec(message)?.[1] ?? '';
    const hint = `(see stratum ${command} --help)`;
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') throw new UsageInvalid(`unknown option ${option} ${hint}`);
    if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      const missing = /argument missing/.test(message);
      throw new UsageInvalid(`option ${option} ${missing ? 'needs a value' : 'takes no value'} ${hint}`);
    }
    if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      throw new UsageInvalid(`unexpected argument ${/'([^']*)'/.exec(message)?.[1] ?? ''} ${hint}`.replace('  ', ' '));
    }
    throw e;
  }
}

// --- errors to exit codes ----------------------------------------------------------------------

const LISTEN_ERRORS: Record<string, string> = {
  EADDRINUSE: 'address already in use',
  EACCES: 'permission denied',
  EADDRNOTAVAIL: 'address not available',
};

/** The exit code and the one line for an error that ended a command (the table in errors.ts decides). */
function classify(e: unknown): { code: number; message: string } {
  // The appliance may wrap the error that matters; look down the cause chain. A coded error may
  // have crossed a process boundary (a worker's fatal error) as a plain `{ code, message }`.
  for (let cur: unknown = e, depth = 0; cur && depth < 5; cur = (cur as { cause?: unknown }).cause, depth++) {
    const c = cur as NodeJS.ErrnoException & { address?: string; port?: number };
    const entry = errorEntry(c.code);
    if (entry) return { code: entry.exit, message: oneLine(c.message) };
    if (c.code && Object.hasOwn(LISTEN_ERRORS, c.code)) {
      if (c.address === undefined) return { code: new ListenFailed('', '').exitCode, message: oneLine(c.message) };
      const host = c.address.includes(':') ? `[${c.address}]` : c.address;
      const err = new ListenFailed(c.port === undefined ? c.address : `${host}:${c.port}`, LISTEN_ERRORS[c.code]!);
      return { code: err.exitCode, message: err.message };
    }
  }
  return { code: EXIT_RUNTIME, message: oneLine(e instanceof Error ? e.message : String(e)) };
}

function oneLine(text: string): string {
  return text.split('\n')[0]!.trim();
}

// --- help --------------------------------------------------------------------------------------

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

let defaultsCache: StratumConfig | undefined;
function defaults(): StratumConfig {
  return (defaultsCache ??= schema.parse({}));
}

function lookup(config: unknown, dotted: string): unknown {
  return dotted.split('.').reduce<unknown>((node, key) => (node as Record<string, unknown> | undefined)?.[key], config);
}

function globalHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length)) + 2;
  return [
    'Usage: stratum [command] [options]',
    '',
    "One Node.js service doing nginx → uWSGI → Flask's job.",
    '',
    'Commands:',
    ...Object.entries(COMMANDS).map(([c, text]) => `  ${c.padEnd(width)}${text}`),
    '',
    'Options:',
    "  -h, --help     show help (stratum <command> --help for a command's options)",
    '  --version      print the version',
    '',
    'Configuration: ./stratum.yaml (stratum init writes one) or ./stratum.config.ts when present, or --config FILE.',
    'Reference: docs/config.md; errors and exit codes: docs/errors.md',
    '',
  ].join('\n');
}

function commandHelp(command: Command, env: NodeJS.ProcessEnv): string {
  const rows: [string, string][] = [];
  if (command === 'init') {
    rows.push(
      ['--app MODULE', 'the app module (default: package.json "main", else app, server, src/app, index .ts/.mjs/.js)'],
      ['--config FILE', `file to write (default ${DEFAULT_CONFIG_FILE})`],
      ['--force', 'overwrite the file if it exists'],
    );
  } else if (command === 'reload') {
    rows.push(
      ['--admin HOST:PORT', 'admin server to ask (default: the config file\'s admin.listen, env STRATUM_ADMIN)'],
      ['--config FILE', `where the admin's address and token are read (default ./${DEFAULT_CONFIG_FILE} if present)`],
    );
  } else if (command === 'top') {
    const admin = env.STRATUM_ADMIN || defaults().admin.listen;
    rows.push(
      ['--admin HOST:PORT', `admin server to read (default ${admin}, env STRATUM_ADMIN)`],
      ['--interval SEC', 'seconds between refreshes (default 1)'],
      ['--once', 'print one snapshot and exit'],
    );
  } else {
    const envFor = new Map(Object.entries(ENV_OVERRIDES).map(([name, o]) => [o.path, name]));
    const dflt = `default: ./${DEFAULT_CONFIG_FILE} or ./stratum.config.ts if present`;
    rows.push(['--config FILE', `YAML file, or a module whose default export is the config (${dflt})`]);
    for (const [key, o] of Object.entries(FLAG_OVERRIDES)) {
      const value = lookup(defaults(), o.path);
      const env = envFor.get(o.path);
      const extra = [`default ${value === null ? 'none' : String(value)}`, env ? `env ${env}` : '']
        .filter(Boolean)
        .join(', ');
      rows.push([`${o.flag} ${o.value}`, `${FLAG_HELP[key as keyof typeof FLAG_HELP]} (${extra})`]);
    }
    rows.push([
      '--route PREFIX=TARGET',
      "route, repeatable; replaces the file's routes (default /=pool). PREFIX: /path or host/path; " +
        'TARGET: pool, uwsgi://HOST:PORT[,uwsgi://...], unix:/path, http://HOST:PORT, static:/dir',
    ]);
    rows.push([
      '--trusted-proxy CIDR',
      "a peer whose X-Forwarded-* is believed, repeatable; replaces the file's proxy.trustedProxies",
    ]);
  }
  rows.push(['-h, --help', 'show this help']);
  const width = Math.max(...rows.map(([flag]) => flag.length)) + 2;
  const usage = command === 'serve' ? 'Usage: stratum [serve] [options]' : `Usage: stratum ${command} [options]`;
  const note =
    command === 'top' || command === 'reload'
      ? 'The admin token, if any, comes from STRATUM_ADMIN_TOKEN (or the config file\'s admin.token for reload).'
      : command === 'init'
        ? 'The file names the app and lists the usual settings, commented. Then: stratum check, stratum serve.'
        : 'Precedence: defaults < --config file < environment < flags. Reference: docs/config.md';
  const options = rows.map(([flag, text]) => `  ${flag.padEnd(width)}${text}`);
  return [usage, '', COMMANDS[command], '', 'Options:', ...options, '', note, ''].join('\n');
}

if (import.meta.main) process.exitCode = await main(process.argv.slice(2));
