// The OTLP/HTTP sink for the stratum-tracing row: accepts POST /v1/traces on 127.0.0.1:PORT,
// counts the spans in each protobuf (or JSON) ExportTraceServiceRequest, and answers 200 with an
// empty ExportTraceServiceResponse. GET /stats answers {"requests","bytes","spans"} as JSON.
// It stands in for a collector; it is not part of the serving processes whose RSS is measured.
import http from 'node:http';
import { gunzipSync } from 'node:zlib';

const port = Number(process.env.PORT);
const stats = { requests: 0, bytes: 0, spans: 0, errors: 0 };

/** Calls `onField(field, bytes)` for every length-delimited field of one protobuf message. */
function eachLenField(buf: Buffer, onField: (field: number, value: Buffer) => void): void {
  let i = 0;
  const varint = (): number => {
    let result = 0;
    let shift = 0;
    for (;;) {
      if (i >= buf.length) throw new Error('truncated varint');
      const b = buf[i++]!;
      result += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return result;
      shift += 7;
    }
  };
  while (i < buf.length) {
    const tag = varint();
    const wire = tag % 8;
    const field = Math.floor(tag / 8);
    if (wire === 0) varint();
    else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else if (wire === 2) {
      const len = varint();
      onField(field, buf.subarray(i, i + len));
      i += len;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
}

/** ExportTraceServiceRequest{1: ResourceSpans{2: ScopeSpans{2: Span}}} → number of spans. */
function countProtobufSpans(body: Buffer): number {
  let spans = 0;
  eachLenField(body, (f1, resourceSpans) => {
    if (f1 !== 1) return;
    eachLenField(resourceSpans, (f2, scopeSpans) => {
      if (f2 !== 2) return;
      eachLenField(scopeSpans, (f3) => {
        if (f3 === 2) spans++;
      });
    });
  });
  return spans;
}

function countJsonSpans(body: Buffer): number {
  const doc = JSON.parse(body.toString('utf8')) as { resourceSpans?: Array<{ scopeSpans?: Array<{ spans?: unknown[] }> }> };
  let spans = 0;
  for (const rs of doc.resourceSpans ?? []) for (const ss of rs.scopeSpans ?? []) spans += ss.spans?.length ?? 0;
  return spans;
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(stats));
    return;
  }
  if (req.method !== 'POST' || req.url !== '/v1/traces') {
    res.writeHead(404).end();
    return;
  }
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    let body = Buffer.concat(chunks);
    stats.requests++;
    stats.bytes += body.length;
    try {
      if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
      const json = (req.headers['content-type'] ?? '').includes('json');
      stats.spans += json ? countJsonSpans(body) : countProtobufSpans(body);
    } catch (err) {
      stats.errors++;
      console.error(`otlp sink: ${(err as Error).message}`);
    }
    const json = (req.headers['content-type'] ?? '').includes('json');
    res.writeHead(200, { 'content-type': json ? 'application/json' : 'application/x-protobuf' });
    res.end(json ? '{}' : '');
  });
});
server.keepAliveTimeout = 65_000;
server.listen(port, '127.0.0.1', () => console.log('ready'));
