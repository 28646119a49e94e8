// Rows fastify and http-proxy-fastify: the Fastify hello app in WORKERS (2) processes with
// node:cluster on 127.0.0.1:PORT. Linux's cluster default is round-robin (SCHED_RR): the primary
// accepts each connection and hands it to a worker; the connections here are kept alive, so that
// hand-off happens once per connection, not per request. Prints "ready" once every worker listens.
import cluster from 'node:cluster';

const port = Number(process.env.PORT);
const workers = Number(process.env.WORKERS ?? 2);

if (cluster.isPrimary) {
  let listening = 0;
  cluster.on('listening', () => {
    if (++listening === workers) console.log('ready');
  });
  cluster.on('exit', (worker, code, signal) => {
    console.error(`worker ${worker.process.pid} exited (${signal ?? code})`);
    process.exit(1);
  });
  for (let i = 0; i < workers; i++) cluster.fork();
} else {
  const { default: app } = await import('./fastify-hello.ts');
  await app.listen({ host: '127.0.0.1', port });
}
