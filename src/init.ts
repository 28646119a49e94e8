// `stratum init`: writes a commented stratum.yaml for the app in the current folder, the way
// `npm init` or `fly launch` start a project: it guesses the app module (package.json "main", then
// the usual file names), and validates what it wrote with the same loader `stratum check` uses.
// `stratum serve` reads ./stratum.yaml by default, so `npx stratum init && npx stratum serve` runs.

import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { relative, resolve } from 'node:path';
import { ConfigInvalid, InitExists, InitNoApp } from './errors.ts';
import { loadConfig } from './config/load.ts';

/** Where `stratum serve`, `pool`, `proxy` and `check` look when no --config is given. */
export const DEFAULT_CONFIG_FILE = 'stratum.yaml';

/** Tried in this order after package.json "main": what Node projects usually call their app. */
export const APP_CANDIDATES: readonly string[] = ['app', 'server', 'src/app', 'src/server', 'index', 'src/index']
  .flatMap((base) => ['.ts', '.mts', '.mjs', '.js', '.cjs'].map((ext) => `${base}${ext}`));

export type InitOptions = {
  cwd: string;
  /** The app module, as the user typed it; guessed when absent. */
  app?: string;
  /** The file to write, relative to cwd; stratum.yaml by default. */
  file?: string;
  force?: boolean;
};

export type InitResult = { file: string; app: string; guessedFrom: string; notes: string[] };

function isFile(path: string): boolean {
  return statSync(path, { throwIfNoEntry: false })?.isFile() ?? false;
}

/** The app module for `cwd` (relative, "./"-prefixed) and where the guess came from. */
export function guessApp(cwd: string): { app: string; from: string } | null {
  const pkgPath = resolve(cwd, 'package.json');
  if (isFile(pkgPath)) {
    try {
      const main = (JSON.parse(readFileSync(pkgPath, 'utf8')) as { main?: unknown }).main;
      if (typeof main === 'string' && main !== '' && isFile(resolve(cwd, main))) {
        return { app: dotSlash(main), from: 'package.json "main"' };
      }
    } catch {
      // An unreadable package.json is no reason to stop: the file names may still tell.
    }
  }
  for (const candidate of APP_CANDIDATES) {
    if (isFile(resolve(cwd, candidate))) return { app: `./${candidate}`, from: 'its file name' };
  }
  return null;
}

function dotSlash(path: string): string {
  const p = path.replaceAll('\\', '/');
  return p.startsWith('./') || p.startsWith('../') || p.startsWith('/') ? p : `./${p}`;
}

/** What a reader of the module can tell before running it, said as advice (never a failure). */
function lint(source: string, app: string): string[] {
  const notes: string[] = [];
  if (!/\bexport\s+default\b|\bmodule\.exports\b|\bexport\s*\{[^}]*\bdefault\b/.test(source)) {
    notes.push(
      `${app} has no default export: stratum hosts what the module exports ` +
        '(export default app: a Fastify instance, a (req, res) listener or a fetch handler)',
    );
  }
  if (/\.listen\s*\(/.test(source)) {
    notes.push(`${app} calls listen(): under stratum the workers serve the app, so that call must not run there`);
  }
  return notes;
}

export function configText(app: string): string {
  return `# Stratum configuration for this folder, written by \`stratum init\`. \`stratum serve\` reads it
# (./stratum.yaml is the default; --config names another). Validate it with \`stratum check\`.
# Every field, its default and the nginx / uWSGI option it mirrors: docs/config.md in the
# stratum package. Environment (STRATUM_LISTEN, STRATUM_WORKERS, ...) and flags (--listen,
# --workers, ...) override what is written here.

# The front HTTP proxy (nginx \`listen\`): where clients connect. Port 0 lets the OS pick one.
listen: 127.0.0.1:8080

# The admin surface: dashboard (/), Prometheus /metrics, /stats for \`stratum top\`.
# Keep it on loopback, or set a token (STRATUM_ADMIN_TOKEN sets one without writing it here).
admin:
  listen: 127.0.0.1:9900

# The application the workers host (uWSGI \`module\`), relative to this file. It must export
# the app: a Fastify instance (or a function returning one), a (req, res) listener, or a
# fetch handler ({ fetch(request) } or (request) => Response). A .ts file runs through Node's
# type stripping (no enums or parameter properties).
app:
  module: ${JSON.stringify(app)}
  export: default

# The worker pool (uWSGI).
pool:
  # workers: 4          # default: one per CPU
  harakiri: 60          # seconds a request may run: 504 at the limit, its worker killed if it blocks; 0 = off
  maxRequests: 0        # recycle a worker after N requests; 0 = never
  reloadOnRss: 0        # recycle a worker above N MiB resident; 0 = never

# Routes (nginx server_name + location); the most specific one wins.
# Targets: pool | uwsgi://HOST:PORT | unix:/path | http://HOST:PORT | static:/dir
routes:
  - path: /
    target: pool
  # - path: /static/
  #   target: static:./public

log:
  level: info           # fatal | error | warn | info | debug | trace | silent
  access: true          # one line per request
`;
}

export function init(opts: InitOptions): InitResult {
  const file = resolve(opts.cwd, opts.file ?? DEFAULT_CONFIG_FILE);
  const shown = relative(opts.cwd, file) || file;
  if (existsSync(file) && !opts.force) throw new InitExists(shown);

  let app: string;
  let guessedFrom: string;
  if (opts.app) {
    app = dotSlash(relative(resolve(file, '..'), resolve(opts.cwd, opts.app)));
    guessedFrom = '--app';
  } else {
    const guess = guessApp(opts.cwd);
    if (!guess) throw new InitNoApp(opts.cwd, APP_CANDIDATES.join(', '));
    app = dotSlash(relative(resolve(file, '..'), resolve(opts.cwd, guess.app)));
    guessedFrom = guess.from;
  }
  const modulePath = resolve(file, '..', app);
  if (!isFile(modulePath)) throw new ConfigInvalid('--app', `file not found: ${opts.app}`);
  writeFileSync(file, configText(app));
  // What it wrote passes the checks `stratum check` makes (a failure here is a bug in configText).
  loadConfig({ file, mode: 'check', cwd: opts.cwd });
  const notes = lint(readFileSync(modulePath, 'utf8'), app);
  return { file: shown, app, guessedFrom, notes };
}
