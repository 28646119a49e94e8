// What both entry points do once bin/check-node.js has passed: turn on Node's compile cache, run
// the CLI module given, exit with its code. Loaded with import() after the check: the import of
// enableCompileCache is what fails to link on a Node older than 22.1.
import { enableCompileCache } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export async function runCli(cliModule) {
  // Node's compile cache keeps each module's stripped source (and V8's code cache) on disk, keyed by
  // path and content: from the second start on, no process of this tree loads the type stripper,
  // ~20 MiB resident each. Set in the environment, it is on in the workers from their first module.
  process.env.NODE_COMPILE_CACHE ||= join(tmpdir(), 'node-compile-cache');
  enableCompileCache(process.env.NODE_COMPILE_CACHE);
  const { main } = await import(cliModule.href);

  const code = await main(process.argv.slice(2));
  // A start that failed half-way can leave workers or servers open; a failed command must not linger.
  if (code !== 0) process.exit(code);
  process.exitCode = code;
}
