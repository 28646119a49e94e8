// The real programs Stratum replaces or talks to — nginx and uWSGI (with Flask) — started from
// throwaway configs in a temp dir, on OS-picked ports. A missing program skips its tests on a
// developer machine, and fails them under CI, where .ci/run installs every peer.
import { accessSync, constants, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import {
  canConnect,
  describeOutput,
  freePort,
  isRunning,
  makeTempDir,
  spawnTracked,
  waitUntil,
  type Tracked,
} from './processes.ts';

export { freePort } from './processes.ts';

export const FLASK_APP = fileURLToPath(new URL('../fixtures/flask/app.py', import.meta.url));
const UWSGI_PARAMS = '/etc/nginx/uwsgi_params';
const UWSGI_PLUGIN_DIR = '/usr/lib/uwsgi/plugins';

/** What each peer needs besides its binary; checked together so a half-installed peer skips too. */
const EXTRA_FILES: Record<string, string[]> = {
  nginx: [UWSGI_PARAMS],
  uwsgi: [join(UWSGI_PLUGIN_DIR, 'python3_plugin.so')],
};

function onPath(binary: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(delimiter).concat(['/usr/sbin', '/sbin'])) {
    if (!dir) continue;
    try {
      accessSync(join(dir, binary), constants.X_OK);
      return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}

function fileExists(path: string): boolean {
  try {
    accessSync(path, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

/** Why `binary` cannot be used here, or undefined when it can. */
export function peerSkipReason(binary: string): string | undefined {
  if (!onPath(binary))
    return `${binary} is not installed (apt-get install nginx-light uwsgi-core uwsgi-plugin-python3 python3-flask)`;
  const missing = (EXTRA_FILES[binary] ?? []).filter((f) => !fileExists(f));
  if (missing.length > 0) return `${binary} is installed but ${missing.join(', ')} is missing`;
  return undefined;
}

export function hasPeer(binary: string): boolean {
  return peerSkipReason(binary) === undefined;
}

/**
 * For `describe.skipIf(!requirePeer('nginx'))`: true when the peer is usable. When it is not,
 * under CI (process.env.CI set) this throws so the run fails loudly; elsewhere it prints why
 * the tests are skipped and returns false.
 */
export function requirePeer(binary: string): boolean {
  const reason = peerSkipReason(binary);
  if (reason === undefined) return true;
  if (process.env.CI) throw new Error(`CI requires ${binary}: ${reason}`);
  console.warn(`skipping ${binary} interop tests: ${reason}`);
  return false;
}

export interface PeerProcess {
  /** "http://127.0.0.1:PORT" for nginx; "127.0.0.1:PORT" (a uwsgi target) for uWSGI. */
  address: string;
  port: number;
  dir: string;
  proc: Tracked['proc'];
  /** Everything the peer logged (nginx's error.log, uWSGI's stderr). */
  log(): string;
  stop(): Promise<number | null>;
}

export interface NginxOptions {
  /** The uwsgi_pass target: "unix:/tmp/x/pool.sock" or "127.0.0.1:5000". */
  uwsgiPass?: string;
  /** Instead of uwsgiPass: the whole inside of `server { }` after `listen`. */
  serverConf?: string;
  listenPort?: number;
  readyTimeoutMs?: number;
  /** nginx's `user` directive for its workers (root only); default: root when we are root. */
  user?: string;
}

function nginxConf(dir: string, port: number, opts: NginxOptions): string {
  const server =
    opts.serverConf ??
    `location / {
        include ${UWSGI_PARAMS};
        uwsgi_pass ${opts.uwsgiPass ?? 'unix:/nonexistent.sock'};
        uwsgi_read_timeout 120s;
        uwsgi_send_timeout 120s;
      }`;
  // `user root` only when we are root: nginx workers would otherwise run as nobody and be refused
  // by a root-owned socket; as another user the directive is meaningless and nginx warns.
  const user = process.getuid?.() === 0 ? `user ${opts.user ?? 'root'};` : '';
  return `${user}
worker_processes 1;
error_log ${dir}/error.log info;
pid ${dir}/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  default_type application/octet-stream;
  client_body_temp_path ${dir}/client_body;
  uwsgi_temp_path ${dir}/uwsgi;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  scgi_temp_path ${dir}/scgi;
  client_max_body_size 100m;
  # a 12 KB Cookie must fit in one header buffer (the default is 8k)
  large_client_header_buffers 4 32k;
  keepalive_requests 1000;
  server {
    listen 127.0.0.1:${port};
    ${server}
  }
}
`;
}

/** Runs nginx in the foreground from a temp prefix and waits until its port answers. */
export async function startNginx(opts: NginxOptions = {}): Promise<PeerProcess> {
  const dir = makeTempDir('nginx');
  for (const sub of ['client_body', 'uwsgi', 'proxy', 'fastcgi', 'scgi']) mkdirSync(join(dir, sub));
  const errorLog = join(dir, 'error.log');
  const readLog = () => (fileExists(errorLog) ? readFileSync(errorLog, 'utf8') : '');
  // A port picked by freePort() can be taken before nginx binds it: retry a few times.
  for (let attempt = 1; ; attempt++) {
    const port = opts.listenPort ?? (await freePort());
    const confPath = join(dir, 'nginx.conf');
    writeFileSync(confPath, nginxConf(dir, port, opts));
    const t = spawnTracked('nginx', ['-p', dir, '-e', errorLog, '-c', confPath, '-g', 'daemon off;']);
    try {
      await waitUntil(async () => !isRunning(t) || (await canConnect({ host: '127.0.0.1', port })), {
        timeoutMs: opts.readyTimeoutMs ?? 10_000,
        describe: () =>
          `nginx did not listen on 127.0.0.1:${port}\n${describeOutput(t, `\n--- error.log ---\n${readLog()}`)}`,
      });
      if (!isRunning(t))
        throw new Error(`nginx exited at start-up\n${describeOutput(t, `\n--- error.log ---\n${readLog()}`)}`);
    } catch (err) {
      await t.stop('SIGKILL', 0);
      if (attempt < 3 && opts.listenPort === undefined && /Address already in use/.test(readLog())) continue;
      throw err;
    }
    return {
      address: `http://127.0.0.1:${port}`,
      port,
      dir,
      proc: t.proc,
      log: readLog,
      stop: () => t.stop('SIGTERM', 10_000),
    };
  }
}

/** nginx-light builds its stream module as a dynamic one (Debian's 50-mod-stream.conf loads it). */
export const NGINX_STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so';

/** As requirePeer('nginx'), and nginx's stream module is there too. */
export function requireNginxStream(): boolean {
  if (!requirePeer('nginx')) return false;
  if (fileExists(NGINX_STREAM_MODULE)) return true;
  const reason = `${NGINX_STREAM_MODULE} is missing (apt-get install libnginx-mod-stream)`;
  if (process.env.CI) throw new Error(`CI requires nginx's stream module: ${reason}`);
  console.warn(`skipping nginx stream tests: ${reason}`);
  return false;
}

export interface NginxStreamOptions {
  /** The `proxy_pass` target of the stream server: "127.0.0.1:PORT". */
  upstream: string;
  /** Send the PROXY protocol (v1, all nginx writes) to the upstream: `proxy_protocol on`. */
  proxyProtocol?: boolean;
  readyTimeoutMs?: number;
}

/** nginx as a TCP balancer: one `stream { server { } }` in front of `upstream`, on an OS-picked port. */
export async function startNginxStream(opts: NginxStreamOptions): Promise<PeerProcess> {
  const dir = makeTempDir('nginx-stream');
  const errorLog = join(dir, 'error.log');
  const readLog = () => (fileExists(errorLog) ? readFileSync(errorLog, 'utf8') : '');
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const confPath = join(dir, 'nginx.conf');
    writeFileSync(
      confPath,
      `load_module ${NGINX_STREAM_MODULE};
${process.getuid?.() === 0 ? 'user root;' : ''}
worker_processes 1;
error_log ${errorLog} info;
pid ${dir}/nginx.pid;
events { worker_connections 1024; }
stream {
  server {
    listen 127.0.0.1:${port};
    proxy_pass ${opts.upstream};
    proxy_protocol ${opts.proxyProtocol === false ? 'off' : 'on'};
  }
}
`,
    );
    const t = spawnTracked('nginx', ['-p', dir, '-e', errorLog, '-c', confPath, '-g', 'daemon off;']);
    try {
      await waitUntil(async () => !isRunning(t) || (await canConnect({ host: '127.0.0.1', port })), {
        timeoutMs: opts.readyTimeoutMs ?? 10_000,
        describe: () =>
          `nginx (stream) did not listen on 127.0.0.1:${port}\n` +
          describeOutput(t, `\n--- error.log ---\n${readLog()}`),
      });
      if (!isRunning(t))
        throw new Error(`nginx (stream) exited at start-up\n${describeOutput(t, `\n--- error.log ---\n${readLog()}`)}`);
    } catch (err) {
      await t.stop('SIGKILL', 0);
      if (attempt < 3 && /Address already in use/.test(readLog())) continue;
      throw err;
    }
    return {
      address: `127.0.0.1:${port}`,
      port,
      dir,
      proc: t.proc,
      log: readLog,
      stop: () => t.stop('SIGTERM', 10_000),
    };
  }
}

/**
 * Encodes one uwsgi request packet (modifier1 0): the vars block and no body. Written here rather
 * than imported from src/uwsgi: it probes foreign servers, and must not share a bug with the code
 * under test.
 */
export function uwsgiPacket(vars: Record<string, string>): Buffer {
  const parts: Buffer[] = [];
  for (const [key, value] of Object.entries(vars)) {
    const k = Buffer.from(key, 'latin1');
    const v = Buffer.from(value, 'latin1');
    const lengths = Buffer.alloc(2);
    lengths.writeUInt16LE(k.length);
    parts.push(lengths, k);
    const vlen = Buffer.alloc(2);
    vlen.writeUInt16LE(v.length);
    parts.push(vlen, v);
  }
  const block = Buffer.concat(parts);
  const header = Buffer.alloc(4);
  header.writeUInt8(0, 0);
  header.writeUInt16LE(block.length, 1);
  header.writeUInt8(0, 3);
  return Buffer.concat([header, block]);
}

/** Sends `GET path` over the uwsgi protocol and returns the raw response text (until close). */
export function uwsgiGet(
  target: { host: string; port: number } | { path: string },
  path = '/',
  timeoutMs = 5000,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(target as net.NetConnectOpts);
    const chunks: Buffer[] = [];
    socket.setTimeout(timeoutMs, () =>
      socket.destroy(new Error(`uwsgi GET ${path}: no answer within ${timeoutMs} ms`)),
    );
    socket.on('connect', () =>
      socket.write(
        uwsgiPacket({
          REQUEST_METHOD: 'GET',
          REQUEST_URI: path,
          PATH_INFO: path.split('?')[0]!,
          QUERY_STRING: path.split('?')[1] ?? '',
          SERVER_PROTOCOL: 'HTTP/1.1',
          SERVER_NAME: 'localhost',
          SERVER_PORT: '80',
          REMOTE_ADDR: '127.0.0.1',
          HTTP_HOST: 'localhost',
        }),
      ),
    );
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
  });
}

export interface UwsgiOptions {
  /** The WSGI file; the Flask fixture by default. */
  wsgiFile?: string;
  callable?: string;
  /** 127.0.0.1:PORT to bind; an OS-picked free port by default. */
  port?: number;
  processes?: number;
  readyTimeoutMs?: number;
}

/** Runs uWSGI (master + workers) serving the Flask fixture, and waits until it answers `GET /`. */
export async function startUwsgi(opts: UwsgiOptions = {}): Promise<PeerProcess> {
  const dir = makeTempDir('uwsgi');
  for (let attempt = 1; ; attempt++) {
    const port = opts.port ?? (await freePort());
    const t = spawnTracked('uwsgi', [
      '--plugin-dir',
      UWSGI_PLUGIN_DIR,
      '--plugin',
      'python3',
      '--master',
      '--processes',
      String(opts.processes ?? 2),
      '--socket',
      `127.0.0.1:${port}`,
      '--wsgi-file',
      opts.wsgiFile ?? FLASK_APP,
      '--callable',
      opts.callable ?? 'app',
      // uWSGI's default 4096-byte buffer refuses a 12 KB Cookie ("invalid request block size")
      '--buffer-size',
      '65535',
      '--die-on-term',
      '--need-app',
      '--no-orphans',
      '--disable-logging',
      '--chdir',
      dir,
    ]);
    const probe = { host: '127.0.0.1', port };
    try {
      // A bound socket is not enough: the app must be loaded, so ask it for a real response.
      await waitUntil(async () => !isRunning(t) || (await uwsgiGet(probe, '/', 2000)).startsWith('HTTP/1.1 200'), {
        timeoutMs: opts.readyTimeoutMs ?? 20_000,
        intervalMs: 100,
        describe: () => `uWSGI did not answer GET / on 127.0.0.1:${port}\n${describeOutput(t)}`,
      });
      if (!isRunning(t)) throw new Error(`uWSGI exited at start-up\n${describeOutput(t)}`);
    } catch (err) {
      await t.stop('SIGKILL', 0);
      if (attempt < 3 && opts.port === undefined && /Address already in use/.test(t.stderr())) continue;
      throw err;
    }
    return {
      address: `127.0.0.1:${port}`,
      port,
      dir,
      proc: t.proc,
      log: t.stderr,
      stop: () => t.stop('SIGTERM', 10_000),
    };
  }
}
