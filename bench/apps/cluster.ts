// The shared launcher of the Node reference rows: WORKERS (2) processes with node:cluster on
// 127.0.0.1:PORT. Linux's cluster default is round-robin (SCHED_RR): the primary accepts each
// connection and hands it to a worker; connections here are kept alive, so that hand-off happens
// once per connection, not per request. Prints "ready" once every worker listens; a worker that
// dies ends the row.
import cluster from 'node:cluster';

export const port = Number(process.env.PORT);
const workers = Number(process.env.WORKERS ?? 2);

/** In the primary: fork and supervise. In a worker: run `serve` (which listens on `port`). */
export async function runCluster(serve: () => Promise<void> | void): Promise<void> {
  if (!cluster.isPrimary) return serve();
  let listening = 0;
  cluster.on('listening', () => {
    if (++listening === workers) console.log('ready');
  });
  cluster.on('exit', (worker, code, signal) => {
    console.error(`worker ${worker.process.pid} exited (${signal ?? code})`);
    process.exit(1);
  });
  for (let i = 0; i < workers; i++) cluster.fork();
}
