import { describe, expect, it } from 'vitest';
import type { IncomingMessage } from 'node:http';
import { Balancer, hashKeyOf, serveFromGroup, type GroupOptions, type Peer } from './balancer.ts';
import { UpstreamNextServer, UpstreamReset, UpstreamUnreachable } from '../errors.ts';
import type { ProxyContext, RequestBody } from './upstream.ts';

const base: GroupOptions = {
  policy: 'round-robin',
  hashKey: 'client',
  maxFails: 1,
  failTimeoutMs: 10_000,
  tries: 0,
  tryTimeoutMs: 0,
};

function group(spec: Array<[string, number?, boolean?]>, opts: Partial<GroupOptions> = {}, clock = { now: 0 }) {
  return new Balancer(
    spec.map(([label, weight = 1, backup = false]) => ({ label, weight, backup, target: label })),
    { ...base, ...opts },
    () => clock.now,
    0,
  );
}

function picks(b: Balancer<string>, n: number, key: string | null = null): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(b.pick(key, new Set())!.label);
  return out;
}

function count(list: string[]): Record<string, number> {
  const c: Record<string, number> = {};
  for (const x of list) c[x] = (c[x] ?? 0) + 1;
  return c;
}

describe('round-robin', () => {
  it('rotates evenly over equal servers', () => {
    expect(picks(group([['a'], ['b'], ['c']]), 6)).toEqual(['a', 'b', 'c', 'a', 'b', 'c']);
  });

  it('is smooth and weighted as nginx: 5,1,1 gives a a b a c a a', () => {
    expect(
      picks(
        group([
          ['a', 5],
          ['b', 1],
          ['c', 1],
        ]),
        7,
      ),
    ).toEqual(['a', 'a', 'b', 'a', 'c', 'a', 'a']);
  });

  it('respects weights over many picks', () => {
    expect(
      count(
        picks(
          group([
            ['a', 3],
            ['b', 1],
          ]),
          400,
        ),
      ),
    ).toEqual({ a: 300, b: 100 });
  });

  it('starts where `start` says, so processes balancing on their own do not all begin at the first', () => {
    const b = new Balancer(
      ['a', 'b', 'c'].map((label) => ({ label, weight: 1, backup: false, target: label })),
      base,
      () => 0,
      1,
    );
    expect(picks(b, 3)).toEqual(['b', 'c', 'a']);
  });

  it('skips what this request already tried', () => {
    const b = group([['a'], ['b'], ['c']]);
    const tried = new Set<Peer<string>>([b.peers[0]!, b.peers[1]!]);
    expect(b.pick(null, tried)!.label).toBe('c');
    tried.add(b.peers[2]!);
    expect(b.pick(null, tried)).toBeNull();
  });
});

describe('least-conn', () => {
  it('takes the server with the fewest active requests', () => {
    const b = group([['a'], ['b'], ['c']], { policy: 'least-conn' });
    b.peers[0]!.active = 2;
    b.peers[1]!.active = 0;
    b.peers[2]!.active = 1;
    expect(b.pick(null, new Set())!.label).toBe('b');
  });

  it('rotates among ties', () => {
    expect(picks(group([['a'], ['b'], ['c']], { policy: 'least-conn' }), 6)).toEqual(['a', 'b', 'c', 'a', 'b', 'c']);
  });

  it('weighs the count: 2 active on weight 4 is less than 1 on weight 1', () => {
    const b = group(
      [
        ['a', 4],
        ['b', 1],
      ],
      { policy: 'least-conn' },
    );
    b.peers[0]!.active = 2;
    b.peers[1]!.active = 1;
    expect(b.pick(null, new Set())!.label).toBe('a');
  });
});

