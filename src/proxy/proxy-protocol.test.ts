import http from 'node:http';
import net from 'node:net';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ProxyProtocolInvalid, type StratumError } from '../errors.ts';
import {
  ProxyHeaderParser,
  proxyHeaderOf,
  readProxyHeader,
  requireProxyProtocol,
  V1_MAX,
  V2_MAX,
  type ProxyHeader,
} from './proxy-protocol.ts';

const SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

/** A v2 header: command (0 LOCAL, 1 PROXY), family/transport byte, address block, TLVs. */
function v2(command: number, famProto: number, addresses: Buffer, tlvs: Buffer = Buffer.alloc(0)): Buffer {
  const len = Buffer.alloc(2);
  len.writeUInt16BE(addresses.length + tlvs.length);
  return Buffer.concat([SIG, Buffer.from([0x20 | command, famProto]), len, addresses, tlvs]);
}

function inet4(src: number[], dst: number[], sport: number, dport: number): Buffer {
  const b = Buffer.alloc(12);
  Buffer.from(src).copy(b, 0);
  Buffer.from(dst).copy(b, 4);
  b.writeUInt16BE(sport, 8);
  b.writeUInt16BE(dport, 10);
  return b;
}

function tlv(type: number, value: Buffer): Buffer {
  const h = Buffer.from([type, 0, 0]);
  h.writeUInt16BE(value.length, 1);
  return Buffer.concat([h, value]);
}

function parseAll(bytes: Buffer): { header: ProxyHeader; rest: Buffer } {
  const got = new ProxyHeaderParser().push(bytes);
  if (!got) throw new Error('incomplete');
  return got;
}

function refusal(bytes: Buffer | string): string {
  try {
    const got = new ProxyHeaderParser().push(Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes, 'latin1'));
    return got ? 'accepted' : 'incomplete';
  } catch (err) {
    expect(err).toBeInstanceOf(ProxyProtocolInvalid);
    return (err as StratumError).code;
  }
}

describe('PROXY protocol v1', () => {
  it('reads TCP4 and TCP6 lines and keeps the bytes after them', () => {
    const a = parseAll(Buffer.from('PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n'));
    expect(a.header).toEqual({
      version: 1,
      proxied: true,
      family: 'IPv4',
      sourceAddress: '192.0.2.10',
      sourcePort: 56324,
      destinationAddress: '198.51.100.1',
      destinationPort: 443,
      ssl: false,
    });
    expect(a.rest.toString()).toBe('GET / HTTP/1.1\r\n');
    const b = parseAll(Buffer.from('PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n'));
    expect([b.header.family, b.header.sourceAddress, b.header.destinationPort]).toEqual(['IPv6', '2001:db8::1', 65535]);
    expect(b.rest.length).toBe(0);
  });

  it('takes UNKNOWN as "use the connection\'s own addresses", whatever follows it on the line', () => {
    expect(parseAll(Buffer.from('PROXY UNKNOWN\r\n')).header.proxied).toBe(false);
    expect(parseAll(Buffer.from('PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n')).header.proxied).toBe(false);
  });

  it('assembles a header split at every byte', () => {
    const whole = Buffer.from('PROXY TCP4 10.1.2.3 10.0.0.1 4000 80\r\nxyz');
    const p = new ProxyHeaderParser();
    let got = null;
    for (let i = 0; i < whole.length && !got; i++) got = p.push(whole.subarray(i, i + 1));
    expect(got?.header.sourceAddress).toBe('10.1.2.3');
    expect(got?.rest.length).toBe(0); // the split came right after the CRLF; "xyz" is the next chunk
  });

  it.each([
    ['a plain HTTP request', 'GET / HTTP/1.1\r\n'],
    ['a wrong keyword', 'PROXI TCP4 1.2.3.4 1.2.3.4 1 2\r\n'],
    ['an unknown protocol', 'PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n'],
    ['a missing field', 'PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n'],
    ['an extra field', 'PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n'],
    ['an IPv6 address under TCP4', 'PROXY TCP4 ::1 1.2.3.4 1 2\r\n'],
    ['a bad address', 'PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n'],
    ['a port past 65535', 'PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n'],
    ['a port with a leading zero', 'PROXY TCP4 1.2.3.4 1.2.3.4 080 2\r\n'],
    ['a negative port', 'PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n'],
    ['two spaces', 'PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n'],
    ['a bare LF', 'PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n'],
    ['a bare CR inside', 'PROXY TCP4 1.2.3.4\r1.2.3.4 1 2'],
  ])('refuses %s', (_, text) => {
    expect(refusal(text)).toBe('STRATUM_ERR_PROXY_PROTOCOL');
  });

  it('refuses a line past 107 bytes without waiting for its end, and waits for a shorter one', () => {
    expect(refusal(`PROXY UNKNOWN ${'x'.repeat(V1_MAX)}`)).toBe('STRATUM_ERR_PROXY_PROTOCOL');
    // "PROXY UNKNOWN " is 14 bytes: 14 + 91 + CRLF is the longest line allowed.
    expect(refusal(`PROXY UNKNOWN ${'x'.repeat(V1_MAX - 14 - 2 + 1)}\r\n`)).toBe('STRATUM_ERR_PROXY_PROTOCOL');
    expect(refusal(`PROXY UNKNOWN ${'x'.repeat(V1_MAX - 14 - 2)}`)).toBe('incomplete');
    expect(refusal(`PROXY UNKNOWN ${'x'.repeat(V1_MAX - 14 - 2)}\r\n`)).toBe('accepted');
  });
});

