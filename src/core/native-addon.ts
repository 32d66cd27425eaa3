// Loader for the project's N-API addon (native/src/vrg_native.cc). `npm install` builds
// native/build/Release/vrg_native.node (package.json "install" script); when the build failed, the platform is
// not Linux, or VRG_NATIVE=0 is set, there is no addon and each layer's callers use plain JS instead
// (volume/native.ts: the Linux file calls; protocol/gcm.ts: AES-GCM in place).

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeStatus {
  loaded: boolean;
  /** Where the addon is (or would be) loaded from. */
  path: string;
  /** Why it is not loaded. */
  error?: string;
}

const addonName = 'vrg_native';
/** The oldest build whose exports still mean what they meant; a newer one may add functions. */
const addonVersionMin = 1;

/** The project root: the first directory above this module holding native/binding.gyp (src/ or dist/src/). */
function findAddonPath(): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'native', 'binding.gyp'))) return join(dir, 'native', 'build', 'Release', `${addonName}.node`);
    const up = dirname(dir);
    if (up === dir) return null;
    dir = up;
  }
}

/** Loads the addon afresh and checks that it exports `functionNames` (the module-level `addon` is this, once). */
export function loadAddon(functionNames: readonly string[], env: NodeJS.ProcessEnv = process.env):
    { addon: Record<string, unknown> | null; status: NativeStatus } {
  const path = findAddonPath();
  if (path === null) return { addon: null, status: { loaded: false, path: '', error: 'native/binding.gyp not found above ' + import.meta.url } };
  if (env.VRG_NATIVE === '0') return { addon: null, status: { loaded: false, path, error: 'disabled by VRG_NATIVE=0' } };
  if (process.platform !== 'linux') return { addon: null, status: { loaded: false, path, error: `not supported on ${process.platform}` } };
  if (!existsSync(path)) {
    return { addon: null, status: { loaded: false, path, error: 'not built (npm install builds it with node-gyp and a C++ toolchain)' } };
  }
  try {
    const mod = createRequire(import.meta.url)(path) as Record<string, unknown>;
    if (mod.addon !== addonName || typeof mod.version !== 'number' || mod.version < addonVersionMin) {
      throw new Error(`unexpected addon ${String(mod.addon)} v${String(mod.version)}, want ${addonName} v${addonVersionMin} or later`);
    }
    const missing = functionNames.filter((n) => typeof mod[n] !== 'function');
    if (missing.length > 0) throw new Error(`addon lacks ${missing.join(', ')} (built from older sources: npm run build:native)`);
    return { addon: mod, status: { loaded: true, path } };
  } catch (err) {
    return { addon: null, status: { loaded: false, path, error: (err as Error).message } };
  }
}
