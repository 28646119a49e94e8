// Rows fastify and http-proxy-fastify: the Fastify hello app in node:cluster (see cluster.ts).
import { port, runCluster } from './cluster.ts';

await runCluster(async () => {
  const { default: app } = await import('./fastify-hello.ts');
  await app.listen({ host: '127.0.0.1', port });
});
