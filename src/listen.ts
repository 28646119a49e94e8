// Binding an HTTP listener (front proxy, admin) to a configured address, and the URL people
// and tests read back from the ready line (with the port the OS picked for `:0`).

import type { Server } from 'node:net';
import { parseAddress } from './config/schema.ts';

export function listenAt(
  server: Server,
  address: string,
  field: string,
  backlog = 511,
  scheme: 'http' | 'https' = 'http',
): Promise<string> {
  const a = parseAddress(address, field);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const done = () => {
      server.off('error', reject);
      const addr = server.address();
      resolve(
        typeof addr === 'string'
          ? `unix:${addr}`
          : `${scheme}://${addr!.family === 'IPv6' ? `[${addr!.address}]` : addr!.address}:${addr!.port}`,
      );
    };
    if (a.kind === 'unix') server.listen({ path: a.path, backlog }, done);
    else server.listen({ host: a.host, port: a.port, backlog }, done);
  });
}