describe('consistent hash', () => {
  it('sends one key to one server, and different keys across servers', () => {
    const b = group([['a'], ['b'], ['c']], { policy: 'hash' });
    const keys = Array.from({ length: 300 }, (_, i) => `10.0.${i >> 8}.${i & 255}`);
    const first = keys.map((k) => b.pick(k, new Set())!.label);
    expect(keys.map((k) => b.pick(k, new Set())!.label)).toEqual(first);
    const spread = count(first);
    expect(Object.keys(spread).sort()).toEqual(['a', 'b', 'c']);
    for (const n of Object.values(spread)) expect(n).toBeGreaterThan(50);
  });

  it('moves only the keys of a server that is out, to the others', () => {
    const clock = { now: 0 };
    const b = group([['a'], ['b'], ['c']], { policy: 'hash' }, clock);
    const keys = Array.from({ length: 200 }, (_, i) => `client-${i}`);
    const before = keys.map((k) => b.pick(k, new Set())!.label);
    b.peers[1]!.checkedUp = false;
    const after = keys.map((k) => b.pick(k, new Set())!.label);
    keys.forEach((_, i) => {
      if (before[i] !== 'b') expect(after[i]).toBe(before[i]);
      else expect(after[i]).not.toBe('b');
    });
  });

  it('goes round-robin for a request without the key', () => {
    expect(picks(group([['a'], ['b']], { policy: 'hash' }), 4)).toEqual(['a', 'b', 'a', 'b']);
  });

  it('reads the key from the client address, a header or a cookie', () => {
    const req = { url: '/p?q', headers: { 'x-user': 'u1', cookie: 'a=1; sid=xyz; b=2' } } as unknown as IncomingMessage;
    expect(hashKeyOf('client', req, '10.1.2.3')).toBe('10.1.2.3');
    expect(hashKeyOf('uri', req, '')).toBe('/p?q');
    expect(hashKeyOf('header:X-User', req, '')).toBe('u1');
    expect(hashKeyOf('cookie:sid', req, '')).toBe('xyz');
    expect(hashKeyOf('cookie:none', req, '')).toBeNull();
  });
});

describe('backup servers and health', () => {
  it('uses backups only when every primary is out', () => {
    const clock = { now: 1000 };
    const b = group([['a'], ['b'], ['z', 1, true]], {}, clock);
    expect(picks(b, 4)).toEqual(['a', 'b', 'a', 'b']);
    b.failure(b.peers[0]!);
    expect(picks(b, 2)).toEqual(['b', 'b']);
    b.failure(b.peers[1]!);
    expect(picks(b, 2)).toEqual(['z', 'z']);
  });

  it('takes a server out after maxFails within failTimeout, for failTimeout', () => {
    const clock = { now: 0 };
    const b = group([['a'], ['b']], { maxFails: 3, failTimeoutMs: 1000 }, clock);
    const a = b.peers[0]!;
    b.failure(a);
    b.failure(a);
    expect(a.up(clock.now)).toBe(true);
    clock.now = 1500; // the window passed: the count starts again
    b.failure(a);
    b.failure(a);
    expect(a.up(clock.now)).toBe(true);
    b.failure(a);
    expect(a.up(clock.now)).toBe(false);
    expect(b.health()).toEqual([
      { target: 'a', up: false, active: 0, fails: 5 },
      { target: 'b', up: true, active: 0, fails: 0 },
    ]);
    clock.now = 2499;
    expect(a.up(clock.now)).toBe(false);
    clock.now = 2501;
    expect(a.up(clock.now)).toBe(true);
  });

  it('still tries a lone server that is out (shown down), and never takes one out when maxFails is 0', () => {
    const lone = group([['a']]);
    lone.failure(lone.peers[0]!);
    expect(lone.health()[0]!.up).toBe(false);
    expect(lone.pick(null, new Set())!.label).toBe('a');
    const never = group([['a'], ['b']], { maxFails: 0 });
    never.failure(never.peers[0]!);
    expect(never.peers[0]!.up(0)).toBe(true);
  });

  it('with every server out, still tries the one whose timeout ends first', () => {
    const clock = { now: 0 };
    const b = group([['a'], ['b']], {}, clock);
    b.failure(b.peers[1]!);
    clock.now = 10;
    b.failure(b.peers[0]!);
    expect(b.pick(null, new Set())!.label).toBe('b');
    expect(b.pick(null, new Set([b.peers[1]!]))).toBeNull();
  });
});

/** A ProxyContext with what serveFromGroup reads. */
function ctxFor(method: string): ProxyContext {
  return {
    req: { method, url: '/', headers: {} },
    res: { headersSent: false, destroyed: false },
    forward: { clientAddress: '127.0.0.1' },
    timings: { dispatchAt: 0, connectAt: 0, headAt: 0, endAt: 0, worker: null },
    upstreamLabel: '',
    bytesOut: 0,
  } as unknown as ProxyContext;
}

