// Throwaway certificates for the TLS tests, made by the real openssl in a temp dir: self-signed
// (each is its own trust anchor for curl --cacert), EC P-256, with the SNI names as subjectAltName.
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TestCert {
  cert: string;
  key: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A certificate for `names` (the first is its CN), valid `days` days from now. */
export function makeCert(dir: string, file: string, names: string[], days = 30): TestCert {
  const cert = join(dir, `${file}.crt`);
  const key = join(dir, `${file}.key`);
  openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      String(days),
      '-subj',
      `/CN=${names[0]}`,
      '-addext',
      `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}`,
    ],
    dir,
  );
  return { cert, key };
}

/** A certificate that expired in 2020 (openssl req has no past dates; openssl ca has). */
export function makeExpiredCert(dir: string, file: string, name: string): TestCert {
  const ca = join(dir, `${file}-ca`);
  mkdirSync(ca, { recursive: true });
  writeFileSync(join(ca, 'index.txt'), '');
  writeFileSync(join(ca, 'serial'), '01\n');
  writeFileSync(
    join(ca, 'ca.cnf'),
    '[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\ndefault_md = sha256\n' +
      'policy = p\n[p]\ncommonName = supplied\n',
  );
  const cert = join(dir, `${file}.crt`);
  const key = join(dir, `${file}.key`);
  openssl(
    [
      'req',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      key,
      '-out',
      'req.csr',
      '-subj',
      `/CN=${name}`,
    ],
    ca,
  );
  openssl(
    [
      'ca',
      '-batch',
      '-config',
      'ca.cnf',
      '-selfsign',
      '-keyfile',
      key,
      '-in',
      'req.csr',
      '-out',
      cert,
      '-startdate',
      '20200101000000Z',
      '-enddate',
      '20200102000000Z',
      '-notext',
    ],
    ca,
  );
  return { cert, key };
}
