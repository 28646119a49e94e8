// An OTLP/HTTP trace receiver for tests: a node http server on 127.0.0.1 (OS-picked port) that
// accepts POST /v1/traces as an OpenTelemetry collector would and keeps every span it was sent,
// flattened with its resource and scope.
//
// Encoding: OTLP/JSON (OTEL_EXPORTER_OTLP_PROTOCOL=http/json), not protobuf. The installed
// @opentelemetry/otlp-transformer (0.301.x) no longer ships a generated protobuf root: its
// protobuf support is a hand-written writer plus a *response* deserializer, and its package
// exports (".") hold no ExportTraceServiceRequest decoder, nor the request's TypeScript types.
// So the exporter is told to speak JSON, the body is the package's own JSON encoding
// (JsonTraceSerializer / JSON_ENCODER: hex ids, int64 as strings or numbers, enums as numbers),
// and the interfaces below mirror that encoding (opentelemetry-proto's trace.proto, JSON
// mapping). The answer is the package's IExportTraceServiceResponse. tracing.test.ts checks
// this decoder against JsonTraceSerializer.serializeRequest, so both sides stay one definition.
// A protobuf body is refused with 415 and recorded in `errors`, so a test fails saying why.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import type { IExportTraceServiceResponse } from '@opentelemetry/otlp-transformer';

// --- the OTLP/JSON request, as the exporter sends it -------------------------------------------

interface OtlpAnyValue {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: number | string;
  doubleValue?: number;
  bytesValue?: string;
  arrayValue?: { values?: OtlpAnyValue[] };
  kvlistValue?: { values?: OtlpKeyValue[] };
}

interface OtlpKeyValue {
  key: string;
  value?: OtlpAnyValue;
}

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  traceState?: string;
  name: string;
  kind?: number;
  startTimeUnixNano: string | number;
  endTimeUnixNano: string | number;
  attributes?: OtlpKeyValue[];
  status?: { code?: number; message?: string };
  flags?: number;
}

interface OtlpExportTraceServiceRequest {
  resourceSpans?: Array<{
    resource?: { attributes?: OtlpKeyValue[] };
    scopeSpans?: Array<{
      scope?: { name?: string; version?: string };
      spans?: OtlpSpan[];
    }>;
  }>;
}

// --- what tests look at -------------------------------------------------------------------------

/** OTLP SpanKind (trace.proto): 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
export const SPAN_KINDS = ['UNSPECIFIED', 'INTERNAL', 'SERVER', 'CLIENT', 'PRODUCER', 'CONSUMER'] as const;
export type SpanKindName = (typeof SPAN_KINDS)[number];

export type AttributeValue = string | number | boolean | null | AttributeValue[] | { [key: string]: AttributeValue };

export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  /** null for a root span. */
  parentSpanId: string | null;
  name: string;
  kind: SpanKindName;
  /** The instrumentation scope's name ("stratum", "@fastify/otel"). */
  scope: string;
  attributes: Record<string, AttributeValue>;
  /** The exporting process's resource attributes (service.name, process.pid, stratum.role). */
  resource: Record<string, AttributeValue>;
  startNs: bigint;
  endNs: bigint;
  statusCode: number;
}

function anyValue(v: OtlpAnyValue | undefined): AttributeValue {
  if (!v) return null;
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return v.doubleValue;
  if (v.bytesValue !== undefined) return v.bytesValue;
  if (v.arrayValue) return (v.arrayValue.values ?? []).map(anyValue);
  if (v.kvlistValue) return attributes(v.kvlistValue.values);
  return null;
}

function attributes(list: OtlpKeyValue[] | undefined): Record<string, AttributeValue> {
  const out: Record<string, AttributeValue> = {};
  for (const kv of list ?? []) out[kv.key] = anyValue(kv.value);
  return out;
}

/** Ids in OTLP/JSON are hex (case-insensitive); empty or absent parent = root. */
function hexId(id: string | undefined): string | null {
  return id ? id.toLowerCase() : null;
}