describe('PROXY protocol v2', () => {
  it('reads an IPv4 PROXY header and the bytes after it', () => {
    const h = v2(1, 0x11, inet4([203, 0, 113, 7], [10, 0, 0, 1], 40000, 8080));
    const got = parseAll(Buffer.concat([h, Buffer.from('GET /')]));
    expect(got.header).toEqual({
      version: 2,
      proxied: true,
      family: 'IPv4',
      sourceAddress: '203.0.113.7',
      sourcePort: 40000,
      destinationAddress: '10.0.0.1',
      destinationPort: 8080,
      ssl: false,
    });
    expect(got.rest.toString()).toBe('GET /');
  });

  it('reads IPv6 addresses as Node writes them (zeros compressed, IPv4-mapped dotted)', () => {
    const addrs = Buffer.alloc(36);
    Buffer.from('20010db8000000000000000000000001', 'hex').copy(addrs, 0);
    Buffer.from('00000000000000000000ffffc0000201', 'hex').copy(addrs, 16);
    addrs.writeUInt16BE(1234, 32);
    addrs.writeUInt16BE(443, 34);
    const got = parseAll(v2(1, 0x21, addrs)).header;
    expect([got.family, got.sourceAddress, got.destinationAddress]).toEqual([
      'IPv6',
      '2001:db8::1',
      '::ffff:192.0.2.1',
    ]);
    expect([got.sourcePort, got.destinationPort]).toEqual([1234, 443]);
    const full = Buffer.alloc(36, 0x11);
    expect(parseAll(v2(1, 0x21, full)).header.sourceAddress).toBe('1111:1111:1111:1111:1111:1111:1111:1111');
    const zeros = Buffer.alloc(36);
    expect(parseAll(v2(1, 0x21, zeros)).header.sourceAddress).toBe('::');
  });

  it('reads Unix addresses up to their NUL', () => {
    const addrs = Buffer.alloc(216);
    addrs.write('/run/lb.sock', 0);
    addrs.write('/run/app.sock', 108);
    const got = parseAll(v2(1, 0x31, addrs)).header;
    expect([got.family, got.sourceAddress, got.destinationAddress]).toEqual(['unix', '/run/lb.sock', '/run/app.sock']);
  });

  it('takes LOCAL (a balancer health check) and AF_UNSPEC as the connection speaking for itself', () => {
    expect(parseAll(v2(0, 0x00, Buffer.alloc(0))).header.proxied).toBe(false);
    // LOCAL with addresses: they are ignored, as the spec says.
    expect(parseAll(v2(0, 0x11, inet4([1, 2, 3, 4], [5, 6, 7, 8], 1, 2))).header.proxied).toBe(false);
    expect(parseAll(v2(1, 0x00, Buffer.alloc(0))).header.proxied).toBe(false);
  });

  it('skips TLVs, noting PP2_TYPE_SSL with the client bit (TLS ended at the balancer)', () => {
    const addrs = inet4([198, 51, 100, 9], [10, 0, 0, 1], 5, 443);
    const alpn = tlv(0x01, Buffer.from('h2'));
    const aws = tlv(0xea, Buffer.from('\x01vpce-0123456789abcdef'));
    const plain = parseAll(Buffer.concat([v2(1, 0x11, addrs, Buffer.concat([alpn, aws])), Buffer.from('X')]));
    expect([plain.header.sourceAddress, plain.header.ssl, plain.rest.toString()]).toEqual(['198.51.100.9', false, 'X']);
    const ssl = tlv(0x20, Buffer.concat([Buffer.from([0x01, 0, 0, 0, 0]), tlv(0x21, Buffer.from('TLSv1.3'))]));
    expect(parseAll(v2(1, 0x11, addrs, Buffer.concat([alpn, ssl]))).header.ssl).toBe(true);
    const noClient = tlv(0x20, Buffer.from([0x00, 0, 0, 0, 0]));
    expect(parseAll(v2(1, 0x11, addrs, noClient)).header.ssl).toBe(false);
  });

  it('assembles a header split at every byte', () => {
    const whole = v2(1, 0x11, inet4([1, 2, 3, 4], [5, 6, 7, 8], 9, 10), tlv(0x04, Buffer.alloc(50)));
    const p = new ProxyHeaderParser();
    let got = null;
    let at = 0;
    for (; at < whole.length && !got; at++) got = p.push(whole.subarray(at, at + 1));
    expect(at).toBe(whole.length);
    expect(got?.header.sourceAddress).toBe('1.2.3.4');
  });

  it.each([
    ['a wrong signature', Buffer.concat([SIG.subarray(0, 11), Buffer.from([0x0b])])],
    ['version 1 in the binary form', Buffer.concat([SIG, Buffer.from([0x11, 0x11, 0, 0])])],
    ['version 3', Buffer.concat([SIG, Buffer.from([0x31, 0x11, 0, 0])])],
    ['command 2', Buffer.concat([SIG, Buffer.from([0x22, 0x11, 0, 0])])],
    ['family 4', v2(1, 0x41, Buffer.alloc(12))],
    ['transport 3', v2(1, 0x13, Buffer.alloc(12))],
    ['an IPv4 block too short', v2(1, 0x11, Buffer.alloc(11))],
    ['an IPv6 block too short', v2(1, 0x21, Buffer.alloc(35))],
    ['a Unix block too short', v2(1, 0x31, Buffer.alloc(215))],
    [
      'a TLV running past the header',
      v2(1, 0x11, inet4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2), Buffer.from([0x01, 0, 9, 0])),
    ],
    ['a TLV cut inside its own head', v2(1, 0x11, inet4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2), Buffer.from([0x01, 0]))],
  ])('refuses %s', (_, bytes) => {
    expect(refusal(bytes)).toBe('STRATUM_ERR_PROXY_PROTOCOL');
  });

  it('refuses an oversized header from its length field, before the bytes arrive', () => {
    const head = Buffer.concat([SIG, Buffer.from([0x21, 0x11, 0xff, 0xff])]);
    expect(refusal(head)).toBe('STRATUM_ERR_PROXY_PROTOCOL');
    const atLimit = v2(1, 0x11, Buffer.alloc(V2_MAX - 16));
    expect(refusal(atLimit)).toBe('accepted');
    expect(refusal(v2(1, 0x11, Buffer.alloc(V2_MAX - 15)))).toBe('STRATUM_ERR_PROXY_PROTOCOL');
  });

  it('waits on a partial signature and refuses at the first wrong byte', () => {
    expect(refusal(SIG.subarray(0, 5))).toBe('incomplete');
    expect(refusal(Buffer.from('\r\n\r\nX'))).toBe('STRATUM_ERR_PROXY_PROTOCOL');
    expect(refusal(Buffer.from('PRO'))).toBe('incomplete');
    expect(refusal(Buffer.from('PRX'))).toBe('STRATUM_ERR_PROXY_PROTOCOL');
  });
});

