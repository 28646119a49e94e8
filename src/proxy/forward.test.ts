import type { IncomingMessage } from 'node:http';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../config/load.ts';
import type { StratumConfig } from '../config/schema.ts';
import type { StratumError } from '../errors.ts';
import { schema } from '../config/schema.ts';
import {
  compileTrust,
  forwardedAddress,
  forwardInfo,
  httpRequestHeaders,
  isTrusted,
  parseTrustedProxy,
  presentClient,
  realClient,
  uwsgiVars,
} from './forward.ts';

/** The proxy section as the schema makes it, with these trusted proxies. */
function proxyConfig(trustedProxies: string[]): StratumConfig['proxy'] {
  return schema.parse({ proxy: { trustedProxies } }).proxy;
}

/** A request as Node's parser hands it over, from a socket with this peer. */
function request(
  headers: Array<[string, string]>,
  peer: { address?: string; port?: number; encrypted?: boolean } = {},
): { req: IncomingMessage; socket: net.Socket } {
  const socket = new net.Socket();
  Object.defineProperty(socket, 'remoteAddress', { value: peer.address, configurable: true });
  Object.defineProperty(socket, 'remotePort', { value: peer.port ?? 40000, configurable: true });
  Object.defineProperty(socket, 'localPort', { value: 8080, configurable: true });
  if (peer.encrypted) (socket as net.Socket & { encrypted: boolean }).encrypted = true;
  const rawHeaders = headers.flat();
  const h: Record<string, string> = {};
  for (const [k, v] of headers) {
    const lower = k.toLowerCase();
    h[lower] = h[lower] === undefined ? v : `${h[lower]}, ${v}`;
  }
  const req = {
    method: 'GET',
    url: '/p?q=1',
    httpVersion: '1.1',
    headers: h,
    rawHeaders,
    socket,
  } as unknown as IncomingMessage;
  return { req, socket };
}

function headerMap(flat: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < flat.length; i += 2) out[flat[i]!.toLowerCase()] = flat[i + 1]!;
  return out;
}

describe('trusted proxies: the list', () => {
  it('accepts IPv4 and IPv6 CIDRs, single addresses and unix:, and refuses the rest', () => {
    expect(parseTrustedProxy('10.0.0.0/8')).toEqual({ kind: 'ipv4', net: '10.0.0.0', prefix: 8 });
    expect(parseTrustedProxy('192.0.2.7')).toEqual({ kind: 'ipv4', net: '192.0.2.7', prefix: 32 });
    expect(parseTrustedProxy('fd00::/8')).toEqual({ kind: 'ipv6', net: 'fd00::', prefix: 8 });
    expect(parseTrustedProxy('::1')).toEqual({ kind: 'ipv6', net: '::1', prefix: 128 });
    expect(parseTrustedProxy('unix:')).toEqual({ kind: 'unix' });
    for (const bad of ['10.0.0.0/33', '::/129', '10.0.0/8', 'localhost', '10.0.0.0/', '10.0.0.0/-1', '', '1.2.3.4/8x'])
      expect(parseTrustedProxy(bad), bad).toBeNull();
  });

  it('is validated by the schema, naming the entry', () => {
    const r = schema.safeParse({ proxy: { trustedProxies: ['10.0.0.0/8', 'nope'] } });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.path).toEqual(['proxy', 'trustedProxies', 1]);
  });

  it('matches IPv4, IPv6, IPv4-mapped peers and Unix sockets', () => {
    const t = compileTrust(['10.0.0.0/8', '2001:db8::/32', 'unix:']);
    expect(isTrusted(t, '10.1.2.3')).toBe(true);
    expect(isTrusted(t, '11.1.2.3')).toBe(false);
    expect(isTrusted(t, '::ffff:10.1.2.3')).toBe(true); // a dual-stack listener's IPv4 client
    expect(isTrusted(t, '2001:db8:1::5')).toBe(true);
    expect(isTrusted(t, '2001:db9::5')).toBe(false);
    expect(isTrusted(t, '')).toBe(true);
    expect(isTrusted(compileTrust(['127.0.0.1']), '')).toBe(false);
    expect(isTrusted(compileTrust([]), '127.0.0.1')).toBe(false);
  });

  it('reads X-Forwarded-For entries with or without ports, and nothing else', () => {
    expect(forwardedAddress(' 192.0.2.1 ')).toBe('192.0.2.1');
    expect(forwardedAddress('192.0.2.1:4711')).toBe('192.0.2.1');
    expect(forwardedAddress('2001:db8::1')).toBe('2001:db8::1');
    expect(forwardedAddress('[2001:db8::1]:4711')).toBe('2001:db8::1');
    expect(forwardedAddress('[2001:db8::1]')).toBe('2001:db8::1');
    for (const bad of ['unknown', '', '_hidden', '1.2.3.4:x', '[::1]x', 'example.com'])
      expect(forwardedAddress(bad), bad).toBeNull();
  });
});

