// A static folder (nginx's `root` + `try_files $uri $uri/index.html`): GET and HEAD, ETag and
// Last-Modified with 304, and no way out of the root — the path is percent-decoded once, any
// "..", "\\" or NUL segment is refused (so "%2e%2e" and "%252e" both fail), and the resolved
// real path must stay inside the real root (symlinks included).

import { createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { RouteNotFound, StaticForbidden } from '../errors.ts';
import { sendHead, type ProxyContext, type Upstream } from './upstream.ts';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.htm': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.ico': 'image/x-icon',
  '.wasm': 'application/wasm',
  '.woff2': 'font/woff2',
  '.pdf': 'application/pdf',
  '.xml': 'application/xml',
  '.map': 'application/json',
};

export class StaticUpstream implements Upstream {
  readonly kind = 'static' as const;
  readonly label: string;
  #root: string;
  #realRoot: Promise<string>;

  constructor(root: string) {
    this.#root = path.resolve(root);
    this.label = `static:${this.#root}`;
    this.#realRoot = fsp.realpath(this.#root);
  }

  async handle(ctx: ProxyContext): Promise<void> {
    const { req, res } = ctx;
    ctx.timings.connectAt = performance.now();
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('Method Not Allowed\n');
      ctx.timings.headAt = ctx.timings.endAt = performance.now();
      return;
    }
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const raw = q >= 0 ? url.slice(0, q) : url;
    const prefix = ctx.route.path === '/' ? '' : ctx.route.path.replace(/\/$/, '');
    // Routes match the normalised path: a raw one that does not start with the prefix ("//static/x",
    // "/%73tatic/x") cannot be cut at the prefix's length, and is no canonical file name either.
    if (!raw.startsWith(prefix)) throw new StaticForbidden(raw);
    let rel = raw.slice(prefix.length);
    try {
      rel = decodeURIComponent(rel);
    } catch {
      throw new StaticForbidden(rel);
    }
    // One decoding pass only: a "%" still there afterwards is a double-encoding attempt.
    const segments = rel.split('/');
    if (rel.includes('\0') || rel.includes('\\') || segments.some((s) => s === '..' || s === '.' || s.includes('%')))
      throw new StaticForbidden(rel);
    let file = path.join(this.#root, rel);
    let stat = await fsp.stat(file).catch(() => null);
    if (stat?.isDirectory()) {
      file = path.join(file, 'index.html');
      stat = await fsp.stat(file).catch(() => null);
    }
    if (!stat || !stat.isFile()) throw new RouteNotFound(req.headers.host ?? '', url);
    const real = await fsp.realpath(file);
    const root = await this.#realRoot;
    if (real !== root && !real.startsWith(root + path.sep)) throw new StaticForbidden(rel);
    const etag = `W/"${stat.size.toString(16)}-${Math.floor(stat.mtimeMs).toString(16)}"`;
    const lastModified = stat.mtime.toUTCString();
    const headers = [
      'content-type',
      TYPES[path.extname(file).toLowerCase()] ?? 'application/octet-stream',
      'etag',
      etag,
      'last-modified',
      lastModified,
    ];
    const inm = req.headers['if-none-match'];
    const ims = req.headers['if-modified-since'];
    ctx.timings.headAt = performance.now();
    if (
      (inm && inm.split(',').some((t) => t.trim() === etag)) ||
      (!inm && ims && Date.parse(ims) >= Math.floor(stat.mtimeMs / 1000) * 1000)
    ) {
      sendHead(ctx, 304, 'Not Modified', headers);
      res.end();
      ctx.timings.endAt = performance.now();
      return;
    }
    headers.push('content-length', String(stat.size));
    sendHead(ctx, 200, 'OK', headers);
    if (req.method === 'HEAD') {
      res.end();
      ctx.timings.endAt = performance.now();
      return;
    }
    await new Promise<void>((resolve) => {
      const stream = createReadStream(real);
      stream.on('data', (c) => {
        ctx.bytesOut += c.length;
      });
      stream.pipe(res);
      stream.once('error', () => {
        res.destroy();
        resolve();
      });
      res.once('close', () => {
        stream.destroy();
        resolve();
      });
    });
    ctx.timings.endAt = performance.now();
  }

  close(): void {}
}
