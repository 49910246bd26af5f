// Loader for the bkv_native addon (native/src/ristretto.c): ristretto255 on the system libsodium.
// Loaded lazily, once per thread, with createRequire from its build path. When it is missing or
// fails to load, callers get null and a reason string, and the group code falls back to
// libsodium's WebAssembly build.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** The addon's exports. Every function works on `scratch` (layout in native/src/ristretto.c). */
export interface NativeRistretto {
  /** 128 bytes, per thread: [0,64) input A, [64,96) input B, [96,128) output. */
  readonly scratch: ArrayBuffer;
  readonly sodiumVersion: string;
  /** OUT = A * B. 0, -1 bad element / identity, -2 bad scalar. */
  scalarmult(): number;
  /** OUT = A * G. 0 or -2. */
  scalarmultBase(): number;
  /** OUT = from_hash(A[0..64)). 0, or -1 if the result is the identity. */
  fromHash(): number;
  /** 1 iff B is a canonical non-identity element. */
  isValidPoint(): number;
  /** OUT = A[0..64) mod L. */
  scalarReduce(): number;
  /** OUT = A^-1. 0 or -2 (A not canonical or zero). */
  scalarInvert(): number;
  scalarMul(): number;
  scalarAdd(): number;
  scalarSub(): number;
  scalarNegate(): number;
  /** OUT = X25519(A[0..32), B). 0, or -1 if the result is all zero (low-order point). */
  x25519(): number;
  /** OUT = X25519(A[0..32), 9). 0 or -2. */
  x25519Base(): number;
}

export type NativeStatus =
  | { readonly loaded: true; readonly path: string; readonly sodiumVersion: string }
  | { readonly loaded: false; readonly path: string; readonly reason: string };

/** Where node-gyp puts the addon (see native/README.md). */
export const NATIVE_ADDON_PATH = fileURLToPath(new URL('./build/Release/bkv_native.node', import.meta.url));

const FUNCTIONS = [
  'scalarmult',
  'scalarmultBase',
  'fromHash',
  'isValidPoint',
  'scalarReduce',
  'scalarInvert',
  'scalarMul',
  'scalarAdd',
  'scalarSub',
  'scalarNegate',
  'x25519',
  'x25519Base',
] as const;

// The ristretto255 generator's encoding (RFC 9496 §4.4): the load-time self-test's expected B * 1.
const GENERATOR_HEX = 'e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76';

let addon: NativeRistretto | null = null;
let status: NativeStatus | null = null;

function tryLoad(): NativeStatus {
  // BKV_NATIVE=off forces the fallback (comparisons, diagnosis); BKV_NATIVE_ADDON loads another build.
  const path = process.env.BKV_NATIVE_ADDON || NATIVE_ADDON_PATH;
  if (process.env.BKV_NATIVE === 'off') return { loaded: false, path, reason: 'disabled by BKV_NATIVE=off' };
  let m: unknown;
  try {
    m = createRequire(import.meta.url)(path);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const reason =
      err?.code === 'MODULE_NOT_FOUND'
        ? `not built: ${path} is missing (scripts/setup.sh builds it; needs libsodium-dev and a C compiler)`
        : `load failed: ${err?.message ?? String(e)}`;
    return { loaded: false, path, reason };
  }
  const a = m as Partial<NativeRistretto> | null;
  if (!a || !(a.scratch instanceof ArrayBuffer) || a.scratch.byteLength !== 128 || FUNCTIONS.some((f) => typeof a[f] !== 'function')) {
    return { loaded: false, path, reason: 'load failed: the addon does not export the expected functions (stale build?)' };
  }
  // Self-test: 1 * G must be the generator, or the build is not what we think it is.
  const mem = new Uint8Array(a.scratch);
  mem.fill(0);
  mem[0] = 1;
  const rc = a.scalarmultBase!();
  const got = Buffer.from(mem.subarray(96, 128)).toString('hex');
  mem.fill(0);
  if (rc !== 0 || got !== GENERATOR_HEX) return { loaded: false, path, reason: 'load failed: self-test (1 * G) gave a wrong result' };
  addon = a as NativeRistretto;
  return { loaded: true, path, sodiumVersion: addon.sodiumVersion };
}

/** The addon for this thread, loading it on first call; null when unavailable (see nativeStatus()). */
export function loadNative(): NativeRistretto | null {
  if (!status) status = tryLoad();
  return addon;
}

/** Whether the addon loaded in this thread, and why not if it did not. Loads it if not tried yet. */
export function nativeStatus(): NativeStatus {
  if (!status) status = tryLoad();
  return status;
}