describe('trusted proxies: the real client (real_ip_recursive on)', () => {
  const t = compileTrust(['10.0.0.0/8', '127.0.0.1']);

  it('is the peer when the peer is not trusted, whatever X-Forwarded-For claims', () => {
    expect(realClient(t, '203.0.113.9', '1.1.1.1')).toBe('203.0.113.9');
  });

  it('is the right-most untrusted address behind trusted proxies', () => {
    expect(realClient(t, '127.0.0.1', '198.51.100.1')).toBe('198.51.100.1');
    // A client that forged an entry: the forged one is left of the real client and never reached.
    expect(realClient(t, '127.0.0.1', '6.6.6.6, 198.51.100.1, 10.0.0.2')).toBe('198.51.100.1');
    expect(realClient(t, '10.9.9.9', '198.51.100.1:5555, 10.0.0.2')).toBe('198.51.100.1');
  });

  it('is the left-most when every hop is trusted, and stops at an entry that is not an address', () => {
    expect(realClient(t, '127.0.0.1', '10.0.0.3, 10.0.0.2')).toBe('10.0.0.3');
    expect(realClient(t, '127.0.0.1', '198.51.100.1, unknown, 10.0.0.2')).toBe('10.0.0.2');
    expect(realClient(t, '127.0.0.1', 'garbage')).toBe('127.0.0.1');
    expect(realClient(t, '127.0.0.1', '')).toBe('127.0.0.1');
  });
});

describe('X-Forwarded-* on the way through', () => {
  const spoof: Array<[string, string]> = [
    ['Host', 'app.example'],
    ['X-Forwarded-For', '6.6.6.6'],
    ['X-Forwarded-Proto', 'https'],
    ['X-Forwarded-Host', 'evil.example'],
  ];

  it('replaces them all from a peer that is not trusted (and with no trusted proxies at all)', () => {
    for (const trusted of [[], ['10.0.0.0/8']]) {
      const { req, socket } = request(spoof, { address: '203.0.113.9', port: 5151 });
      const f = forwardInfo(req, socket, 'rid', proxyConfig(trusted));
      expect([f.clientAddress, f.clientPort, f.scheme]).toEqual(['203.0.113.9', 5151, 'http']);
      const h = headerMap(httpRequestHeaders(req, f));
      expect(h['x-forwarded-for']).toBe('203.0.113.9');
      expect(h['x-forwarded-proto']).toBe('http');
      expect(h['x-forwarded-host']).toBe('app.example');
    }
  });

  it('takes the scheme from the socket, not a constant: https on a TLS connection', () => {
    const { req, socket } = request([['Host', 'a']], { address: '203.0.113.9', encrypted: true });
    const f = forwardInfo(req, socket, 'rid', proxyConfig([]));
    expect(f.scheme).toBe('https');
    expect(headerMap(httpRequestHeaders(req, f))['x-forwarded-proto']).toBe('https');
    expect(uwsgiVars(req, f)).toEqual(expect.arrayContaining(['HTTPS', 'on', 'REQUEST_SCHEME', 'https']));
  });

  it('appends to X-Forwarded-For and keeps -Proto and -Host from a trusted peer', () => {
    const { req, socket } = request(spoof, { address: '10.0.0.5', port: 6000 });
    const f = forwardInfo(req, socket, 'rid', proxyConfig(['10.0.0.0/8']));
    expect([f.clientAddress, f.clientPort, f.scheme, f.peerAddress]).toEqual(['6.6.6.6', 0, 'https', '10.0.0.5']);
    const h = headerMap(httpRequestHeaders(req, f));
    expect(h['x-forwarded-for']).toBe('6.6.6.6, 10.0.0.5');
    expect(h['x-forwarded-proto']).toBe('https');
    expect(h['x-forwarded-host']).toBe('evil.example');
    expect(h.host).toBe('app.example');
  });

  it('gives uwsgi the real client and scheme: REMOTE_ADDR, HTTPS, wsgi.url_scheme', () => {
    const { req, socket } = request(
      [
        ['Host', 'app.example'],
        ['X-Forwarded-For', '198.51.100.7, 10.0.0.9'],
        ['X-Forwarded-Proto', 'HTTPS, http'],
      ],
      { address: '10.0.0.5' },
    );
    const f = forwardInfo(req, socket, 'rid', proxyConfig(['10.0.0.0/8']));
    const vars = uwsgiVars(req, f);
    const get = (k: string) => vars[vars.indexOf(k) + 1];
    expect(get('REMOTE_ADDR')).toBe('198.51.100.7');
    expect(get('REMOTE_PORT')).toBe('0');
    expect(get('REQUEST_SCHEME')).toBe('https');
    expect(get('HTTPS')).toBe('on');
    expect(get('HTTP_X_FORWARDED_FOR')).toBe('198.51.100.7, 10.0.0.9, 10.0.0.5');
    expect(get('HTTP_X_FORWARDED_PROTO')).toBe('HTTPS, http');
    expect(get('HTTP_X_FORWARDED_HOST')).toBe('app.example');
  });

  it('keeps the socket scheme when a trusted X-Forwarded-Proto is neither http nor https', () => {
    const { req, socket } = request([['X-Forwarded-Proto', 'gopher']], { address: '10.0.0.5' });
    const f = forwardInfo(req, socket, 'rid', proxyConfig(['10.0.0.0/8']));
    expect(f.scheme).toBe('http');
    expect(f.forwardedProto).toBe('gopher');
  });

  it('trusts a Unix-socket peer only with unix: in the list', () => {
    const headers: Array<[string, string]> = [['X-Forwarded-For', '198.51.100.7']];
    const a = request(headers, {});
    expect(forwardInfo(a.req, a.socket, 'r', proxyConfig(['127.0.0.1'])).clientAddress).toBe('');
    const b = request(headers, {});
    expect(forwardInfo(b.req, b.socket, 'r', proxyConfig(['unix:'])).clientAddress).toBe('198.51.100.7');
  });
});

