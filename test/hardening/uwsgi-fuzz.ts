// Generated uwsgi traffic, well-formed and hostile, and the driver that plays it against a
// running worker pool over raw Unix-socket connections. Shared by test/hardening/uwsgi.test.ts
// (bounded, in CI) and scripts/fuzz-uwsgi.ts (the long run).
//
// A *session* is one connection. It carries either one packet (plain uwsgi, as nginx sends it:
// one request, then the connection closes), or a chain of well-formed keep-alive packets
// (STRATUM_KEEPALIVE=1, as our proxy sends them) each answered before the next goes, optionally
// ended by a hostile packet. Every packet says what the worker must do with it:
//   ok       answer 200 with the echo of exactly the body sent (nothing lost, nothing added)
//   refused  answer 400 or close the connection — never anything else
//   any      anything but a 5xx, a hang or a dead worker (a mutation may happen to be valid)
import net from 'node:net';
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { ResponseParser, type ResponseHead } from '../../src/uwsgi/response.ts';

export type Expect = 'ok' | 'refused' | 'any';

export interface FuzzPacket {
  kind: string;
  bytes: Buffer;
  expect: Expect;
  /** For `ok`: the body the echo must report. */
  bodyLength?: number;
  bodySha256?: string;
}

export interface Session {
  /** Keep-alive chain (each answered before the next is sent) or a single plain packet. */
  keepAlive: boolean;
  packets: FuzzPacket[];
}

// --- encoding --------------------------------------------------------------------------------

/** Encode vars (latin1 strings: one char = one byte) into a uwsgi packet head, plus a body. */
export function packet(vars: string[], body: Buffer = Buffer.alloc(0), modifier1 = 0, sizeOverride?: number): Buffer {
  const parts: Buffer[] = [];
  for (const s of vars) {
    const b = Buffer.from(s, 'latin1');
    const len = Buffer.alloc(2);
    len.writeUInt16LE(Math.min(b.length, 0xffff));
    parts.push(len, b);
  }
  const block = Buffer.concat(parts);
  const head = Buffer.alloc(4);
  head[0] = modifier1;
  head.writeUInt16LE(sizeOverride ?? Math.min(block.length, 0xffff), 1);
  head[3] = 0;
  return Buffer.concat([head, block, body]);
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

// --- generators ------------------------------------------------------------------------------

/** Bytes as a latin1 string, any byte value allowed except those listed. */
function bytesString(maxLength: number, forbid: number[] = []): fc.Arbitrary<string> {
  return fc.uint8Array({ maxLength }).map((a) => Buffer.from(a.filter((x) => !forbid.includes(x))).toString('latin1'));
}

/** Bytes a header value may hold in HTTP: tab, visible ASCII, space, obs-text (0x80-0xff). */
const FIELD_BYTES = [0x09, ...Array.from({ length: 0x7f - 0x20 }, (_, i) => 0x20 + i), ...Array.from({ length: 0x80 }, (_, i) => 0x80 + i)];
/** Header values: printable text, or raw bytes — invalid UTF-8 included — that HTTP allows. */
const headerValue = fc.oneof(
  fc.string({ unit: 'grapheme-ascii', maxLength: 40 }),
  fc.array(fc.constantFrom(...FIELD_BYTES), { maxLength: 60 }).map((a) => Buffer.from(a).toString('latin1')),
);
const headerName = fc.stringMatching(/^[A-Z][A-Z0-9]{0,10}(_[A-Z0-9]{1,6}){0,2}$/).map((n) => `HTTP_X_${n}`);
const queryString = fc.stringMatching(/^[a-z0-9=&%]{0,30}$/);

interface Valid {
  method: string;
  path: string;
  query: string;
  headers: [string, string][];
  body: Buffer;
}

const validRequest: fc.Arbitrary<Valid> = fc.record({
  method: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'),
  path: fc.constantFrom('/echo', '/echo/a', '/echo/caf%C3%A9', '/echo/x%20y'),
  query: queryString,
  headers: fc.array(fc.tuple(headerName, headerValue), { maxLength: 10 }),
  body: fc.oneof(
    { weight: 3, arbitrary: fc.constant(Buffer.alloc(0)) },
    { weight: 3, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 512 }).map((a) => Buffer.from(a)) },
    { weight: 1, arbitrary: fc.integer({ min: 513, max: 20_000 }).map((n) => Buffer.alloc(n, n & 0xff)) },
  ),
});

