// The hello-world Fastify app shared by the Fastify rows and the Stratum rows: Stratum's workers
// host this module (`--app bench/apps/fastify-hello.ts`), fastify-cluster.ts listens with it.
// GET / answers {"hello":"world"} (Content-Type application/json; charset=utf-8), the same bytes
// as every other row of the benchmark.
import Fastify from 'fastify';

const app = Fastify({ logger: false });

app.get('/', async () => ({ hello: 'world' }));

export default app;
