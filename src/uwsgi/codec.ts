// The uwsgi request packet (see ../shared/protocol.md):
//   u8 modifier1 | u16le datasize | u8 modifier2 | vars block | CONTENT_LENGTH body bytes
//   vars block = repeated (u16le key length, key, u16le value length, value)
// Keys and values are bytes, not text. We carry them as latin1 ("binary") strings so every byte
// round-trips; a var list is a flat array [k0, v0, k1, v1, ...] — no per-var objects, and repeated
// keys (nginx 1.22 sends a repeated header as a repeated var) are kept in order.

import {
  UwsgiBadVar,
  UwsgiEmptyVars,
  UwsgiTruncatedHeader,
  UwsgiTruncatedVars,
  UwsgiUnsupportedModifier,
  UwsgiVarsTooLarge,
} from '../errors.ts';

export const HEADER_SIZE = 4;
export const MAX_VARS_SIZE = 65535;

export type UwsgiVars = string[];

export interface UwsgiPacketHead {
  modifier1: number;
  modifier2: number;
  vars: UwsgiVars;
}

/** Size in bytes of the vars block for `vars`. */
export function varsSize(vars: UwsgiVars): number {
  let size = 0;
  for (let i = 0; i < vars.length; i++) size += 2 + Buffer.byteLength(vars[i]!, 'latin1');
  return size;
}

/** Encode header + vars block (the body, if any, follows on the wire). */
export function encodePacket(vars: UwsgiVars, modifier1 = 0, modifier2 = 0, maxVarsSize = MAX_VARS_SIZE): Buffer {
  if (vars.length % 2 !== 0) throw new UwsgiBadVar(0, 'odd number of key/value strings');
  const size = varsSize(vars);
  if (size > maxVarsSize) throw new UwsgiVarsTooLarge(size, maxVarsSize);
  const buf = Buffer.allocUnsafe(HEADER_SIZE + size);
  buf[0] = modifier1;
  buf.writeUInt16LE(size, 1);
  buf[3] = modifier2;
  let off = HEADER_SIZE;
  for (let i = 0; i < vars.length; i++) {
    const s = vars[i]!;
    const len = s.length; // latin1: one byte per char
    if (len > 0xffff) throw new UwsgiVarsTooLarge(len, 0xffff);
    buf.writeUInt16LE(len, off);
    off += 2;
    off += buf.write(s, off, len, 'latin1');
  }
  return buf;
}

/** Parse a complete vars block. Throws coded errors on malformed input. */
export function decodeVars(block: Buffer, start = 0, end = block.length): UwsgiVars {
  if (end <= start) throw new UwsgiEmptyVars();
  const vars: UwsgiVars = [];
  let off = start;
  while (off < end) {
    if (off + 2 > end) throw new UwsgiBadVar(off - start, 'key length past the end of the block');
    const klen = block[off]! | (block[off + 1]! << 8);
    off += 2;
    if (klen === 0) throw new UwsgiBadVar(off - 2 - start, 'zero-length key');
    if (off + klen > end) throw new UwsgiBadVar(off - 2 - start, `key length ${klen} past the end of the block`);
    const key = block.toString('latin1', off, off + klen);
    off += klen;
    if (off + 2 > end) throw new UwsgiBadVar(off - start, `value length of ${key} past the end of the block`);
    const vlen = block[off]! | (block[off + 1]! << 8);
    off += 2;
    if (off + vlen > end)
      throw new UwsgiBadVar(off - 2 - start, `value length ${vlen} of ${key} past the end of the block`);
    vars.push(key, vlen === 0 ? '' : block.toString('latin1', off, off + vlen));
    off += vlen;
  }
  return vars;
}

/** First value of `key` in a var list, or undefined. */
export function getVar(vars: UwsgiVars, key: string): string | undefined {
  for (let i = 0; i < vars.length; i += 2) if (vars[i] === key) return vars[i + 1];
  return undefined;
}

