// The image's HEALTHCHECK: GET /readyz on the admin listener that the running stratum uses,
// found the way `stratum serve` finds it: the --admin flag, else STRATUM_ADMIN, else admin.listen
// in the --config file, else the default 127.0.0.1:9900. The flags come from PID 1's command line
// (the health check runs in the container's PID namespace), so a CMD overridden with another
// --config or --admin is followed too. A wildcard listen address is probed on loopback.
//
// Cheap, since Docker runs it every few seconds: node:http and node:fs through getBuiltinModule (an
// ES import of node:http loads Node's bundled undici: 90 → 30 ms of CPU per probe, `/usr/bin/time`),
// and the `yaml` package only when the address has to come from the config file. fetch would load
// undici too, and the project's own config loader zod.
// Exit 0 when /readyz answers 200, 1 otherwise (Docker's "healthy" / "unhealthy").
const { readFileSync } = process.getBuiltinModule('node:fs');
const { request } = process.getBuiltinModule('node:http');

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

function serverArgv() {
  // Tests point this at a stratum that is not PID 1.
  const pid = process.env.STRATUM_HEALTHCHECK_PID || '1';
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

async function adminAddress() {
  const argv = serverArgv();
  const fromFlag = flag(argv, '--admin');
  if (fromFlag) return fromFlag;
  if (process.env.STRATUM_ADMIN) return process.env.STRATUM_ADMIN;
  const file = flag(argv, '--config') ?? (argv.length === 0 ? DEFAULT_CONFIG : undefined);
  if (!file) return DEFAULT_ADMIN;
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    fail(`cannot read the config ${file}: ${err.message}`);
  }
  const { parse } = await import('yaml');
  const listen = parse(text)?.admin?.listen;
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
