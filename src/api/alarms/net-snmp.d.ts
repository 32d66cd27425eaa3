// The part of npm `net-snmp` (no bundled types) the alarm sender uses.
declare module 'net-snmp' {
  export const Version2c: number;
  export const ObjectType: { OctetString: number; Integer: number; OID: number; TimeTicks: number };
  export interface Varbind { oid: string; type: number; value: unknown }
  export interface Session {
    trap(typeOrOid: string, varbinds: Varbind[], callback: (err: Error | null) => void): void;
    close(): void;
    on(event: 'error', fn: (err: Error) => void): void;
  }
  export function createSession(target: string, community: string,
    options: { version: number; trapPort?: number; port?: number; timeout?: number; retries?: number }): Session;
  const snmp: { Version2c: number; ObjectType: typeof ObjectType; createSession: typeof createSession };
  export default snmp;
}
