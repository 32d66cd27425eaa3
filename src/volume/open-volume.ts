import { fileURLToPath } from 'node:url';
import { ErrorCode, vrgError } from '../core/errors.js';
import { FileVolume } from './file-volume.js';
import { NBD_DEFAULT_PORT, NbdVolume, type NbdVolumeOptions } from './nbd-volume.js';
import type { Volume } from './volume.js';

export type VolumeLocation =
  | { kind: 'file'; path: string }
  | { kind: 'nbd'; host: string; port: number; exportName: string };

function bad(url: string, why: string): never {
  throw vrgError(ErrorCode.INVALID_ARGUMENT, `invalid volume url '${url}': ${why}`, { url });
}

/**
 * Accepted forms: a plain path (`/srv/vol.img`, `vol.img`), `file:///abs/path`,
 * `nbd://host:port/export`, `nbd://host/export` (port 10809), `nbd://[::1]:10809/export`.
 * The export name is the percent-decoded path after the first `/`; `nbd://host` or `nbd://host/` means the
 * server's default export (the empty name). TLS (`nbds://`), unix sockets (`nbd+unix://`), query strings,
 * fragments and user info are refused.
 */
export function parseVolumeUrl(url: string): VolumeLocation {
  if (typeof url !== 'string' || url.length === 0) bad(String(url), 'empty');
  if (url.includes('\0')) bad(url, 'contains a NUL byte');
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(url)?.[1]?.toLowerCase();
  if (scheme === undefined || (scheme.length === 1 && /^[a-zA-Z]:[\\/]/.test(url))) return { kind: 'file', path: url };
  if (scheme === 'file') return parseFileUrl(url);
  if (scheme === 'nbd') return parseNbdUrl(url);
  if (!url.includes('://')) return { kind: 'file', path: url }; // a relative path with a colon, e.g. `vm:1.img`
  return bad(url, `unsupported scheme '${scheme}:' (use a path, file:///path or nbd://host:port/export)`);
}

function parseFileUrl(url: string): VolumeLocation {
  if (!url.toLowerCase().startsWith('file://')) bad(url, 'expected file:///absolute/path');
  let path: string;
  try {
    path = fileURLToPath(url);
  } catch (err) {
    return bad(url, (err as Error).message);
  }
  if (path.length === 0 || path.endsWith('/')) bad(url, 'no file path');
  return { kind: 'file', path };
}

function parseNbdUrl(url: string): VolumeLocation {
  if (!url.toLowerCase().startsWith('nbd://')) bad(url, 'expected nbd://host[:port]/export');
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return bad(url, 'malformed (expected nbd://host[:port]/export, IPv6 hosts in brackets)');
  }
  if (u.username !== '' || u.password !== '') bad(url, 'user info is not supported');
  if (u.search !== '' || u.hash !== '') bad(url, 'query strings and fragments are not supported');
  let host = u.hostname;
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (host === '') bad(url, 'no host');
  const port = u.port === '' ? NBD_DEFAULT_PORT : Number(u.port);
  if (!Number.isInteger(port) || port < 1 || port > 65_535) bad(url, `bad port '${u.port}'`);
  let exportName: string;
  try {
    exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  } catch {
    return bad(url, 'export name is not valid percent-encoding');
  }
  if (Buffer.byteLength(exportName, 'utf8') > 4096) bad(url, 'export name longer than 4096 bytes');
  return { kind: 'nbd', host, port, exportName };
}

/**
 * Opens a volume by url. Files: FileVolume.open (with `create`, created or grown to `sizeBytes`).
 * NBD: never created or resized — `create` is ignored; with `sizeBytes`, an export smaller than that
 * fails with VRG_VOLUME_IO. `nbd` passes timeouts/bounds/transport to the NBD client.
 */
export async function openVolume(url: string, opts: { sizeBytes?: number; create?: boolean; nbd?: Omit<NbdVolumeOptions, 'sizeBytes'> } = {}):
    Promise<Volume> {
  const loc = parseVolumeUrl(url);
  if (loc.kind === 'file') {
    const fileOpts: { sizeBytes?: number; create?: boolean } = {};
    if (opts.sizeBytes !== undefined) fileOpts.sizeBytes = opts.sizeBytes;
    if (opts.create !== undefined) fileOpts.create = opts.create;
    return FileVolume.open(loc.path, fileOpts);
  }
  const nbdOpts: NbdVolumeOptions = { ...opts.nbd };
  if (opts.sizeBytes !== undefined) nbdOpts.sizeBytes = opts.sizeBytes;
  return NbdVolume.open({ host: loc.host, port: loc.port, exportName: loc.exportName }, nbdOpts);
}
