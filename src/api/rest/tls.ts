import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { open, readFile, rename } from 'node:fs/promises';
import forge from 'node-forge';

// The HTTPS listener's certificate: the operator's PEM files when the config names them, else a
// self-signed one (RSA 2048, SHA-256, 10 years, CN = the gateway id, SAN = the listen host, 127.0.0.1 and
// localhost) generated with node-forge on first start and kept under dataDir/api (key mode 0600), so
// clients can pin it across restarts. Paired gateways pin each other's by certFingerprint().

export interface TlsMaterial {
  key: string;
  cert: string;
}

async function writeAtomic(path: string, text: string, mode: number): Promise<void> {
  const fh = await open(`${path}.tmp`, 'w', mode);
  try {
    await fh.writeFile(text, 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(`${path}.tmp`, path);
}

/** A certificate's fingerprint as pairing keys carry it: lowercase hex SHA-256 of its DER. */
export function derFingerprint(der: Buffer): string {
  return createHash('sha256').update(der).digest('hex');
}

/** The fingerprint of the PEM's first certificate (the leaf of a chain). */
export function certFingerprint(certPem: string): string {
  return derFingerprint(new X509Certificate(certPem).raw);
}

export function generateSelfSigned(commonName: string, host: string): TlsMaterial {
  const keys = forge.pki.rsa.generateKeyPair({ bits: 2048, e: 0x10001 });
  const cert = forge.pki.createCertificate();
  cert.publicKey = keys.publicKey;
  cert.serialNumber = `01${randomBytes(15).toString('hex')}`; // positive, 16 bytes
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 10 * 365 * 86_400_000);
  const attrs = [{ name: 'commonName', value: commonName }, { name: 'organizationName', value: 'VRG' }];
  cert.setSubject(attrs);
  cert.setIssuer(attrs);
  const ips = [...new Set(['127.0.0.1', ...(/^\d+\.\d+\.\d+\.\d+$/.test(host) && host !== '0.0.0.0' ? [host] : [])])];
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: [{ type: 2, value: 'localhost' }, ...ips.map((ip) => ({ type: 7, ip }))] },
  ]);
  cert.sign(keys.privateKey, forge.md.sha256.create());
  return { key: forge.pki.privateKeyToPem(keys.privateKey), cert: forge.pki.certificateToPem(cert) };
}

/** The operator's files, else the kept self-signed pair under `dir`, generated on first use. */
export async function loadOrCreateTls(opts: { dir: string; commonName: string; host: string; certFile?: string; keyFile?: string }): Promise<TlsMaterial> {
  if (opts.certFile !== undefined && opts.keyFile !== undefined) {
    return { cert: await readFile(opts.certFile, 'utf8'), key: await readFile(opts.keyFile, 'utf8') };
  }
  const [certPath, keyPath] = [`${opts.dir}/https-cert.pem`, `${opts.dir}/https-key.pem`];
  try {
    return { cert: await readFile(certPath, 'utf8'), key: await readFile(keyPath, 'utf8') };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const made = generateSelfSigned(opts.commonName, opts.host);
  await writeAtomic(keyPath, made.key, 0o600); // key first: a cert without its key is never left behind
  await writeAtomic(certPath, made.cert, 0o644);
  return made;
}