/**
 * Incremental decoder for the head of one packet (header + vars). Feed it chunks; it returns the
 * head once complete together with the leftover bytes (the start of the body). It never buffers
 * more than one vars block, and refuses a block larger than `maxVarsSize` before reading it.
 */
export class PacketHeadDecoder {
  readonly maxVarsSize: number;
  #buf: Buffer | null = null;
  #have = 0;
  #need = HEADER_SIZE;
  #size = -1;
  #m1 = 0;
  #m2 = 0;

  constructor(maxVarsSize = MAX_VARS_SIZE) {
    this.maxVarsSize = Math.min(maxVarsSize, MAX_VARS_SIZE);
  }

  /** Bytes of the current packet head received so far (0 when idle between packets). */
  get pending(): number {
    return this.#size < 0 ? this.#have : HEADER_SIZE + this.#have;
  }

  reset(): void {
    this.#buf = null;
    this.#have = 0;
    this.#need = HEADER_SIZE;
    this.#size = -1;
  }

  /**
   * Consume `chunk` from `offset`. Returns null when more bytes are needed, or
   * `{ head, rest }` where `rest` is the offset in `chunk` of the first body byte.
   */
  push(chunk: Buffer, offset = 0): { head: UwsgiPacketHead; rest: number } | null {
    let off = offset;
    // Fast path: a whole head inside this chunk, nothing buffered — no copy at all. Only between
    // packets: right after a header arrived alone, #have is 0 too but the vars block is next.
    if (this.#have === 0 && this.#size < 0 && chunk.length - off >= HEADER_SIZE) {
      const size = chunk[off + 1]! | (chunk[off + 2]! << 8);
      this.#checkHeader(chunk[off]!, size);
      if (chunk.length - off >= HEADER_SIZE + size) {
        const vars = decodeVars(chunk, off + HEADER_SIZE, off + HEADER_SIZE + size);
        return { head: { modifier1: chunk[off]!, modifier2: chunk[off + 3]!, vars }, rest: off + HEADER_SIZE + size };
      }
    }
    while (off < chunk.length) {
      if (this.#size < 0) {
        this.#buf ??= Buffer.allocUnsafe(HEADER_SIZE);
        const n = Math.min(HEADER_SIZE - this.#have, chunk.length - off);
        chunk.copy(this.#buf, this.#have, off, off + n);
        this.#have += n;
        off += n;
        if (this.#have < HEADER_SIZE) return null;
        const size = this.#buf[1]! | (this.#buf[2]! << 8);
        this.#checkHeader(this.#buf[0]!, size);
        this.#m1 = this.#buf[0]!;
        this.#m2 = this.#buf[3]!;
        this.#size = size;
        this.#buf = Buffer.allocUnsafe(size);
        this.#have = 0;
        this.#need = size;
      }
      const n = Math.min(this.#need - this.#have, chunk.length - off);
      chunk.copy(this.#buf!, this.#have, off, off + n);
      this.#have += n;
      off += n;
      if (this.#have === this.#need) {
        const vars = decodeVars(this.#buf!, 0, this.#size);
        const head = { modifier1: this.#m1, modifier2: this.#m2, vars };
        this.reset();
        return { head, rest: off };
      }
    }
    return null;
  }

  /** The connection ended: throw the coded error for a head cut short, if one was in progress. */
  end(): void {
    if (this.#have === 0 && this.#size < 0) return;
    if (this.#size < 0) throw new UwsgiTruncatedHeader(this.#have);
    throw new UwsgiTruncatedVars(this.#have, this.#size);
  }

  #checkHeader(modifier1: number, size: number): void {
    if (modifier1 !== 0) throw new UwsgiUnsupportedModifier(modifier1);
    if (size === 0) throw new UwsgiEmptyVars();
    if (size > this.maxVarsSize) throw new UwsgiVarsTooLarge(size, this.maxVarsSize);
  }
}
