import forge from 'node-forge';

// X.509 material for TLS tests: a CA and a server certificate it signed (SAN 127.0.0.1 and localhost), as an
// operator's PKI would hand out; written in the file names qemu's tls-creds-x509 and libnbd expect.

export interface TestPki { caCert: string; serverCert: string; serverKey: string }

function keyPair(): forge.pki.rsa.KeyPair {
  return forge.pki.rsa.generateKeyPair({ bits: 2048, e: 0x10001 });
}

function certificate(subject: string, publicKey: forge.pki.PublicKey, serial: string): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  cert.serialNumber = serial;
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 86_400_000);
  cert.setSubject([{ name: 'commonName', value: subject }]);
  return cert;
}

export function makeTestPki(): TestPki {
  const caKeys = keyPair();
  const ca = certificate('VRG test CA', caKeys.publicKey, '01');
  ca.setIssuer(ca.subject.attributes);
  ca.setExtensions([{ name: 'basicConstraints', cA: true }, { name: 'keyUsage', keyCertSign: true, cRLSign: true }]);
  ca.sign(caKeys.privateKey, forge.md.sha256.create());
  const keys = keyPair();
  const leaf = certificate('127.0.0.1', keys.publicKey, '02');
  leaf.setIssuer(ca.subject.attributes);
  leaf.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }, { type: 2, value: 'localhost' }] },
  ]);
  leaf.sign(caKeys.privateKey, forge.md.sha256.create());
  return {
    caCert: forge.pki.certificateToPem(ca),
    serverCert: forge.pki.certificateToPem(leaf),
    serverKey: forge.pki.privateKeyToPem(keys.privateKey),
  };
}
