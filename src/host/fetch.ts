// Adapter: a Fetch-style handler `(Request) → Response` served as a Node (req, res) listener.
// The request body streams in (duplex: 'half'); the response body streams out with
// backpressure; Set-Cookie stays a list (Headers.getSetCookie()).

import { Readable } from 'node:stream';
import type { IncomingMessage, ServerResponse } from 'node:http';

/**
 * The second argument a fetch handler receives: the peer (a Request has no place for it) and
 * the Node objects, named as @hono/node-server names them so Hono's getConnInfo() works.
 */
export interface FetchConnInfo {
  remoteAddress: string;
  remotePort: number;
  scheme: 'http' | 'https';
  incoming: IncomingMessage;
  outgoing: ServerResponse;
}

export interface FetchHandler {
  fetch(request: Request, info: FetchConnInfo): Response | Promise<Response>;
}

export function fetchListener(handler: (request: Request, info: FetchConnInfo) => Response | Promise<Response>) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    let request: Request;
    try {
      request = toRequest(req, res);
    } catch (err) {
      return fail(res, err);
    }
    const socket = req.socket as IncomingMessage['socket'] & { encrypted?: boolean };
    const info: FetchConnInfo = {
      remoteAddress: socket.remoteAddress ?? '',
      remotePort: socket.remotePort ?? 0,
      scheme: socket.encrypted ? 'https' : 'http',
      incoming: req,
      outgoing: res,
    };
    Promise.resolve()
      .then(() => handler(request, info))
      .then((response) => writeResponse(response, res, req.method === 'HEAD'))
      .catch((err) => fail(res, err));
  };
}

function toRequest(req: IncomingMessage, res: ServerResponse): Request {
  const scheme = (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http';
  const host = req.headers.host ?? 'localhost';
  const headers = new Headers();
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) headers.append(raw[i]!, raw[i + 1]!);
  const method = req.method ?? 'GET';
  const hasBody = method !== 'GET' && method !== 'HEAD';
  const controller = new AbortController();
  res.once('close', () => {
    if (!res.writableFinished) controller.abort();
  });
  return new Request(`${scheme}://${host}${req.url ?? '/'}`, {
    method,
    headers,
    body: hasBody ? (Readable.toWeb(req) as unknown as ReadableStream) : null,
    duplex: 'half',
    signal: controller.signal,
  } as RequestInit);
}

async function writeResponse(response: Response, res: ServerResponse, isHead: boolean): Promise<void> {
  const headers: string[] = [];
  response.headers.forEach((value, name) => {
    if (name !== 'set-cookie') headers.push(name, value);
  });
  for (const cookie of response.headers.getSetCookie()) headers.push('set-cookie', cookie);
  res.writeHead(response.status, response.statusText || undefined, headers);
  if (!response.body || isHead) {
    res.end();
    await response.body?.cancel().catch(() => {});
    return;
  }
  const reader = response.body.getReader();
  res.once('close', () => {
    if (!res.writableFinished) reader.cancel().catch(() => {});
  });
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (!res.write(value)) await new Promise<void>((r) => res.once('drain', r).once('close', r));
    if (res.destroyed) return;
  }
  res.end();
}

function fail(res: ServerResponse, err: unknown): void {
  (res as ServerResponse & { stratumError?: unknown }).stratumError = err;
  if (res.headersSent) {
    res.destroy(err as Error);
    return;
  }
  res.writeHead(500, { 'content-type': 'text/plain' }).end('Internal Server Error\n');
}
