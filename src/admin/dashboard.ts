// The dashboard page on the admin listener: dashboard/dist (built from dashboard/ by
// `npm run build`), index.html at `/` and its content-hashed files under /assets/.
//
// The page is public — it is static and holds no data; every figure it shows comes from the
// token-guarded endpoints (/live, /traces), which it calls with the token it is given. A strict
// Content-Security-Policy keeps it to this origin: no inline code, nothing fetched elsewhere.

import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import type { AdminRoute } from './server.ts';

export const DASHBOARD_DIST = fileURLToPath(new URL('../../dashboard/dist/', import.meta.url));

const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.woff2': 'font/woff2',
  '.png': 'image/png',
};

const NOT_BUILT = `<!doctype html><meta charset="utf-8"><title>Stratum</title>
<h1>The dashboard is not built</h1>
<p>Run <code>npm run build</code> in the Stratum checkout (it writes <code>dashboard/dist/</code>), then reload.
The figures it shows are also at <code>/stats</code>, <code>/traces</code>, <code>/live</code> and \
<code>/metrics</code>.</p>
`;

interface Asset {
  body: Buffer;
  gzip: Buffer | null;
  type: string;
}

function send(req: IncomingMessage, res: ServerResponse, status: number, asset: Asset, cache: string): void {
  const gzip = asset.gzip && /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? '')) ? asset.gzip : null;
  const body = gzip ?? asset.body;
  res.writeHead(status, {
    'content-type': asset.type,
    'content-length': body.length,
    'cache-control': cache,
    'content-security-policy': CSP,
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    vary: 'accept-encoding',
    ...(gzip ? { 'content-encoding': 'gzip' } : {}),
  });
  res.end(body);
}

function asset(body: Buffer, type: string): Asset {
  return {
    body,
    type,
    gzip: body.length > 1024 && !type.startsWith('image/png') && !type.startsWith('font/') ? gzipSync(body) : null,
  };
}

/** GET / (the page) and GET /assets/<file> (its script and styles), served from `dist`. */
export function dashboardRoutes(dist = DASHBOARD_DIST): AdminRoute[] {
  // Asset names carry a hash of their content, so one read serves until the process ends;
  // index.html is read on every request, so a rebuild shows without a restart.
  const assets = new Map<string, Asset>();
  return [
    {
      method: 'GET',
      path: '/',
      public: true,
      handler: async (req, res) => {
        const html = await readFile(`${dist}index.html`).catch(() => null);
        if (html) send(req, res, 200, asset(html, TYPES['.html']!), 'no-cache');
        else send(req, res, 503, asset(Buffer.from(NOT_BUILT), TYPES['.html']!), 'no-store');
      },
    },
    {
      method: 'GET',
      path: '/assets/',
      prefix: true,
      public: true,
      handler: async (req, res, url) => {
        const name = url.pathname.slice('/assets/'.length);
        const type = TYPES[extname(name)];
        let found = assets.get(name);
        // One plain file name: no directories, no dot files, nothing that could climb out.
        if (!found && type && /^[\w-][\w.-]*$/.test(name)) {
          const body = await readFile(`${dist}assets/${name}`).catch(() => null);
          if (body) {
            found = asset(body, type);
            assets.set(name, found);
          }
        }
        if (found) send(req, res, 200, found, 'public, max-age=31536000, immutable');
        else {
          res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' });
          res.end('Not Found\n');
        }
      },
    },
  ];
}
