// A small raw HTTP client for what fetch() cannot do or cannot show: repeated request headers,
// the response's raw header list (three Set-Cookie lines), HEAD, counting keep-alive sockets,
// streaming uploads without Content-Length and hashing downloads as they arrive.
import http from 'node:http';
import type { Socket } from 'node:net';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';

/** Headers as ordered [name, value] pairs: a name may repeat, each pair is its own line. */
export type HeaderList = [string, string][];

export interface RawRequest {
  method?: string;
  /** The request target exactly as it goes on the wire ("/echo/caf%C3%A9?x=1"). */
  path: string;
  headers?: HeaderList;
  /** A Buffer/string is sent with Content-Length; an iterable/stream is sent chunked. */
  body?: Buffer | string | Iterable<Uint8Array> | AsyncIterable<Uint8Array>;
  agent?: http.Agent | false;
  timeoutMs?: number;
}

export interface RawResponse {
  status: number;
  /** As received: [name, value, name, value, …], repeats and case kept. */
  rawHeaders: string[];
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** The socket the exchange used (to tell reuse apart from a new connection). */
  socket: Socket;
  reusedSocket: boolean;
}

export interface StreamedResponse extends Omit<RawResponse, 'body'> {
  bytes: number;
  sha256: string;
}

const DEFAULT_TIMEOUT_MS = 30_000;

/** The values of every header named `name` (case-insensitive), in order, from a rawHeaders list. */
export function headerValues(rawHeaders: readonly string[] | HeaderList, name: string): string[] {
  const lower = name.toLowerCase();
  const pairs: [string, string][] = [];
  if (rawHeaders.length > 0 && Array.isArray(rawHeaders[0])) pairs.push(...(rawHeaders as HeaderList));
  else
    for (let i = 0; i + 1 < rawHeaders.length; i += 2)
      pairs.push([rawHeaders[i] as string, rawHeaders[i + 1] as string]);
  return pairs.filter(([key]) => key.toLowerCase() === lower).map(([, value]) => value);
}

function open(
  base: string,
  req: RawRequest,
  onResponse: (res: http.IncomingMessage, creq: http.ClientRequest) => void,
  reject: (err: Error) => void,
): void {
  const url = new URL(base);
  const flat: string[] = [];
  // With headers given as an array node adds no Host line itself (setHost is ignored).
  if (!(req.headers ?? []).some(([n]) => n.toLowerCase() === 'host')) flat.push('Host', url.host);
  for (const [name, value] of req.headers ?? []) flat.push(name, value);
  const body = req.body;
  const sized = typeof body === 'string' || Buffer.isBuffer(body);
  if (sized && !(req.headers ?? []).some(([n]) => n.toLowerCase() === 'content-length')) {
    flat.push('Content-Length', String(Buffer.byteLength(body)));
  }
  // The array form of `headers` writes each pair as its own line, so two Cookie or X-Multi lines
  // really go out as two lines (an object with an array value would join Cookie with "; ").
  const creq = http.request({
    host: url.hostname,
    port: url.port,
    method: req.method ?? 'GET',
    path: req.path,
    headers: flat,
    agent: req.agent ?? false,
  });
  const timeout = req.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  creq.setTimeout(timeout, () =>
    creq.destroy(new Error(`${req.method ?? 'GET'} ${req.path}: no answer within ${timeout} ms`)),
  );
  creq.on('error', reject);
  creq.on('response', (res) => onResponse(res, creq));
  if (body === undefined) creq.end();
  else if (sized) creq.end(body);
  else
    Readable.from(body as Iterable<Uint8Array>, { objectMode: false })
      .on('error', reject)
      .pipe(creq);
}

/** Sends one request and buffers the response body. */
export function rawRequest(base: string, req: RawRequest): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    open(
      base,
      req,
      (res, creq) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', reject);
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            rawHeaders: res.rawHeaders,
            headers: res.headers,
            body: Buffer.concat(chunks),
            socket: creq.socket as Socket,
            reusedSocket: creq.reusedSocket,
          }),
        );
      },
      reject,
    );
  });
}

/** Sends one request and hashes the response body as it streams in, never holding it whole. */
export function streamRequest(base: string, req: RawRequest): Promise<StreamedResponse> {
  return new Promise((resolve, reject) => {
    open(
      base,
      req,
      (res, creq) => {
        const hash = createHash('sha256');
        let bytes = 0;
        res.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          hash.update(chunk);
        });
        res.on('error', reject);
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            rawHeaders: res.rawHeaders,
            headers: res.headers,
            bytes,
            sha256: hash.digest('hex'),
            socket: creq.socket as Socket,
            reusedSocket: creq.reusedSocket,
          }),
        );
      },
      reject,
    );
  });
}

/** A keep-alive agent that can hold exactly one connection: every request queues onto it. */
export function singleSocketAgent(): http.Agent {
  return new http.Agent({ keepAlive: true, maxSockets: 1, maxFreeSockets: 1 });
}

export interface KeepAliveRun {
  responses: RawResponse[];
  /** Distinct sockets used over the whole run: 1 when the server kept the connection. */
  socketCount: number;
}

/** Sends `count` requests one after the other through a single keep-alive connection. */
export async function keepAliveRun(base: string, req: RawRequest, count: number): Promise<KeepAliveRun> {
  const agent = singleSocketAgent();
  const sockets = new Set<Socket>();
  const responses: RawResponse[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const res = await rawRequest(base, { ...req, agent });
      sockets.add(res.socket);
      responses.push(res);
    }
  } finally {
    agent.destroy();
  }
  return { responses, socketCount: sockets.size };
}

/** `count` chunks of `chunkSize` deterministic bytes, for chunked uploads of a known digest. */
export function* uploadChunks(count: number, chunkSize: number): Generator<Buffer> {
  for (let i = 0; i < count; i++) {
    const chunk = Buffer.alloc(chunkSize);
    for (let j = 0; j < chunkSize; j++) chunk[j] = (i * 31 + j * 7) & 0xff;
    yield chunk;
  }
}

export function sha256(data: Buffer | Iterable<Uint8Array>): string {
  const hash = createHash('sha256');
  if (Buffer.isBuffer(data)) hash.update(data);
  else for (const chunk of data) hash.update(chunk);
  return hash.digest('hex');
}

export function parseJson<T = unknown>(res: RawResponse): T {
  try {
    return JSON.parse(res.body.toString('utf8')) as T;
  } catch {
    throw new Error(`expected JSON, got ${res.status} ${JSON.stringify(res.body.subarray(0, 500).toString('utf8'))}`);
  }
}
