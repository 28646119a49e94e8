import { describe, expect, it } from 'vitest';
import { decodeVars, encodePacket, getVar, HEADER_SIZE, PacketHeadDecoder, varsSize, type UwsgiVars } from './codec.ts';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

/** Build a packet by hand (header + raw vars block bytes), bypassing encodePacket's checks. */
function rawPacket(block: Buffer, modifier1 = 0, datasize = block.length): Buffer {
  const head = Buffer.from([modifier1, datasize & 0xff, datasize >> 8, 0]);
  return Buffer.concat([head, block]);
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
}

/** Deterministic PRNG so a failing split is reproducible. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 0x100000000;
  };
}

const SAMPLE: UwsgiVars = [
  'REQUEST_METHOD', 'POST',
  'REQUEST_URI', '/dump/caf%C3%A9?x=1',
  'PATH_INFO', Buffer.from('/dump/café', 'utf8').toString('latin1'),
  'QUERY_STRING', 'x=1',
  'SERVER_NAME', '',
  'HTTP_X_MULTI', 'one',
  'HTTP_X_MULTI', 'two',
  'CONTENT_LENGTH', '5',
];

describe('encodePacket / decodeVars', () => {
  it('round-trips a var list with the header fields set', () => {
    const pkt = encodePacket(SAMPLE);
    expect(pkt[0]).toBe(0);
    expect(pkt.readUInt16LE(1)).toBe(pkt.length - HEADER_SIZE);
    expect(pkt[3]).toBe(0);
    expect(varsSize(SAMPLE)).toBe(pkt.length - HEADER_SIZE);
    expect(decodeVars(pkt, HEADER_SIZE)).toEqual(SAMPLE);
  });

  it('keeps empty values as empty strings', () => {
    const vars = ['SERVER_NAME', '', 'QUERY_STRING', '', 'A', 'b'];
    expect(decodeVars(encodePacket(vars), HEADER_SIZE)).toEqual(vars);
  });

  it('keeps repeated keys, in order', () => {
    const vars = ['HTTP_COOKIE', 'a=1', 'HTTP_X', 'x', 'HTTP_COOKIE', 'b=2', 'HTTP_COOKIE', 'c=3'];
    const back = decodeVars(encodePacket(vars), HEADER_SIZE);
    expect(back).toEqual(vars);
    expect(getVar(back, 'HTTP_COOKIE')).toBe('a=1');
  });

  it('keeps every byte 0x80-0xff intact through latin1', () => {
    const bytes = Buffer.alloc(256);
    for (let i = 0; i < 256; i++) bytes[i] = i;
    const value = bytes.toString('latin1');
    const pkt = encodePacket(['HTTP_X_BIN', value, 'K\xe9\xff', 'v']);
    const back = decodeVars(pkt, HEADER_SIZE);
    expect(Buffer.from(back[1]!, 'latin1').equals(bytes)).toBe(true);
    expect(Buffer.from(back[2]!, 'latin1')).toEqual(Buffer.from([0x4b, 0xe9, 0xff]));
    // The bytes on the wire are the raw bytes, not their UTF-8 encoding.
    expect(pkt.indexOf(bytes)).toBeGreaterThan(0);
  });

  it('round-trips a 60 KB value', () => {
    const big = 'c'.repeat(60 * 1024);
    const vars = ['HTTP_COOKIE', big, 'REQUEST_METHOD', 'GET'];
    const pkt = encodePacket(vars);
    expect(pkt.length).toBe(HEADER_SIZE + varsSize(vars));
    expect(decodeVars(pkt, HEADER_SIZE)).toEqual(vars);
  });

  it('refuses to encode a vars block over 65535 bytes', () => {
    expect(codeOf(() => encodePacket(['K', 'v'.repeat(65535)]))).toBe('STRATUM_ERR_UWSGI_VARS_TOO_LARGE');
    // Exactly 65535 bytes is the largest allowed block.
    const fits = ['K', 'v'.repeat(65535 - 2 - 1 - 2)];
    expect(varsSize(fits)).toBe(65535);
    expect(encodePacket(fits).readUInt16LE(1)).toBe(65535);
  });

  it('refuses an odd number of key/value strings', () => {
    expect(codeOf(() => encodePacket(['K']))).toBe('STRATUM_ERR_UWSGI_BAD_VAR');
  });
});

describe('decodeVars errors', () => {
  it('maps a key length past the block to STRATUM_ERR_UWSGI_BAD_VAR', () => {
    const block = Buffer.concat([u16(10), Buffer.from('KEY')]);
    expect(codeOf(() => decodeVars(block))).toBe('STRATUM_ERR_UWSGI_BAD_VAR');
  });

  it('maps a value length past the block to STRATUM_ERR_UWSGI_BAD_VAR', () => {
    const block = Buffer.concat([u16(3), Buffer.from('KEY'), u16(50), Buffer.from('val')]);
    expect(codeOf(() => decodeVars(block))).toBe('STRATUM_ERR_UWSGI_BAD_VAR');
  });

  it('maps a value length cut inside its two bytes to STRATUM_ERR_UWSGI_BAD_VAR', () => {
    const block = Buffer.concat([u16(3), Buffer.from('KEY'), Buffer.from([1])]);
    expect(codeOf(() => decodeVars(block))).toBe('STRATUM_ERR_UWSGI_BAD_VAR');
  });

  it('maps a trailing single byte (half a key length) to STRATUM_ERR_UWSGI_BAD_VAR', () => {
    const block = Buffer.concat([u16(1), Buffer.from('K'), u16(1), Buffer.from('v'), Buffer.from([7])]);
    expect(codeOf(() => decodeVars(block))).toBe('STRATUM_ERR_UWSGI_BAD_VAR');
  });

  it('maps a zero-length key to STRATUM_ERR_UWSGI_BAD_VAR', () => {
    const block = Buffer.concat([u16(0), u16(1), Buffer.from('v')]);
    expect(codeOf(() => decodeVars(block))).toBe('STRATUM_ERR_UWSGI_BAD_VAR');
  });

  it('maps an empty block to STRATUM_ERR_UWSGI_EMPTY_VARS', () => {
    expect(codeOf(() => decodeVars(Buffer.alloc(0)))).toBe('STRATUM_ERR_UWSGI_EMPTY_VARS');
  });
});

describe('PacketHeadDecoder', () => {
  const body = Buffer.from('hello');
  const wire = Buffer.concat([encodePacket(SAMPLE), body]);
  const bodyStart = wire.length - body.length;

  /** Feed `parts` in order; return the head and the absolute offset in `wire` of the first body byte. */
  function feed(dec: PacketHeadDecoder, parts: Buffer[]): { vars: UwsgiVars; bodyAt: number } {
    let abs = 0;
    for (const part of parts) {
      const got = dec.push(part);
      if (got) return { vars: got.head.vars, bodyAt: abs + got.rest };
      abs += part.length;
    }
    throw new Error('head never completed');
  }

  it('decodes a whole packet in one chunk with the body offset after the vars', () => {
    const got = new PacketHeadDecoder().push(wire);
    expect(got).not.toBeNull();
    expect(got!.head).toEqual({ modifier1: 0, modifier2: 0, vars: SAMPLE });
    expect(got!.rest).toBe(bodyStart);
  });

  it('gives the same head and body offset when fed byte by byte', () => {
    const dec = new PacketHeadDecoder();
    const parts: Buffer[] = [];
    for (let i = 0; i < wire.length; i++) parts.push(wire.subarray(i, i + 1));
    const got = feed(dec, parts);
    expect(got.vars).toEqual(SAMPLE);
    expect(got.bodyAt).toBe(bodyStart);
    expect(dec.pending).toBe(0);
  });

  it('gives the same head when the header arrives alone and the vars block in one later chunk', () => {
    const dec = new PacketHeadDecoder();
    const got = feed(dec, [wire.subarray(0, HEADER_SIZE), wire.subarray(HEADER_SIZE)]);
    expect(got.vars).toEqual(SAMPLE);
    expect(got.bodyAt).toBe(bodyStart);
  });

  it('gives the same head and body offset for random splits', () => {
    const rand = rng(12345);
    for (let round = 0; round < 300; round++) {
      const parts: Buffer[] = [];
      let i = 0;
      while (i < wire.length) {
        const n = 1 + Math.floor(rand() * 24);
        parts.push(wire.subarray(i, Math.min(wire.length, i + n)));
        i += n;
      }
      const got = feed(new PacketHeadDecoder(), parts);
      expect(got.vars).toEqual(SAMPLE);
      expect(got.bodyAt).toBe(bodyStart);
    }
  });

  it('decodes two packets back to back in one buffer, resuming at the returned offset', () => {
    const a = ['REQUEST_METHOD', 'GET', 'REQUEST_URI', '/a'];
    const b = ['REQUEST_METHOD', 'HEAD', 'REQUEST_URI', '/b', 'HTTP_X', ''];
    const buf = Buffer.concat([encodePacket(a), encodePacket(b)]);
    const dec = new PacketHeadDecoder();
    const first = dec.push(buf);
    expect(first!.head.vars).toEqual(a);
    const second = dec.push(buf, first!.rest);
    expect(second!.head.vars).toEqual(b);
    expect(second!.rest).toBe(buf.length);
    expect(() => dec.end()).not.toThrow();
  });

  it('decodes two packets back to back when the second straddles chunks', () => {
    const a = ['REQUEST_METHOD', 'GET', 'REQUEST_URI', '/a'];
    const b = ['REQUEST_METHOD', 'POST', 'REQUEST_URI', '/b'];
    const buf = Buffer.concat([encodePacket(a), encodePacket(b)]);
    const cut = encodePacket(a).length + 6;
    const dec = new PacketHeadDecoder();
    const first = dec.push(buf.subarray(0, cut));
    expect(first!.head.vars).toEqual(a);
    expect(dec.push(buf.subarray(0, cut), first!.rest)).toBeNull();
    const second = dec.push(buf.subarray(cut));
    expect(second!.head.vars).toEqual(b);
    expect(second!.rest).toBe(buf.length - cut);
  });

  it('ends cleanly when idle', () => {
    expect(() => new PacketHeadDecoder().end()).not.toThrow();
  });

  it('maps end() after 2 header bytes to STRATUM_ERR_UWSGI_TRUNCATED_HEADER', () => {
    const dec = new PacketHeadDecoder();
    expect(dec.push(wire.subarray(0, 2))).toBeNull();
    expect(codeOf(() => dec.end())).toBe('STRATUM_ERR_UWSGI_TRUNCATED_HEADER');
  });

  it('maps end() in the middle of the vars block to STRATUM_ERR_UWSGI_TRUNCATED_VARS', () => {
    const dec = new PacketHeadDecoder();
    expect(dec.push(wire.subarray(0, HEADER_SIZE + 10))).toBeNull();
    expect(codeOf(() => dec.end())).toBe('STRATUM_ERR_UWSGI_TRUNCATED_VARS');
  });

  it('maps end() right after the header (no vars bytes yet) to STRATUM_ERR_UWSGI_TRUNCATED_VARS', () => {
    const dec = new PacketHeadDecoder();
    expect(dec.push(wire.subarray(0, HEADER_SIZE))).toBeNull();
    expect(codeOf(() => dec.end())).toBe('STRATUM_ERR_UWSGI_TRUNCATED_VARS');
  });

  it('maps a key length past the block to STRATUM_ERR_UWSGI_BAD_VAR', () => {
    const pkt = rawPacket(Buffer.concat([u16(200), Buffer.from('KEY'), u16(1), Buffer.from('v')]));
    expect(codeOf(() => new PacketHeadDecoder().push(pkt))).toBe('STRATUM_ERR_UWSGI_BAD_VAR');
  });

  it('maps a value length past the block to STRATUM_ERR_UWSGI_BAD_VAR', () => {
    const pkt = rawPacket(Buffer.concat([u16(3), Buffer.from('KEY'), u16(999), Buffer.from('v')]));
    expect(codeOf(() => new PacketHeadDecoder().push(pkt))).toBe('STRATUM_ERR_UWSGI_BAD_VAR');
  });

  it('maps a malformed block fed in pieces to STRATUM_ERR_UWSGI_BAD_VAR', () => {
    const pkt = rawPacket(Buffer.concat([u16(3), Buffer.from('KEY'), u16(999), Buffer.from('v')]));
    const dec = new PacketHeadDecoder();
    for (let i = 0; i < pkt.length - 1; i++) expect(dec.push(pkt.subarray(i, i + 1))).toBeNull();
    expect(codeOf(() => dec.push(pkt.subarray(pkt.length - 1)))).toBe('STRATUM_ERR_UWSGI_BAD_VAR');
  });

  it('maps a zero-length key to STRATUM_ERR_UWSGI_BAD_VAR', () => {
    const pkt = rawPacket(Buffer.concat([u16(0), u16(1), Buffer.from('v')]));
    expect(codeOf(() => new PacketHeadDecoder().push(pkt))).toBe('STRATUM_ERR_UWSGI_BAD_VAR');
  });

  it('maps datasize 0 to STRATUM_ERR_UWSGI_EMPTY_VARS', () => {
    expect(codeOf(() => new PacketHeadDecoder().push(rawPacket(Buffer.alloc(0))))).toBe('STRATUM_ERR_UWSGI_EMPTY_VARS');
  });

  it('refuses a block over the configured max from the header alone', () => {
    const dec = new PacketHeadDecoder(4096);
    expect(dec.maxVarsSize).toBe(4096);
    // Only the 4 header bytes announcing 5000 bytes: refused before any of the block arrives.
    const head = Buffer.from([0, 5000 & 0xff, 5000 >> 8, 0]);
    expect(codeOf(() => dec.push(head))).toBe('STRATUM_ERR_UWSGI_VARS_TOO_LARGE');
    // Same when the header itself arrives split.
    const dec2 = new PacketHeadDecoder(4096);
    expect(dec2.push(head.subarray(0, 2))).toBeNull();
    expect(codeOf(() => dec2.push(head.subarray(2)))).toBe('STRATUM_ERR_UWSGI_VARS_TOO_LARGE');
  });

  it('accepts a block of exactly the configured max', () => {
    const vars = ['K', 'v'.repeat(4096 - 5)];
    expect(varsSize(vars)).toBe(4096);
    const got = new PacketHeadDecoder(4096).push(encodePacket(vars));
    expect(got!.head.vars).toEqual(vars);
  });

  it('maps modifier1 != 0 to STRATUM_ERR_UWSGI_MODIFIER', () => {
    const pkt = encodePacket(['K', 'v'], 5);
    expect(pkt[0]).toBe(5);
    expect(codeOf(() => new PacketHeadDecoder().push(pkt))).toBe('STRATUM_ERR_UWSGI_MODIFIER');
    const dec = new PacketHeadDecoder();
    expect(dec.push(pkt.subarray(0, 1))).toBeNull();
    expect(codeOf(() => dec.push(pkt.subarray(1)))).toBe('STRATUM_ERR_UWSGI_MODIFIER');
  });
});
