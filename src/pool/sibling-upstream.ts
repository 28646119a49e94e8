// The route to another app's pool from a front in a worker (worker topology, src/pool/apps.ts): uwsgi over
// kept connections to that app's socket. When that app is rolled, a worker that drains closes its idle kept
// connections; a request sent on one at that moment is reset before the app saw it. As nginx retries an
// idempotent request on another connection after such an error (proxy_next_upstream error, not for
// non-idempotent methods), a GET, HEAD or OPTIONS without a body that was reset before any byte of the
// answer came back is sent again, on a fresh or another kept connection, up to twice.

import type { StratumError } from '../errors.ts';
import type { ProxyContext, RequestBody, Upstream } from '../proxy/upstream.ts';

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS']);
const RETRIES = 2;

export class SiblingPoolUpstream implements Upstream {
  readonly kind: Upstream['kind'];
  readonly label: string;
  #inner: Upstream;

  constructor(inner: Upstream) {
    this.#inner = inner;
    this.kind = inner.kind;
    this.label = inner.label;
  }

  async handle(ctx: ProxyContext, body: RequestBody | null): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#inner.handle(ctx, body);
      } catch (err) {
        const code = (err as StratumError).code;
        const untouched = body === null && IDEMPOTENT.has(ctx.req.method ?? '') && !ctx.res.headersSent;
        if (code !== 'STRATUM_ERR_UPSTREAM_RESET' || !untouched || attempt >= RETRIES || ctx.req.destroyed) throw err;
      }
    }
  }

  close(): void {
    this.#inner.close();
  }
}
