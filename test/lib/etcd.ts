import { startEtcdProcess, type EtcdProcess } from '../../bench/etcd-server.js';

// A real etcd for the cluster tests (bench/etcd-server.ts, shared with the scale bench): one member on
// loopback, its data in the test's directory, stopped at teardown.

export type EtcdServer = Pick<EtcdProcess, 'endpoint' | 'log'>;

export async function startEtcd(t: { teardown(fn: () => unknown): void }, dir: string): Promise<EtcdServer> {
  const etcd = await startEtcdProcess(dir, 'vrg-test');
  t.teardown(() => etcd.stop());
  return etcd;
}
