import { describe, expect, it } from 'vitest';
import { Balancer } from './balancer.ts';
import { HealthChecker, type HealthCheckConfig } from './health.ts';

const config: HealthCheckConfig = {
  enabled: true,
  interval: 0.02,
  timeout: 1,
  path: '/health',
  status: [200, 204],
  fails: 2,
  passes: 2,
};

function group() {
  return new Balancer(
    ['a', 'b'].map((label) => ({ label, weight: 1, backup: false, target: label })),
    { policy: 'round-robin', hashKey: 'client', maxFails: 1, failTimeoutMs: 10_000, tries: 0, tryTimeoutMs: 0 },
    Date.now,
    0,
  );
}

const until = async (cond: () => boolean) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(cond()).toBe(true);
};

describe('HealthChecker', () => {
  it('takes a server out after `fails` bad answers and back after `passes` good ones', async () => {
    const g = group();
    const answer: Record<string, number> = { a: 200, b: 204 };
    const asked: string[] = [];
    const checker = new HealthChecker(g, config, async (t, path) => {
      asked.push(`${t} ${path}`);
      return answer[t]!;
    });
    try {
      await until(() => asked.filter((x) => x === 'b /health').length >= 2);
      expect(g.health().map((h) => h.up)).toEqual([true, true]);
      answer.a = 500;
      await until(() => !g.peers[0]!.checkedUp);
      expect(g.pick(null, new Set())!.label).toBe('b');
      expect(g.pick(null, new Set())!.label).toBe('b');
      answer.a = 200;
      await until(() => g.peers[0]!.checkedUp);
      expect(checker.failed).toBeGreaterThanOrEqual(2);
    } finally {
      checker.close();
    }
  });

  it('counts a probe that throws as a failure, never stacks a slow one, and stops when closed', async () => {
    const g = group();
    let running = 0;
    let most = 0;
    let calls = 0;
    const checker = new HealthChecker(g, config, async (t) => {
      calls++;
      running++;
      most = Math.max(most, running);
      await new Promise((r) => setTimeout(r, 60)); // three intervals
      running--;
      if (t === 'b') throw new Error('ECONNREFUSED');
      return 200;
    });
    await until(() => !g.peers[1]!.checkedUp);
    checker.close();
    const after = calls;
    await new Promise((r) => setTimeout(r, 150));
    expect(calls).toBe(after);
    expect(most).toBeLessThanOrEqual(2); // one per server at a time
    expect(g.peers[0]!.checkedUp).toBe(true);
  });
});