// --- on real sockets ---------------------------------------------------------------------------

const open: Array<{ close(): void }> = [];
afterEach(() => {
  for (const o of open.splice(0)) o.close();
});

/** A pino logger whose lines land in `lines`. */
function captureLog(): { log: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: 'info' },
    { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) },
  );
  return { log, lines };
}

async function frontWithProxyProtocol(timeoutMs = 2000) {
  const { log, lines } = captureLog();
  const server = http.createServer((req, res) => {
    const h = proxyHeaderOf(req.socket);
    res.end(`${h?.sourceAddress ?? 'none'}:${h?.sourcePort ?? 0} ${req.method} ${req.url}`);
  });
  requireProxyProtocol(server, { timeoutMs, log });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  open.push({ close: () => server.close() });
  return { port: (server.address() as net.AddressInfo).port, lines, server };
}

/** Writes `parts` with a pause between, half-closes, and resolves with all it got back. */
function exchange(port: number, parts: Array<string | Buffer>, gapMs = 15): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1');
    let out = '';
    c.setEncoding('latin1');
    c.on('data', (d: string) => (out += d));
    c.once('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' ? resolve(out) : reject(e)));
    c.once('close', () => resolve(out));
    c.setTimeout(5000, () => c.destroy(new Error('no close within 5 s')));
    let i = 0;
    const next = () => {
      if (i === parts.length) return void setTimeout(() => c.end(), 100);
      c.write(parts[i++]!);
      setTimeout(next, gapMs);
    };
    c.once('connect', next);
  });
}

