import { connect } from 'node:net';

// Loopback ports for the outside agents a test starts (nbdkit, qemu-nbd): one free now, and whether one accepts.

export { freePort } from '../../src/core/free-port.js';

/** True when something accepts TCP connections on 127.0.0.1:port. */
export function probe(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}
