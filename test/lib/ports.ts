// Loopback ports for the outside agents a test starts (nbdkit, qemu-nbd): one free now, and whether one accepts.

export { freePort, probe } from '../../src/core/free-port.js';
