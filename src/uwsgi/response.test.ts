import { describe, expect, it } from 'vitest';
import { ResponseParser, type ResponseHead } from './response.ts';

interface Recorded {
  parser: ResponseParser;
  heads: ResponseHead[];
  body: () => string;
  completed: () => number;
}

function make(opts: { isHead?: boolean; maxHeaderSize?: number } = {}): Recorded {
  const heads: ResponseHead[] = [];
  const chunks: Buffer[] = [];
  let completed = 0;
  const parser = new ResponseParser(
    {
      onHead: (h) => heads.push(h),
      onBody: (c) => chunks.push(Buffer.from(c)),
      onComplete: () => completed++,
    },
    { isHead: opts.isHead ?? false, maxHeaderSize: opts.maxHeaderSize },
  );
  return { parser, heads, body: () => Buffer.concat(chunks).toString('latin1'), completed: () => completed };
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

/** Feed `text` one `size`-byte chunk at a time; return the last execute() result. */
function feedSplit(p: ResponseParser, text: string, size: number): number {
  const buf = Buffer.from(text, 'latin1');
  let last = -1;
  for (let i = 0; i < buf.length; i += size) last = p.execute(buf.subarray(i, i + size));
  return last;
}

describe('ResponseParser framing', () => {
  it('reads a Content-Length body and reports the head', () => {
    const r = make();
    const raw = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello';
    expect(r.parser.execute(Buffer.from(raw))).toBe(raw.length);
    expect(r.heads).toHaveLength(1);
    const h = r.heads[0]!;
    expect(h.statusCode).toBe(200);
    expect(h.statusMessage).toBe('OK');
    expect(h.framing).toBe('length');
    expect(h.contentLength).toBe(5);
    expect(h.rawHeaders).toEqual(['Content-Type', 'text/plain', 'Content-Length', '5', 'X-A', '1', 'X-A', '2']);
    expect(r.body()).toBe('hello');
    expect(r.completed()).toBe(1);
    expect(r.parser.done).toBe(true);
  });

  it('reads a Content-Length body arriving in separate chunks', () => {
    const r = make();
    expect(r.parser.execute(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234'))).toBe(-1);
    expect(r.completed()).toBe(0);
    expect(r.parser.execute(Buffer.from('56789'))).toBe(5);
    expect(r.body()).toBe('0123456789');
    expect(r.completed()).toBe(1);
  });

  it('treats Content-Length: 0 as no body', () => {
    const r = make();
    const raw = 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n';
    expect(r.parser.execute(Buffer.from(raw))).toBe(raw.length);
    expect(r.heads[0]!.framing).toBe('none');
    expect(r.completed()).toBe(1);
  });

  it('decodes a chunked body with chunk extensions and trailers', () => {
    const r = make();
    const raw =
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' +
      '5;name=value\r\nhello\r\n' +
      '1 ; ext\r\n,\r\n' +
      'A\r\n0123456789\r\n' +
      '0;last\r\nX-Trailer: yes\r\nX-Other: 2\r\n\r\n';
    expect(r.parser.execute(Buffer.from(raw))).toBe(raw.length);
    expect(r.heads[0]!.framing).toBe('chunked');
    expect(r.body()).toBe('hello,0123456789');
    expect(r.completed()).toBe(1);
  });

  it('decodes the same chunked body fed one byte at a time', () => {
    const raw =
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' +
      '5;name=value\r\nhello\r\n1\r\n,\r\n0\r\nX-Trailer: yes\r\n\r\n';
    const r = make();
    expect(feedSplit(r.parser, raw, 1)).toBe(1);
    expect(r.body()).toBe('hello,');
    expect(r.completed()).toBe(1);
  });

  it('reads a body without length until close, completed by finish()', () => {
    const r = make();
    expect(r.parser.execute(Buffer.from('HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome '))).toBe(-1);
    expect(r.parser.execute(Buffer.from('more'))).toBe(-1);
    expect(r.heads[0]!.framing).toBe('close');
    expect(r.heads[0]!.keepAlive).toBe(false);
    expect(r.completed()).toBe(0);
    r.parser.finish();
    expect(r.completed()).toBe(1);
    expect(r.body()).toBe('some more');
  });

  it('expects no body for a HEAD request even with Content-Length', () => {
    const r = make({ isHead: true });
    const raw = 'HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n';
    expect(r.parser.execute(Buffer.from(raw))).toBe(raw.length);
    expect(r.heads[0]!.framing).toBe('none');
    expect(r.completed()).toBe(1);
    expect(r.body()).toBe('');
  });

  it('expects no body for 204 and 304', () => {
    for (const status of ['204 No Content', '304 Not Modified']) {
      const r = make();
      const raw = `HTTP/1.1 ${status}\r\nContent-Length: 99\r\nETag: "x"\r\n\r\n`;
      expect(r.parser.execute(Buffer.from(raw))).toBe(raw.length);
      expect(r.heads[0]!.framing).toBe('none');
      expect(r.completed()).toBe(1);
      expect(r.heads[0]!.keepAlive).toBe(true);
    }
  });

  it('skips 100 Continue (and 103) before the real head', () => {
    const r = make();
    const raw =
      'HTTP/1.1 100 Continue\r\n\r\n' +
      'HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n' +
      'HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok';
    expect(r.parser.execute(Buffer.from(raw))).toBe(raw.length);
    expect(r.heads).toHaveLength(1);
    expect(r.heads[0]!.statusCode).toBe(201);
    expect(r.heads[0]!.rawHeaders).toEqual(['Content-Length', '2']);
    expect(r.body()).toBe('ok');
  });

  it('skips 100 Continue arriving in its own chunk', () => {
    const r = make();
    expect(r.parser.execute(Buffer.from('HTTP/1.1 100 Continue\r\n\r\n'))).toBe(-1);
    expect(r.parser.awaitingHead).toBe(true);
    expect(r.heads).toHaveLength(0);
    expect(r.parser.execute(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx'))).toBeGreaterThan(0);
    expect(r.heads[0]!.statusCode).toBe(200);
    expect(r.body()).toBe('x');
  });

  it('parses a head split across many chunks at every size', () => {
    const raw =
      'HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n' +
      'Content-Length: 4\r\n\r\nbody';
    for (let size = 1; size <= 12; size++) {
      const r = make();
      expect(feedSplit(r.parser, raw, size)).toBeGreaterThanOrEqual(0);
      expect(r.heads).toHaveLength(1);
      expect(r.heads[0]!.rawHeaders).toEqual([
        'Content-Type',
        'text/html',
        'Set-Cookie',
        'a=1',
        'Set-Cookie',
        'b=2',
        'Content-Length',
        '4',
      ]);
      expect(r.body()).toBe('body');
      expect(r.completed()).toBe(1);
    }
  });

  it('accepts bare LF line endings', () => {
    const r = make();
    const raw = 'HTTP/1.1 200 OK\nContent-Length: 2\n\nok';
    expect(r.parser.execute(Buffer.from(raw))).toBe(raw.length);
    expect(r.body()).toBe('ok');
  });

  it('sets keepAlive for HTTP/1.1, not with Connection: close, not for HTTP/1.0 unless keep-alive', () => {
    const cases: Array<[string, boolean]> = [
      ['HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n', true],
      ['HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n', false],
      ['HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 0\r\n\r\n', false],
      ['HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n', false],
      ['HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n', true],
      ['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', true],
      // Body until close can never keep the connection.
      ['HTTP/1.1 200 OK\r\n\r\n', false],
    ];
    for (const [raw, keep] of cases) {
      const r = make();
      r.parser.execute(Buffer.from(raw));
      expect(r.heads[0]!.keepAlive, raw).toBe(keep);
    }
  });

  it('returns the offset of bytes past a complete response', () => {
    const first = 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc';
    const r = make();
    expect(r.parser.execute(Buffer.from(first + 'HTTP/1.1 200 OK\r\n'))).toBe(first.length);
    expect(r.body()).toBe('abc');

    const chunked = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n';
    const r2 = make();
    expect(r2.parser.execute(Buffer.from(chunked + 'XYZ'))).toBe(chunked.length);

    const none = 'HTTP/1.1 204 No Content\r\n\r\n';
    const r3 = make();
    expect(r3.parser.execute(Buffer.from(none + 'junk'))).toBe(none.length);
  });
});

describe('ResponseParser errors', () => {
  const bad = (raw: string, opts?: { isHead?: boolean; maxHeaderSize?: number }) =>
    codeOf(() => make(opts).parser.execute(Buffer.from(raw, 'latin1')));

  it('maps a bad status line to STRATUM_ERR_UPSTREAM_BAD_RESPONSE', () => {
    expect(bad('HTTP/2 200 OK\r\n\r\n')).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
    expect(bad('HTTP/1.1 20 OK\r\n\r\n')).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
    expect(bad('ICY 200 OK\r\n\r\n')).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
    expect(bad('garbage\r\n\r\n')).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
  });

  it('maps a bad header line to STRATUM_ERR_UPSTREAM_BAD_RESPONSE', () => {
    expect(bad('HTTP/1.1 200 OK\r\nno colon here\r\n\r\n')).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
    expect(bad('HTTP/1.1 200 OK\r\n: empty name\r\n\r\n')).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
    expect(bad('HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n')).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
    expect(bad('HTTP/1.1 200 OK\r\nX-Nul: a\0b\r\n\r\n')).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
  });

  it('maps obsolete line folding to STRATUM_ERR_UPSTREAM_BAD_RESPONSE', () => {
    expect(bad('HTTP/1.1 200 OK\r\nX-A: one\r\n  two\r\nContent-Length: 0\r\n\r\n')).toBe(
      'STRATUM_ERR_UPSTREAM_BAD_RESPONSE',
    );
    expect(bad('HTTP/1.1 200 OK\r\nX-A: one\r\n\ttwo\r\nContent-Length: 0\r\n\r\n')).toBe(
      'STRATUM_ERR_UPSTREAM_BAD_RESPONSE',
    );
  });

  it('maps conflicting or invalid Content-Length to STRATUM_ERR_UPSTREAM_BAD_RESPONSE', () => {
    expect(bad('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n')).toBe(
      'STRATUM_ERR_UPSTREAM_BAD_RESPONSE',
    );
    expect(bad('HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n')).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
    expect(bad('HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n')).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
    // Identical repeats are tolerated.
    expect(bad('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok')).toBeUndefined();
  });

  it('maps a bad chunk size to STRATUM_ERR_UPSTREAM_BAD_RESPONSE', () => {
    const head = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n';
    expect(bad(`${head}zz\r\n`)).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
    expect(bad(`${head}-5\r\nhello\r\n`)).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
    expect(bad(`${head}\r\n`)).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
    expect(bad(`${head}1234567890abc\r\n`)).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
    // Chunk data not followed by CRLF.
    expect(bad(`${head}3\r\nabcX\r\n`)).toBe('STRATUM_ERR_UPSTREAM_BAD_RESPONSE');
  });

  it('maps a head over maxHeaderSize to STRATUM_ERR_UPSTREAM_HEADERS_TOO_LARGE', () => {
    const big = `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(2000)}\r\nContent-Length: 0\r\n\r\n`;
    // Complete in one chunk.
    expect(bad(big, { maxHeaderSize: 1024 })).toBe('STRATUM_ERR_UPSTREAM_HEADERS_TOO_LARGE');
    // Never-ending head arriving in pieces: refused once buffered bytes pass the limit.
    const r = make({ maxHeaderSize: 1024 });
    r.parser.execute(Buffer.from('HTTP/1.1 200 OK\r\n'));
    let code: string | undefined;
    for (let i = 0; i < 100 && code === undefined; i++)
      code = codeOf(() => r.parser.execute(Buffer.from(`X-${i}: ${'b'.repeat(40)}\r\n`)));
    expect(code).toBe('STRATUM_ERR_UPSTREAM_HEADERS_TOO_LARGE');
    // The same head fits the default limit.
    expect(bad(big)).toBeUndefined();
  });

  it('maps a Content-Length body cut short at finish() to STRATUM_ERR_UPSTREAM_TRUNCATED', () => {
    const r = make();
    r.parser.execute(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc'));
    expect(codeOf(() => r.parser.finish())).toBe('STRATUM_ERR_UPSTREAM_TRUNCATED');
    expect(r.completed()).toBe(0);
  });

  it('maps a chunked body or head cut short at finish() to STRATUM_ERR_UPSTREAM_TRUNCATED', () => {
    const r = make();
    r.parser.execute(Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab'));
    expect(codeOf(() => r.parser.finish())).toBe('STRATUM_ERR_UPSTREAM_TRUNCATED');
    const r2 = make();
    r2.parser.execute(Buffer.from('HTTP/1.1 200 OK\r\nContent-Le'));
    expect(codeOf(() => r2.parser.finish())).toBe('STRATUM_ERR_UPSTREAM_TRUNCATED');
    expect(codeOf(() => make().parser.finish())).toBe('STRATUM_ERR_UPSTREAM_TRUNCATED');
  });

  it('finish() after a complete response is a no-op', () => {
    const r = make();
    r.parser.execute(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx'));
    expect(() => r.parser.finish()).not.toThrow();
    expect(r.completed()).toBe(1);
  });
});