describe('requireProxyProtocol on an HTTP server', () => {
  it('hands HTTP the bytes after the header, in one segment or split mid-header and mid-request', async () => {
    const { port } = await frontWithProxyProtocol();
    const two = 'GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n';
    const whole = await exchange(port, [`PROXY TCP4 192.0.2.1 10.0.0.1 5000 80\r\n${two}`]);
    expect(whole.match(/192\.0\.2\.1:5000 GET \/[ab]/g)).toEqual(['192.0.2.1:5000 GET /a', '192.0.2.1:5000 GET /b']);
    const split = await exchange(port, [
      'PROXY TCP4 192.0',
      '.2.1 10.0.0.1 5000 80\r\nGET /a HT',
      'TP/1.1\r\nHost: x\r\n\r\n',
    ]);
    expect(split).toContain('192.0.2.1:5000 GET /a');
    const binary = v2(1, 0x11, inet4([198, 51, 100, 2], [10, 0, 0, 1], 6000, 80));
    const v2got = await exchange(port, [Buffer.concat([binary, Buffer.from('GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n')])]);
    expect(v2got).toContain('198.51.100.2:6000 GET /v2');
  });

  it('closes a connection without a header, never answering it, and logs once per burst', async () => {
    const { port, lines } = await frontWithProxyProtocol();
    for (let i = 0; i < 5; i++) expect(await exchange(port, ['GET / HTTP/1.1\r\nHost: x\r\n\r\n'])).toBe('');
    expect(await exchange(port, ['PROXY TCP4 1.2.3.4 1.2.3.4 99999 1\r\nGET / HTTP/1.1\r\n\r\n'])).toBe('');
    const warned = lines.filter((l) => l.code === 'STRATUM_ERR_PROXY_PROTOCOL');
    expect(warned).toHaveLength(1);
    expect(warned[0]!.remote).toBe('127.0.0.1');
    // The server still serves a good connection after the bad ones.
    expect(await exchange(port, ['PROXY UNKNOWN\r\nGET /ok HTTP/1.1\r\nHost: x\r\n\r\n'])).toContain('none:0 GET /ok');
  });

  it('closes a connection whose header does not complete in time, or that ends inside it', async () => {
    const { port } = await frontWithProxyProtocol(200);
    const c = net.connect(port, '127.0.0.1');
    c.write('PROXY TCP4 1.2.3.4');
    const closed = await new Promise<boolean>((resolve) => {
      c.once('close', () => resolve(true));
      c.on('error', () => {});
      setTimeout(() => resolve(false), 3000);
    });
    expect(closed, 'closed after the header timeout').toBe(true);
    expect(await exchange(port, ['PROXY TCP4 1.2.3.4'])).toBe('');
  });
});

describe('readProxyHeader', () => {
  it('rejects with a coded error when the socket ends first, leaves the rest readable when it completes', async () => {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    open.push({ close: () => server.close() });
    const port = (server.address() as net.AddressInfo).port;
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    const c = net.connect(port, '127.0.0.1');
    c.write('PROXY TCP6 ::1 ::2 10 20\r\nhello');
    const s = await accepted;
    const h = await readProxyHeader(s, 1000);
    expect(h.sourceAddress).toBe('::1');
    s.resume();
    const rest = await new Promise<string>((r) => s.once('data', (d: Buffer) => r(d.toString())));
    expect(rest).toBe('hello');
    c.destroy();

    const second = new Promise<net.Socket>((r) => server.once('connection', r));
    const c2 = net.connect(port, '127.0.0.1');
    c2.end('PROXY TC');
    const err = await readProxyHeader(await second, 1000).catch((e: unknown) => e);
    expect((err as StratumError).code).toBe('STRATUM_ERR_PROXY_PROTOCOL');
  });
});