function pathInfo(path: string): string {
  try {
    return Buffer.from(decodeURIComponent(path), 'utf8').toString('latin1');
  } catch {
    return path;
  }
}

function validVars(v: Valid, keepAlive: boolean): string[] {
  const vars = [
    'REQUEST_METHOD', v.method,
    'REQUEST_URI', v.query ? `${v.path}?${v.query}` : v.path,
    'PATH_INFO', pathInfo(v.path),
    'QUERY_STRING', v.query,
    'SERVER_PROTOCOL', 'HTTP/1.1',
    'SERVER_NAME', 'fuzz.test',
    'SERVER_PORT', '80',
    'REMOTE_ADDR', '127.0.0.1',
    'REMOTE_PORT', '4242',
    'HTTP_HOST', 'fuzz.test',
  ];
  if (v.body.length > 0) vars.push('CONTENT_LENGTH', String(v.body.length), 'CONTENT_TYPE', 'application/octet-stream');
  for (const [k, val] of v.headers) vars.push(k, val);
  if (keepAlive) vars.push('STRATUM_KEEPALIVE', '1');
  return vars;
}

function okPacket(v: Valid, keepAlive: boolean, kind = 'valid'): FuzzPacket {
  return { kind, bytes: packet(validVars(v, keepAlive), v.body), expect: 'ok', bodyLength: v.body.length, bodySha256: sha256(v.body) };
}

/** Encoded vars block of a valid request, for mutations that work on raw bytes. */
function block(v: Valid): Buffer {
  return packet(validVars(v, false)).subarray(4);
}

function head(size: number, modifier1 = 0): Buffer {
  const h = Buffer.alloc(4);
  h[0] = modifier1;
  h.writeUInt16LE(size, 1);
  return h;
}

const u16 = (n: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
};

