// Stratum's proxy in front of a real uWSGI running the Flask fixture (`--route /=uwsgi://…`): the
// proxy must speak plain uwsgi to a foreign server, which closes after each response and reads
// exactly CONTENT_LENGTH bytes of body.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { httpCases } from '../cases.ts';
import { requirePeer, startUwsgi, type PeerProcess } from '../helpers/peers.ts';
import { makeTempDir } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';

afterAll(stopAllStratum);

describe.skipIf(!requirePeer('uwsgi'))('stratum serve → uWSGI → Flask', () => {
  let uwsgi: PeerProcess;
  let stratum: StratumProcess;
  beforeAll(async () => {
    uwsgi = await startUwsgi();
    const dir = makeTempDir('serve-flask');
    stratum = await startStratum([
      'serve',
      '--listen', '127.0.0.1:0',
      '--admin', '127.0.0.1:0',
      '--socket', join(dir, 'pool.sock'),
      '--socket-mode', '0666',
      '--workers', '2',
      // the pool needs an app; every request is routed to uWSGI, so this one only idles
      '--app', join(REPO_ROOT, 'test/fixtures/apps/fastify.ts'),
      '--route', `/=uwsgi://${uwsgi.address}`,
    ]);
  });
  afterAll(async () => {
    if (stratum) expect(await stratum.stop(), 'exit code after SIGTERM').toBe(0);
    await uwsgi?.stop();
  });

  httpCases('flask via stratum', () => stratum.front!, { kind: 'flask', via: 'stratum' });
});