describe('serveFromGroup (proxy_next_upstream)', () => {
  const body = (replayable: boolean): RequestBody => ({
    length: 1,
    open: () => Buffer.from('x'),
    replayable,
    cleanup() {},
  });

  it('moves any request on after a refused connection, and counts the failure', async () => {
    const b = group([['a'], ['b']]);
    const seen: string[] = [];
    await serveFromGroup(b, 'g', ctxFor('POST'), body(true), async (t) => {
      seen.push(t);
      if (t === 'a') throw new UpstreamUnreachable(t, 'ECONNREFUSED');
    });
    expect(seen).toEqual(['a', 'b']);
    expect(b.health()[0]).toMatchObject({ up: false, fails: 1 });
  });

  it('retries a reset before the head for GET, never for POST', async () => {
    const reset = async (t: string, c: ProxyContext) => {
      c.timings.connectAt = 1;
      if (t === 'a') throw new UpstreamReset(t, 'ECONNRESET before the response head');
    };
    const get: string[] = [];
    await serveFromGroup(group([['a'], ['b']]), 'g', ctxFor('GET'), null, async (t, c) => {
      get.push(t);
      await reset(t, c);
    });
    expect(get).toEqual(['a', 'b']);
    const post: string[] = [];
    const p = serveFromGroup(group([['a'], ['b']]), 'g', ctxFor('POST'), body(true), async (t, c) => {
      post.push(t);
      await reset(t, c);
    });
    await expect(p).rejects.toMatchObject({ code: 'STRATUM_ERR_UPSTREAM_RESET' });
    expect(post).toEqual(['a']);
  });

  it('drops a 502/503 for the next server only for idempotent methods with tries left', async () => {
    const statuses = (method: string, tries: number) => {
      const asked: Array<[string, boolean]> = [];
      const b = group([['a'], ['b'], ['c']], { tries });
      return serveFromGroup(b, 'g', ctxFor(method), null, async (t, _c, _b, hooks) => {
        const next = hooks.nextOnStatus(503);
        asked.push([t, next]);
        if (next) throw new UpstreamNextServer(t, 503);
      }).then(() => asked);
    };
    expect(await statuses('GET', 0)).toEqual([
      ['a', true],
      ['b', true],
      ['c', false],
    ]);
    expect(await statuses('GET', 2)).toEqual([
      ['a', true],
      ['b', false],
    ]);
    expect(await statuses('POST', 0)).toEqual([['a', false]]);
  });

  it('does not retry a body that cannot be sent again, nor past tryTimeout, nor once bytes went out', async () => {
    const refuse = async (t: string) => {
      throw new UpstreamUnreachable(t, 'ECONNREFUSED');
    };
    await expect(serveFromGroup(group([['a'], ['b']]), 'g', ctxFor('PUT'), body(false), refuse)).rejects.toMatchObject({
      code: 'STRATUM_ERR_UPSTREAM_UNREACHABLE',
    });
    const clock = { now: 0 };
    const slow: string[] = [];
    const b = group([['a'], ['b']], { tryTimeoutMs: 1 }, clock);
    const p = serveFromGroup(b, 'g', ctxFor('GET'), null, async (t) => {
      slow.push(t);
      await new Promise((r) => setTimeout(r, 5));
      throw new UpstreamUnreachable(t, 'ETIMEDOUT');
    });
    await expect(p).rejects.toMatchObject({ code: 'STRATUM_ERR_UPSTREAM_UNREACHABLE' });
    expect(slow).toEqual(['a']);
    const sent: string[] = [];
    const q = serveFromGroup(group([['a'], ['b']]), 'g', ctxFor('GET'), null, async (t, c) => {
      sent.push(t);
      c.bytesOut = 10;
      throw new UpstreamReset(t, 'ECONNRESET inside the response body');
    });
    await expect(q).rejects.toMatchObject({ code: 'STRATUM_ERR_UPSTREAM_RESET' });
    expect(sent).toEqual(['a']);
  });

  it('keeps the active count while a try runs', async () => {
    const b = group([['a'], ['b']]);
    let during = -1;
    await serveFromGroup(b, 'g', ctxFor('GET'), null, async () => {
      during = b.peers[0]!.active;
    });
    expect(during).toBe(1);
    expect(b.peers[0]!.active).toBe(0);
  });
});