/** Hostile packets, each with what the worker must do about it. */
const hostile: fc.Arbitrary<FuzzPacket> = fc.oneof(
  // datasize says more than the vars block holds, and the connection ends: truncated vars.
  fc.tuple(validRequest, fc.integer({ min: 1, max: 4000 })).map(([v, extra]): FuzzPacket => {
    const b = block(v);
    return { kind: 'size-past-end', bytes: Buffer.concat([head(Math.min(0xffff, b.length + extra)), b]), expect: 'refused' };
  }),
  // datasize says less: the block is cut somewhere inside; what follows is read as body or garbage.
  fc.tuple(validRequest, fc.integer({ min: 1, max: 200 })).map(([v, less]): FuzzPacket => {
    const b = block(v);
    return { kind: 'size-short', bytes: Buffer.concat([head(Math.max(1, b.length - less)), b]), expect: 'any' };
  }),
  // The connection ends inside the 4-byte header or the vars block.
  fc.tuple(validRequest, fc.double({ min: 0, max: 0.999, noNaN: true })).map(([v, at]): FuzzPacket => {
    const p = packet(validVars(v, false));
    return { kind: 'truncated', bytes: p.subarray(0, Math.floor(p.length * at)), expect: 'refused' };
  }),
  // A key or value length that runs past the end of the block.
  fc.tuple(validRequest, fc.boolean(), fc.integer({ min: 1, max: 0xffff })).map(([v, isKey, len]): FuzzPacket => {
    const b = block(v);
    const tail = isKey ? u16(len) : Buffer.concat([u16(4), Buffer.from('HTTP'), u16(len)]);
    const whole = Buffer.concat([b, tail]); // nothing follows the length: any len > 0 runs past the end
    return { kind: isKey ? 'key-past-end' : 'value-past-end', bytes: Buffer.concat([head(whole.length), whole]), expect: 'refused' };
  }),
  // A zero-length key somewhere in the block.
  fc.tuple(validRequest, headerValue).map(([v, val]): FuzzPacket => {
    const b = Buffer.concat([block(v), u16(0), u16(val.length), Buffer.from(val, 'latin1')]);
    return { kind: 'zero-length-key', bytes: Buffer.concat([head(b.length), b]), expect: 'refused' };
  }),
  // An empty vars block, a modifier1 we do not serve.
  fc.constant<FuzzPacket>({ kind: 'empty-vars', bytes: head(0), expect: 'refused' }),
  fc.tuple(validRequest, fc.integer({ min: 1, max: 255 })).map(([v, m1]): FuzzPacket => ({
    kind: 'bad-modifier', bytes: packet(validVars(v, false), Buffer.alloc(0), m1), expect: 'refused',
  })),
  // A vars block over the pool's bufferSize (the fuzz pool runs with 8 KiB).
  fc.tuple(validRequest, fc.integer({ min: 8300, max: 60_000 })).map(([v, n]): FuzzPacket => ({
    kind: 'vars-too-large', bytes: packet([...validVars(v, false), 'HTTP_X_BIG', 'x'.repeat(n)]), expect: 'refused',
  })),
  // CONTENT_LENGTH that is no length at all.
  fc.tuple(validRequest, fc.constantFrom('-1', 'abc', '1e3', ' 12', '0x10', '9999999999999999', '1.5', '+5', '١٢')).map(([v, cl]): FuzzPacket => ({
    kind: 'bad-content-length', bytes: packet([...validVars({ ...v, body: Buffer.alloc(0) }, false), 'CONTENT_LENGTH', cl]), expect: 'refused',
  })),
  // A huge CONTENT_LENGTH, or an honest one, with fewer body bytes than announced: the app gets
  // a truncated body, the connection closes, nothing answers 200.
  fc.tuple(validRequest, fc.oneof(fc.integer({ min: 1, max: 100_000 }), fc.constantFrom(2 ** 31, 2 ** 40, 999_999_999_999_999)), fc.nat({ max: 64 })).map(([v, announced, sent]): FuzzPacket => ({
    kind: announced > 100_000 ? 'huge-content-length' : 'short-body',
    bytes: packet([...validVars({ ...v, body: Buffer.alloc(0) }, false), 'CONTENT_LENGTH', String(announced)], Buffer.alloc(Math.min(sent, announced - 1), 0x61)),
    expect: 'refused',
  })),
  // CR, LF or NUL in a header value, SERVER_NAME (with no Host) or the method: never a new header line.
  fc.tuple(validRequest, fc.constantFrom('\r\n', '\n', '\r', '\0', '\r\nX-Injected: 1'), fc.constantFrom('header', 'server-name', 'method')).map(([v, bad, where]): FuzzPacket => {
    const base = validVars(v, false);
    const vars: string[] = [];
    for (let i = 0; i < base.length; i += 2) {
      const [k, val] = [base[i]!, base[i + 1]!];
      if (where === 'server-name' && (k === 'HTTP_HOST' || k === 'SERVER_NAME')) continue; // the Host line comes from SERVER_NAME
      vars.push(k, where === 'method' && k === 'REQUEST_METHOD' ? `GET${bad}` : val);
    }
    if (where === 'header') vars.push('HTTP_X_EVIL', `a${bad}b`);
    if (where === 'server-name') vars.push('SERVER_NAME', `h${bad}x`);
    return { kind: `crlf-in-${where}`, bytes: packet(vars), expect: 'refused' };
  }),
  // Control bytes HTTP does not allow in a field value (the worker's HTTP parser refuses them).
  fc.tuple(validRequest, fc.integer({ min: 1, max: 0x1f }).filter((b) => b !== 9 && b !== 10 && b !== 13), fc.constantFrom(0x7f, -1)).map(([v, ctl, del]): FuzzPacket => ({
    kind: 'control-byte-in-value',
    bytes: packet([...validVars(v, false), 'HTTP_X_CTL', `a${String.fromCharCode(del > 0 ? del : ctl)}b`]),
    expect: 'refused',
  })),
  // Header var names that are not upper-case tokens.
  fc.tuple(validRequest, fc.constantFrom('HTTP_x-lower', 'HTTP_A B', 'HTTP_A:B', 'HTTP_\u00e9', 'HTTP_A\r\nB')).map(([v, name]): FuzzPacket => ({
    kind: 'bad-header-name', bytes: packet([...validVars(v, false), name, 'v']), expect: 'refused',
  })),
  // A request target with raw high bytes (invalid UTF-8): Node's parser decides; no crash either way.
  fc.tuple(validRequest, bytesString(30)).map(([v, junk]): FuzzPacket => ({
    kind: 'raw-bytes-in-uri', bytes: packet(validVars({ ...v, path: `/echo/${junk}`, query: '' }, false)), expect: 'any',
  })),
  // Random bit flips in a valid packet.
  fc.tuple(validRequest, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 6 })).map(([v, flips]): FuzzPacket => {
    const p = Buffer.from(okPacket(v, false).bytes);
    for (const [at, x] of flips) p[at % p.length]! ^= x;
    return { kind: 'bit-flip', bytes: p, expect: 'any' };
  }),
  // Plain random bytes, often starting like a packet.
  fc.tuple(fc.boolean(), fc.uint8Array({ minLength: 1, maxLength: 300 })).map(([zero, a]): FuzzPacket => {
    const b = Buffer.from(a);
    if (zero) b[0] = 0;
    return { kind: 'random-bytes', bytes: b, expect: 'any' };
  }),
);

