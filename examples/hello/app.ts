// The bundled example app, served by `npm start` (config/stratum.yaml): a plain Fastify instance,
// exported as default. Stratum's workers host it; it knows nothing of the proxy in front.
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import Fastify from 'fastify';

const MAX_SLEEP_MS = 60_000;
const MAX_DOWNLOAD = 1024 * 1024 * 1024;
const CHUNK = 64 * 1024;

const app = Fastify({ bodyLimit: 100 * 1024 * 1024 });

// Uploads stay streams whatever their type: no parser buffers the body, /upload reads request.raw.
app.removeAllContentTypeParsers();
app.addContentTypeParser('*', (_request, _payload, done) => done(null));

app.get('/', async () => ({ hello: 'world', from: 'stratum example', pid: process.pid }));

app.get<{ Querystring: { ms?: string } }>('/slow', async (request) => {
  const ms = Math.min(Math.max(Number(request.query.ms) || 0, 0), MAX_SLEEP_MS);
  await sleep(ms);
  return { slept: ms };
});

app.post('/upload', async (request) => {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of request.raw as AsyncIterable<Buffer>) {
    bytes += chunk.length;
    hash.update(chunk);
  }
  return { bytes, sha256: hash.digest('hex') };
});

function* pattern(total: number): Generator<Buffer> {
  for (let offset = 0; offset < total; offset += CHUNK) {
    const size = Math.min(CHUNK, total - offset);
    const chunk = Buffer.allocUnsafe(size);
    for (let i = 0; i < size; i++) chunk[i] = (offset + i) % 251;
    yield chunk;
  }
}

app.get<{ Params: { bytes: string } }>('/download/:bytes', async (request, reply) => {
  const total = Number(request.params.bytes);
  if (!Number.isInteger(total) || total < 0 || total > MAX_DOWNLOAD) {
    return reply.code(400).send({ error: `bytes must be an integer from 0 to ${MAX_DOWNLOAD}` });
  }
  // Streamed without Content-Length: the length is known only once the last chunk is out.
  return reply.type('application/octet-stream').send(Readable.from(pattern(total), { objectMode: false }));
});

app.get('/fail', async () => {
  throw new Error('this route fails on purpose');
});

export default app;