describe('presentClient: an app in this process reads the client from its socket', () => {
  it('dresses the socket as the real client per request, and back to the peer for the next one', () => {
    const cfg = proxyConfig(['10.0.0.0/8']);
    const first = request(
      [
        ['X-Forwarded-For', '198.51.100.7'],
        ['X-Forwarded-Proto', 'https'],
      ],
      { address: '10.0.0.5' },
    );
    const f1 = forwardInfo(first.req, first.socket, 'r1', cfg);
    presentClient(first.socket, f1);
    const s = first.socket as net.Socket & { encrypted?: boolean };
    expect([s.remoteAddress, s.remotePort, s.remoteFamily, s.encrypted]).toEqual(['198.51.100.7', 0, 'IPv4', true]);
    // The next request on the same kept connection came from the proxy itself: the peer, read once per connection.
    const next = { ...first.req, headers: {}, rawHeaders: [] } as unknown as IncomingMessage;
    const f2 = forwardInfo(next, first.socket, 'r2', cfg);
    expect(f2.clientAddress).toBe('10.0.0.5');
    presentClient(first.socket, f2);
    expect([s.remoteAddress, s.remotePort, s.encrypted]).toEqual(['10.0.0.5', 40000, false]);
  });

  it('leaves a socket alone when the client is its own peer', () => {
    const { req, socket } = request([], { address: '203.0.113.9' });
    presentClient(socket, forwardInfo(req, socket, 'r', proxyConfig([])));
    expect(Object.getOwnPropertyDescriptor(socket, 'encrypted')).toBeUndefined();
  });
});

describe('--trusted-proxy on the command line', () => {
  const base = { mode: 'check' as const, flags: { route: ['/=http://127.0.0.1:9'] }, env: {} };

  it('sets proxy.trustedProxies, repeatable, over the file', () => {
    const c = loadConfig({ ...base, flags: { ...base.flags, trustedProxy: ['10.0.0.0/8', '::1'] } });
    expect(c.proxy.trustedProxies).toEqual(['10.0.0.0/8', '::1']);
    expect(loadConfig(base).proxy.trustedProxies).toEqual([]);
  });

  it('refuses a bad one with a ConfigInvalid naming the entry and the flag', () => {
    let err: unknown;
    try {
      loadConfig({ ...base, flags: { ...base.flags, trustedProxy: ['10.0.0.0/8', '10.0.0.0/40'] } });
    } catch (e) {
      err = e;
    }
    expect((err as StratumError).code).toBe('STRATUM_ERR_CONFIG');
    expect((err as { path?: string }).path).toBe('proxy.trustedProxies.1');
    expect((err as Error).message).toContain('--trusted-proxy');
  });
});