/** Any single packet, well-formed (plain or keep-alive) or hostile. */
export const packetArb: fc.Arbitrary<FuzzPacket> = fc.oneof(
  { weight: 3, arbitrary: hostile },
  { weight: 1, arbitrary: fc.tuple(validRequest, fc.boolean()).map(([v, ka]) => okPacket(v, ka)) },
);

/** One connection: a plain packet (good or hostile), or a keep-alive chain with a hostile end. */
export const sessionArb: fc.Arbitrary<Session> = fc.oneof(
  { weight: 6, arbitrary: hostile.map((p): Session => ({ keepAlive: false, packets: [p] })) },
  { weight: 2, arbitrary: validRequest.map((v): Session => ({ keepAlive: false, packets: [okPacket(v, false)] })) },
  // A plain (nginx-style) request followed by garbage: one request per connection, the rest ignored.
  {
    weight: 1,
    arbitrary: fc.tuple(validRequest, fc.uint8Array({ minLength: 1, maxLength: 200 })).map(([v, junk]): Session => {
      const p = okPacket(v, false, 'valid+trailing-garbage');
      return { keepAlive: false, packets: [{ ...p, bytes: Buffer.concat([p.bytes, Buffer.from(junk)]) }] };
    }),
  },
  {
    weight: 3,
    arbitrary: fc.tuple(fc.array(validRequest, { minLength: 1, maxLength: 12 }), fc.option(hostile, { freq: 2 })).map(([vs, bad]): Session => ({
      keepAlive: true,
      packets: [...vs.map((v) => okPacket(v, true, 'valid-keepalive')), ...(bad ? [bad] : [])],
    })),
  },
);

/** Packets a session carries. */
export const packetCount = (sessions: Session[]) => sessions.reduce((n, s) => n + s.packets.length, 0);

// --- the driver --------------------------------------------------------------------------------

export interface Outcome {
  session: Session;
  /** Index of the packet that failed, with why. */
  failure: { index: number; why: string } | null;
}

export interface Tally {
  sessions: number;
  packets: number;
  byKind: Record<string, { n: number; answered: Record<string, number> }>;
  failures: Array<{ kind: string; why: string; hex: string }>;
}