/** Decodes one OTLP/JSON ExportTraceServiceRequest body into flat spans. */
export function decodeTraceRequest(body: Uint8Array): ReceivedSpan[] {
  const request = JSON.parse(new TextDecoder().decode(body)) as OtlpExportTraceServiceRequest;
  const out: ReceivedSpan[] = [];
  for (const rs of request.resourceSpans ?? []) {
    const resource = attributes(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        out.push({
          traceId: hexId(s.traceId) ?? '',
          spanId: hexId(s.spanId) ?? '',
          parentSpanId: hexId(s.parentSpanId),
          name: s.name,
          kind: SPAN_KINDS[s.kind ?? 0] ?? 'UNSPECIFIED',
          scope: ss.scope?.name ?? '',
          attributes: attributes(s.attributes),
          resource,
          startNs: BigInt(s.startTimeUnixNano),
          endNs: BigInt(s.endTimeUnixNano),
          statusCode: s.status?.code ?? 0,
        });
      }
    }
  }
  return out;
}

// --- the receiver -------------------------------------------------------------------------------

export interface OtlpReceiver {
  /** "http://127.0.0.1:PORT", the value of OTEL_EXPORTER_OTLP_ENDPOINT. */
  endpoint: string;
  /** The standard OTEL_* variables that point an SDK's exporter here, flushing every 200 ms. */
  env: Record<string, string>;
  /** Every span received so far, in arrival order. */
  spans: ReceivedSpan[];
  /** Export requests received per path ("/v1/traces" …). */
  requests: Map<string, number>;
  /** Bodies that could not be taken (wrong encoding, bad JSON). */
  errors: string[];
  spansOf(traceId: string): ReceivedSpan[];
  /** Polls until `done(spans)` holds; throws with `describe()` (and what arrived) after timeoutMs. */
  waitFor(
    done: (spans: ReceivedSpan[]) => boolean,
    opts: { timeoutMs?: number; describe: () => string },
  ): Promise<void>;
  close(): Promise<void>;
}

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const requests = new Map<string, number>();
  const errors: string[] = [];

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = (req.url ?? '/').split('?')[0]!;
      requests.set(path, (requests.get(path) ?? 0) + 1);
      const type = String(req.headers['content-type'] ?? '');
      let body: Buffer = Buffer.concat(chunks);
      try {
        if (req.method !== 'POST') {
          res.writeHead(405).end();
          return;
        }
        if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
        if (!type.startsWith('application/json')) {
          errors.push(
            `${path}: ${type || 'no content-type'} body refused ` +
              '(the receiver reads OTLP/JSON; set OTEL_EXPORTER_OTLP_PROTOCOL=http/json)',
          );
          res.writeHead(415, { 'content-type': 'text/plain' }).end('OTLP/JSON only\n');
          return;
        }
        // Metrics or logs an SDK might also export are accepted and counted, not decoded.
        if (path === '/v1/traces') spans.push(...decodeTraceRequest(body));
        const answer: IExportTraceServiceResponse = {};
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
      } catch (err) {
        errors.push(`${path}: ${(err as Error).message}`);
        res.writeHead(400, { 'content-type': 'text/plain' }).end(`${(err as Error).message}\n`);
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const endpoint = `http://127.0.0.1:${port}`;

  const summary = () => {
    const byTrace = new Map<string, string[]>();
    for (const s of spans)
      byTrace.set(s.traceId, [
        ...(byTrace.get(s.traceId) ?? []),
        `${s.kind} ${JSON.stringify(s.name)} ${s.spanId}<-${s.parentSpanId ?? 'root'} ` +
          `(${String(s.resource['stratum.role'])})`,
      ]);
    const lines = [...byTrace].slice(-20).map(([t, list]) => `  trace ${t}:\n    ${list.join('\n    ')}`);
    return (
      `received ${spans.length} spans, requests ${JSON.stringify([...requests])}, ` +
      `errors ${JSON.stringify(errors)}\n${lines.join('\n')}`
    );
  };

  return {
    endpoint,
    env: {
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      OTEL_BSP_SCHEDULE_DELAY: '200',
    },
    spans,
    requests,
    errors,
    spansOf: (traceId) => spans.filter((s) => s.traceId === traceId),
    async waitFor(done, { timeoutMs = 10_000, describe }) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        if (done(spans)) return;
        if (Date.now() > deadline) throw new Error(`${describe()}\n${summary()}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
