// Tools of the hardening tests: raw client connections (bytes exactly as written, responses
// parsed as they come), upstreams that record what reached them or misbehave on purpose (HTTP
// and uwsgi), a temp config writer and a /metrics reader.
import http from 'node:http';
import net from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PacketHeadDecoder, getVar, type UwsgiVars } from '../../src/uwsgi/codec.ts';
import { makeTempDir } from '../helpers/processes.ts';
import { ReplyReader, type Reply } from './uwsgi-fuzz.ts';

export type { Reply } from './uwsgi-fuzz.ts';

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** `stratum.yaml` in a fresh temp dir; returns its path. */
export function writeConfig(prefix: string, yaml: string): { dir: string; file: string } {
  const dir = makeTempDir(prefix);
  const file = join(dir, 'stratum.yaml');
  writeFileSync(file, yaml);
  return { dir, file };
}

export function portOf(base: string): number {
  return Number(new URL(base).port);
}

/** A raw TCP client connection: write bytes as they are, read responses one by one. */
export class RawConn {
  readonly socket: net.Socket;
  readonly reader: ReplyReader;
  readonly closed: Promise<number>;
  #raw: Buffer[] = [];

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.reader = new ReplyReader(socket);
    socket.on('data', (c: Buffer) => this.#raw.push(c));
    const opened = performance.now();
    this.closed = new Promise((resolve) => socket.once('close', () => resolve(performance.now() - opened)));
  }

  static open(port: number, host = '127.0.0.1'): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port });
      socket.once('connect', () => resolve(new RawConn(socket)));
      socket.once('error', reject);
    });
  }

  write(data: string | Buffer): void {
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  /** The next response, or status null when the connection closed first. */
  next(timeoutMs = 5000, isHead = false): Promise<Reply> {
    return this.reader.read(Date.now() + timeoutMs, isHead);
  }

  /** Everything received so far, as latin1 text. */
  get raw(): string {
    return Buffer.concat(this.#raw).toString('latin1');
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/**
 * Send `data` on a new connection and read one response (status null: closed without one).
 * With `waitClose`, also wait (up to 1 s) to see whether the server closes the connection.
 */
export async function exchange(port: number, data: string | Buffer, opts: { timeoutMs?: number; waitClose?: boolean } = {}): Promise<Reply & { raw: string; closedAfter: boolean }> {
  const c = await RawConn.open(port);
  try {
    c.write(data);
    const r = await c.next(opts.timeoutMs ?? 5000);
    const closedAfter = r.closed || (!!opts.waitClose && (await Promise.race([c.closed.then(() => true), sleep(1000).then(() => false)])));
    return { ...r, raw: c.raw, closedAfter };
  } finally {
    c.destroy();
  }
}

export function header(r: { rawHeaders: string[] }, name: string): string | undefined {
  for (let i = 0; i < r.rawHeaders.length; i += 2) if (r.rawHeaders[i]!.toLowerCase() === name) return r.rawHeaders[i + 1];
  return undefined;
}

// --- upstreams -------------------------------------------------------------------------------

export interface Recorded {
  method: string;
  url: string;
  rawHeaders: string[];
  body: Buffer;
}

/** An HTTP upstream that records every request it parses and answers 200 "recorded". */
export async function recordingUpstream(): Promise<{ url: string; seen: Recorded[]; close(): void }> {
  const seen: Recorded[] = [];
  const server = http.createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', rawHeaders: req.rawHeaders, body: Buffer.concat(parts) });
      res.end('recorded');
    });
  });
  server.on('clientError', (_e, s) => s.destroy());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    seen,
    close: () => {
      server.close();
      server.closeAllConnections();
    },
  };
}

/** A TCP server that, once a request head has arrived, plays `script` on the raw socket. */
export async function scriptedUpstream(script: (socket: net.Socket, request: string) => void): Promise<{ port: number; requests: string[]; close(): void }> {
  const requests: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buf = '';
    let played = false;
    socket.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      if (!played && buf.includes('\r\n\r\n')) {
        played = true;
        requests.push(buf);
        script(socket, buf);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    requests,
    close: () => {
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
}

export interface UwsgiRequest {
  vars: UwsgiVars;
  body: Buffer;
}

/**
 * A uwsgi server on 127.0.0.1 (the role of a real uWSGI) that reads one packet and its
 * CONTENT_LENGTH body per connection, records it, then plays `script` on the raw socket.
 * `onHead` runs as soon as the vars are in, before the body (to cut a request mid-way).
 */
export async function fakeUwsgi(
  script: (socket: net.Socket, req: UwsgiRequest) => void,
  onHead?: (socket: net.Socket, vars: UwsgiVars) => boolean,
): Promise<{ port: number; target: string; seen: UwsgiRequest[]; heads: UwsgiVars[]; close(): void }> {
  const seen: UwsgiRequest[] = [];
  const heads: UwsgiVars[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    const decoder = new PacketHeadDecoder();
    let vars: UwsgiVars | null = null;
    let want = 0;
    const body: Buffer[] = [];
    let have = 0;
    socket.on('data', (chunk: Buffer) => {
      let off = 0;
      if (!vars) {
        const got = decoder.push(chunk);
        if (!got) return;
        vars = got.head.vars;
        heads.push(vars);
        want = Number(getVar(vars, 'CONTENT_LENGTH') || 0);
        off = got.rest;
        if (onHead && onHead(socket, vars)) return;
      }
      const part = chunk.subarray(off);
      body.push(part);
      have += part.length;
      if (have >= want && seen.length < heads.length) {
        const req = { vars, body: Buffer.concat(body).subarray(0, want) };
        seen.push(req);
        script(socket, req);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    target: `uwsgi://127.0.0.1:${port}`,
    seen,
    heads,
    close: () => {
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
}

/** A free 127.0.0.1 port nobody listens on (connections are refused). */
export async function refusingPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

// --- metrics ---------------------------------------------------------------------------------

/** The value of one sample of /metrics (Prometheus text), matched by name and labels; 0 if absent. */
export async function metric(admin: string, name: string, labels: Record<string, string> = {}, headers: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${admin}/metrics`, { headers })).text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = /^[^{ ]+(?:\{(.*)\})? (\S+)/.exec(line);
    if (!m) continue;
    const have = Object.fromEntries([...(m[1] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) total += Number(m[2]);
  }
  return total;
}

/** Resident memory of a process (VmRSS), in bytes. */
export function rssOf(pid: number, read: (p: string) => string): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(read(`/proc/${pid}/status`));
  return m ? Number(m[1]) * 1024 : 0;
}

/**
 * Open `n` keep-alive connections to 127.0.0.1:`port`, `parallel` at a time; each asks `path`
 * once (so the server holds it as an idle kept connection, not a half-open one) and then idles.
 */
export async function openIdleConnections(port: number, n: number, path = '/', parallel = 200): Promise<RawConn[]> {
  const conns: RawConn[] = [];
  let next = 0;
  const lane = async () => {
    while (next < n) {
      next++;
      const c = await RawConn.open(port);
      c.write(`GET ${path} HTTP/1.1\r\nHost: idle.test\r\n\r\n`);
      const r = await c.next(30_000);
      if (r.status !== 200 || r.closed) throw new Error(`idle connection ${conns.length}: got ${r.status}${r.closed ? ' and a close' : ''}`);
      conns.push(c);
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, n) }, lane));
  return conns;
}