export function newTally(): Tally {
  return { sessions: 0, packets: 0, byKind: {}, failures: [] };
}

function note(t: Tally, kind: string, answer: string): void {
  const k = (t.byKind[kind] ??= { n: 0, answered: {} });
  k.n++;
  k.answered[answer] = (k.answered[answer] ?? 0) + 1;
}

export interface Reply {
  status: number | null;
  /** [name, value, …] as received. */
  rawHeaders: string[];
  body: Buffer;
  closed: boolean;
}

/**
 * Reads one HTTP response (or the connection's end) from `socket`. Resolves with status null
 * when the connection closed with no response byte.
 */
export class ReplyReader {
  #socket: net.Socket;
  #buffered: Buffer[] = [];
  #waiter: (() => void) | null = null;
  #ended = false;
  #error: string | null = null;

  constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on('data', (c: Buffer) => {
      this.#buffered.push(c);
      this.#wake();
    });
    socket.on('end', () => {
      this.#ended = true;
      this.#wake();
    });
    socket.on('close', () => {
      this.#ended = true;
      this.#wake();
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      this.#error = e.code ?? e.message;
      this.#ended = true;
      this.#wake();
    });
  }

  get error(): string | null {
    return this.#error;
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  /** The next response (or the connection's end) before `deadline` (Date.now() ms). */
  async read(deadline: number, isHead = false): Promise<Reply> {
    let head: ResponseHead | null = null;
    const body: Buffer[] = [];
    let done = false;
    const parser = new ResponseParser({ onHead: (h) => (head = h), onBody: (c) => body.push(Buffer.from(c)), onComplete: () => (done = true) }, { isHead, maxHeaderSize: 1 << 20 });
    let got = false;
    for (;;) {
      while (this.#buffered.length > 0 && !done) {
        const chunk = this.#buffered.shift()!;
        got = true;
        let rest: number;
        try {
          rest = parser.execute(chunk);
        } catch (e) {
          throw new Error(`malformed response: ${(e as Error).message}`);
        }
        if (rest >= 0 && rest < chunk.length) this.#buffered.unshift(chunk.subarray(rest));
      }
      const h = head as ResponseHead | null;
      if (done) return { status: h?.statusCode ?? null, rawHeaders: h?.rawHeaders ?? [], body: Buffer.concat(body), closed: false };
      if (this.#ended) {
        if (!got) return { status: null, rawHeaders: [], body: Buffer.alloc(0), closed: true };
        try {
          parser.finish();
        } catch (e) {
          throw new Error(`response cut short: ${(e as Error).message}`);
        }
        return { status: h?.statusCode ?? null, rawHeaders: h?.rawHeaders ?? [], body: Buffer.concat(body), closed: true };
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no answer in time (hang)');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }
}

function checkOk(p: FuzzPacket, r: Reply): string | null {
  if (r.status !== 200) return `expected 200, got ${r.status ?? 'a closed connection'} ${r.body.subarray(0, 120).toString('latin1')}`;
  let doc: { bodyLength?: number; bodySha256?: string };
  try {
    doc = JSON.parse(r.body.toString('utf8')) as typeof doc;
  } catch {
    return `expected the echo document, got ${JSON.stringify(r.body.subarray(0, 120).toString('latin1'))}`;
  }
  if (doc.bodyLength !== p.bodyLength || doc.bodySha256 !== p.bodySha256) return `body lost or altered: sent ${p.bodyLength} bytes, app saw ${doc.bodyLength}`;
  return null;
}

function checkReply(p: FuzzPacket, r: Reply): string | null {
  if (p.expect === 'ok') return checkOk(p, r);
  if (p.expect === 'refused') {
    if (r.status === null || r.status === 400) return null;
    return `expected 400 or a closed connection, got ${r.status} ${r.body.subarray(0, 120).toString('latin1')}`;
  }
  if (r.status !== null && r.status >= 500) return `a hostile packet got ${r.status}`;
  return null;
}

/** Play one session on a fresh connection to `path`. */
export async function playSession(path: string, s: Session, timeoutMs = 10_000): Promise<Outcome & { answers: string[] }> {
  const deadline = Date.now() + timeoutMs;
  const socket = net.connect({ path });
  const reader = new ReplyReader(socket);
  const answers: string[] = [];
  await new Promise<void>((resolve) => {
    socket.once('connect', resolve);
    socket.once('error', () => resolve());
  });
  try {
    if (reader.error) return { session: s, failure: { index: 0, why: `connect: ${reader.error}` }, answers };
    for (let i = 0; i < s.packets.length; i++) {
      const p = s.packets[i]!;
      const last = i === s.packets.length - 1;
      // A plain session, or the last packet of a chain: half-close so a truncation is a truncation.
      if (last && (!s.keepAlive || p.expect !== 'ok')) socket.end(p.bytes);
      else socket.write(p.bytes);
      let r: Reply;
      try {
        r = await reader.read(deadline);
      } catch (e) {
        return { session: s, failure: { index: i, why: (e as Error).message }, answers };
      }
      answers.push(r.status === null ? 'closed' : String(r.status));
      const why = checkReply(p, r);
      if (why) return { session: s, failure: { index: i, why }, answers };
      if (r.closed && !last) return { session: s, failure: { index: i, why: 'connection closed inside a keep-alive chain' }, answers };
    }
    return { session: s, failure: null, answers };
  } finally {
    socket.destroy();
  }
}

/** Play sessions with `concurrency` connections at a time; tally what happened. */
export async function playAll(path: string, sessions: Session[], concurrency: number, tally: Tally): Promise<Outcome[]> {
  const failed: Outcome[] = [];
  let next = 0;
  const lane = async () => {
    while (next < sessions.length) {
      const s = sessions[next++]!;
      const o = await playSession(path, s);
      tally.sessions++;
      tally.packets += s.packets.length;
      s.packets.forEach((p, i) => note(tally, p.kind, o.answers[i] ?? (o.failure && i >= o.failure.index ? 'failed' : 'unsent')));
      if (o.failure) {
        failed.push(o);
        const p = s.packets[o.failure.index]!;
        if (tally.failures.length < 20) tally.failures.push({ kind: p.kind, why: o.failure.why, hex: p.bytes.subarray(0, 256).toString('hex') });
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, lane));
  return failed;
}

/**
 * The concurrent well-formed client: one valid request after another (plain and keep-alive in
 * turn) until `stop()`; every answer must be the right 200.
 */
export function steadyClient(path: string): { stop(): Promise<{ sent: number; failures: string[]; maxMs: number }> } {
  let running = true;
  const failures: string[] = [];
  let sent = 0;
  let maxMs = 0;
  const samples = fc.sample(validRequest, { numRuns: 64, seed: 7 });
  const loop = (async () => {
    while (running) {
      const v = samples[sent % samples.length]!;
      const keepAlive = sent % 2 === 1;
      const s: Session = { keepAlive, packets: keepAlive ? [okPacket(v, true), okPacket(v, true)] : [okPacket(v, false)] };
      const t0 = performance.now();
      const o = await playSession(path, s, 10_000);
      maxMs = Math.max(maxMs, performance.now() - t0);
      sent += s.packets.length;
      if (o.failure && failures.length < 20) failures.push(o.failure.why);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { sent, failures, maxMs };
    },
  };
}

export function formatTally(t: Tally): string {
  const lines = [`${t.packets} packets in ${t.sessions} connections`];
  for (const [kind, k] of Object.entries(t.byKind).sort((a, b) => b[1].n - a[1].n)) {
    const answered = Object.entries(k.answered).sort((a, b) => b[1] - a[1]).map(([a, n]) => `${a}:${n}`).join(' ');
    lines.push(`  ${kind.padEnd(24)} ${String(k.n).padStart(8)}  ${answered}`);
  }
  return lines.join('\n');
}
