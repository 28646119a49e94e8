// The admin API as the page reaches it: JSON fetches and the /live Server-Sent Events stream.
//
// With an admin token set, every endpoint wants `Authorization: Bearer …`. The page takes the
// token once from `?token=`, keeps it in sessionStorage and drops it from the address bar.
// EventSource cannot send headers, so with a token the stream is read through fetch() instead,
// with the same events and the same reconnection (the server's `retry:` delay).

import type { LiveTick } from './model.ts';

const TOKEN_KEY = 'stratum.admin.token';

function takeToken(): string | null {
  const url = new URL(location.href);
  const given = url.searchParams.get('token');
  if (given !== null) {
    sessionStorage.setItem(TOKEN_KEY, given);
    url.searchParams.delete('token');
    history.replaceState(history.state, '', url);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

const token = takeToken();

/** Admin URLs relative to the page, so a prefix added by a reverse proxy still works. */
function endpoint(path: string): string {
  return new URL(path.replace(/^\//, ''), new URL('.', location.href)).href;
}

export class HttpError extends Error {
  readonly status: number;
  constructor(status: number, path: string) {
    super(`${path}: HTTP ${status}`);
    this.status = status;
  }
}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  const res = await fetch(endpoint(path), {
    headers: token ? { authorization: `Bearer ${token}` } : {},
    cache: 'no-store',
    signal,
  });
  if (!res.ok) throw new HttpError(res.status, path);
  return (await res.json()) as T;
}

export type LinkState = 'connecting' | 'connected' | 'reconnecting' | 'unauthorized';

export interface LiveHandlers {
  history(ticks: LiveTick[]): void;
  tick(tick: LiveTick): void;
  state(state: LinkState): void;
}

/** Opens /live and keeps it open: every (re)connection starts with the whole history. */
export function openLive(on: LiveHandlers): void {
  if (token) void streamWithFetch(on);
  else streamWithEventSource(on);
}

function streamWithEventSource(on: LiveHandlers): void {
  on.state('connecting');
  const es = new EventSource(endpoint('/live'));
  es.addEventListener('open', () => on.state('connected'));
  es.addEventListener('history', (e) => on.history(JSON.parse((e as MessageEvent<string>).data) as LiveTick[]));
  es.addEventListener('tick', (e) => on.tick(JSON.parse((e as MessageEvent<string>).data) as LiveTick));
  es.addEventListener('error', () => {
    if (es.readyState === EventSource.CONNECTING) return on.state('reconnecting');
    // CLOSED: the browser gave up (an HTTP error, not a dropped connection). Find out which, then
    // start over, since an admin server being restarted answers again soon.
    es.close();
    on.state('reconnecting');
    void getJson('/live/history').then(
      () => setTimeout(() => streamWithEventSource(on), 2000),
      (err: unknown) =>
        err instanceof HttpError && err.status === 401
          ? on.state('unauthorized')
          : setTimeout(() => streamWithEventSource(on), 2000),
    );
  });
}

async function streamWithFetch(on: LiveHandlers): Promise<void> {
  let retryMs = 2000;
  on.state('connecting');
  for (;;) {
    try {
      const res = await fetch(endpoint('/live'), {
        headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
        cache: 'no-store',
      });
      if (res.status === 401) return on.state('unauthorized');
      if (!res.ok || !res.body) throw new HttpError(res.status, '/live');
      on.state('connected');
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffered = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += value.replace(/\r\n?/g, '\n');
        let end: number;
        while ((end = buffered.indexOf('\n\n')) >= 0) {
          const block = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          let event = 'message';
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue;
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
            if (field === 'event') event = val;
            else if (field === 'data') data.push(val);
            else if (field === 'retry' && /^\d+$/.test(val)) retryMs = Number(val);
          }
          if (data.length === 0) continue;
          if (event === 'history') on.history(JSON.parse(data.join('\n')) as LiveTick[]);
          else if (event === 'tick') on.tick(JSON.parse(data.join('\n')) as LiveTick);
        }
      }
    } catch {
      // A refused or dropped connection: wait and try again, as EventSource would.
    }
    on.state('reconnecting');
    await new Promise((resolve) => setTimeout(resolve, retryMs));
  }
}
