// The image's HEALTHCHECK: GET /readyz on the admin listener that the running stratum uses,
// found the way `stratum serve` finds it: the --admin flag, else STRATUM_ADMIN, else admin.listen
// in its config (the --config file, else ./stratum.yaml or ./stratum.config.{ts,mjs,js} in its
// working directory; a YAML file or a config module's default export), else the default
// 127.0.0.1:9900. The flags and the working directory come from PID 1 (/proc/1/cmdline and cwd;
// the health check runs in the container's PID namespace), so a CMD overridden with another
// --config or --admin is followed too. A wildcard listen address is probed on loopback.
//
// Cheap, since Docker runs it every few seconds: node:http and node:fs through getBuiltinModule (an
// ES import of node:http loads Node's bundled undici: 90 → 30 ms of CPU per probe, `/usr/bin/time`),
// and the `yaml` package only when the address has to come from the config file. fetch would load
// undici too, and the project's own config loader zod.
// Exit 0 when /readyz answers 200, 1 otherwise (Docker's "healthy" / "unhealthy").
const { existsSync, readFileSync, readlinkSync } = process.getBuiltinModule('node:fs');
const { request } = process.getBuiltinModule('node:http');
const { resolve } = process.getBuiltinModule('node:path');
const { pathToFileURL } = process.getBuiltinModule('node:url');

const DEFAULT_ADMIN = '127.0.0.1:9900';
const DEFAULT_CONFIG = '/etc/stratum/stratum.yaml';
const TIMEOUT_MS = 2500;

function fail(message) {
  process.stderr.write(`healthcheck: ${message}\n`);
  process.exit(1);
}

/** The value of --name / --name=value in an argv, or undefined. */
function flag(argv, name) {
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === name) return argv[i + 1];
    if (argv[i].startsWith(`${name}=`)) return argv[i].slice(name.length + 1);
  }
  return undefined;
}

// As src/cli.ts: the files `stratum serve` reads when no --config is given, and which are modules.
const DEFAULT_CONFIG_FILES = ['stratum.yaml', 'stratum.config.ts', 'stratum.config.mjs', 'stratum.config.js'];
const CONFIG_MODULE = /\.(?:[cm]?js|[cm]?ts)$/;

/** The server's command line and working directory; null when /proc does not show them. */
function server() {
  // Tests point this at a stratum that is not PID 1.
  const pid = process.env.STRATUM_HEALTHCHECK_PID || '1';
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    return { argv, cwd: readlinkSync(`/proc/${pid}/cwd`) };
  } catch {
    return null;
  }
}

/** admin.listen of a config file: YAML, or the default export of a config module. */
async function listenIn(file) {
  if (CONFIG_MODULE.test(file)) {
    try {
      const exported = (await import(pathToFileURL(file).href)).default;
      const settings = typeof exported === 'function' ? await exported() : exported;
      return settings?.admin?.listen;
    } catch (err) {
      // A module the server loads may import what this probe cannot resolve; the default may still be right.
      process.stderr.write(`healthcheck: cannot load ${file} (${err.message}); set STRATUM_ADMIN if the admin moved\n`);
      return undefined;
    }
  }
  try {
    const { parse } = await import('yaml');
    return parse(readFileSync(file, 'utf8'))?.admin?.listen;
  } catch (err) {
    fail(`cannot read admin.listen from ${file}: ${err.message}`);
  }
}

async function adminAddress() {
  const srv = server();
  const argv = srv?.argv ?? [];
  const fromFlag = flag(argv, '--admin');
  if (fromFlag) return fromFlag;
  if (process.env.STRATUM_ADMIN) return process.env.STRATUM_ADMIN;
  let file;
  if (!srv) file = DEFAULT_CONFIG;
  else {
    const named = flag(argv, '--config');
    file = named
      ? resolve(srv.cwd, named)
      : DEFAULT_CONFIG_FILES.map((f) => resolve(srv.cwd, f)).find((f) => existsSync(f));
  }
  if (!file) return DEFAULT_ADMIN;
  const listen = await listenIn(file);
  return typeof listen === 'string' && listen ? listen : DEFAULT_ADMIN;
}

/** "host:port", "[v6]:port" or ":port" → where to connect; wildcards become loopback. */
function target(address) {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(address.trim());
  if (!m) fail(`admin address ${JSON.stringify(address)} is not host:port`);
  let host = m[1] ?? m[2];
  if (host === '' || host === '0.0.0.0') host = '127.0.0.1';
  else if (host === '::') host = '::1';
  return { host, port: Number(m[3]) };
}

const address = await adminAddress();
const { host, port } = target(address);
const req = request({ host, port, path: '/readyz', method: 'GET', timeout: TIMEOUT_MS }, (res) => {
  res.resume();
  if (res.statusCode === 200) process.exit(0);
  fail(`GET http://${address}/readyz answered ${res.statusCode}`);
});
req.on('timeout', () => req.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)));
req.on('error', (err) => fail(`GET http://${address}/readyz: ${err.message}`));
req.end();
