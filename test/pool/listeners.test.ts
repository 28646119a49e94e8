// The listeners the master holds: bound once, never closed while the service runs (a rolling
// reload replaces every worker without a moment of ECONNREFUSED), and refused at start when the
// address is taken — never silently moved to another address.
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { spawnTracked } from '../helpers/processes.ts';
import { REPO_ROOT, STRATUM_BIN, startStratum, stopAllStratum } from '../helpers/stratum.ts';

afterAll(stopAllStratum);

const FIXTURE = join(REPO_ROOT, 'test/fixtures/apps/pool-app.ts');

/** A port held by another process (this one) on 127.0.0.1. */
async function takenPort(): Promise<{ port: number; close(): void }> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as net.AddressInfo).port, close: () => server.close() };
}

async function runToExit(args: string[]): Promise<{ code: number | null; stderr: string; stdout: string }> {
  const t = spawnTracked(process.execPath, [STRATUM_BIN, ...args], { cwd: REPO_ROOT });
  const timer = setTimeout(() => void t.stop('SIGKILL', 0), 20_000);
  const code = await t.exited;
  clearTimeout(timer);
  return { code, stderr: t.stderr(), stdout: t.stdout() };
}

describe('an address already taken', () => {
  for (const [what, flag] of [
    ['the pool socket', '--socket'],
    ['the front listener', '--listen'],
  ] as const) {
    it(`refuses to start when ${what} is taken: exit 2, one line naming the address`, async () => {
      const held = await takenPort();
      try {
        const address = `127.0.0.1:${held.port}`;
        const args = [
          'serve',
          '--listen',
          '127.0.0.1:0',
          '--admin',
          '127.0.0.1:0',
          '--workers',
          '1',
          '--app',
          FIXTURE,
          flag,
          address,
        ];
        const r = await runToExit(args);
        expect(r.code, r.stderr + r.stdout).toBe(2);
        const lines = r.stderr.trimEnd().split('\n');
        expect(lines).toHaveLength(1);
        expect(lines[0]).toContain(address);
        expect(lines[0]).toMatch(/address already in use/);
        // It never came up anywhere else: no ready line, and the process is gone.
        expect(r.stdout).not.toMatch(/stratum ready/);
      } finally {
        held.close();
      }
    });
  }
});

describe('a rolling reload', () => {
  it('never closes the front listener: a new connection every 10 ms during SIGHUP always gets an answer', async () => {
    const s = await startStratum([
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--admin',
      '127.0.0.1:0',
      '--workers',
      '2',
      '--app',
      FIXTURE,
    ]);
    try {
      const url = new URL(s.front!);
      const results: Array<{ status: number; error?: string }> = [];
      let stop = false;
      const probe = async () => {
        while (!stop && results.length < 2_000) {
          results.push(
            await new Promise((resolve) => {
              // A fresh connection each time (no agent): a closed listener would show as ECONNREFUSED.
              const req = net.connect({ host: url.hostname, port: Number(url.port) }, () => {
                req.write('GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
              });
              let data = '';
              req.setTimeout(10_000, () => req.destroy(new Error('timeout')));
              req.on('data', (c: Buffer) => (data += c.toString()));
              req.on('error', (err) => resolve({ status: 0, error: err.message }));
              req.on('close', () => resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1] ?? 0) }));
            }),
          );
          await new Promise((r) => setTimeout(r, 10));
        }
      };
      const probing = probe();
      await new Promise((r) => setTimeout(r, 300));
      process.kill(s.proc.pid!, 'SIGHUP');
      // Until every worker has been replaced.
      const deadline = Date.now() + 20_000;
      for (;;) {
        const st = (await (await fetch(`${s.admin}/stats`)).json()) as {
          workers: Array<{ pid: number; state: string }>;
        };
        const fresh = st.workers.filter((w) => !s.workers.includes(w.pid) && w.state !== 'starting');
        if (fresh.length === 2 && st.workers.length === 2) break;
        if (Date.now() > deadline) throw new Error(`reload did not finish: ${JSON.stringify(st)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      await new Promise((r) => setTimeout(r, 300));
      stop = true;
      await probing;
      expect(results.length).toBeGreaterThan(20);
      expect(
        results.filter((r) => r.status !== 200),
        JSON.stringify(results.filter((r) => r.status !== 200).slice(0, 5)),
      ).toEqual([]);
    } finally {
      expect(await s.stop()).toBe(0);
    }
  });
});
