// One loaded PKCS#11 module per thread and path. The library itself is shared process-wide (dlopen
// returns the same image), so C_Initialize runs with CKF_OS_LOCKING_OK in whichever thread comes
// first and every later call sees CKR_CRYPTOKI_ALREADY_INITIALIZED, which is success. C_Finalize runs
// once, from the main thread, at shutdown (finalizeModule).
import pkcs11 from 'pkcs11js';
import { existsSync } from 'node:fs';
import { isMainThread } from 'node:worker_threads';
import { TokenError, ckrOf, toTokenError } from './errors.ts';

export const DEFAULT_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

/** The module path bkv uses when none is given: BKV_PKCS11_MODULE, else SoftHSM2's usual place. */
export function defaultModulePath(): string {
  return process.env.BKV_PKCS11_MODULE || DEFAULT_MODULE;
}

export interface LoadedModule {
  readonly path: string;
  readonly lib: pkcs11.PKCS11;
  /** The arguments C_Initialize was given in this thread ('' for none). */
  readonly args: string;
}

const loaded = new Map<string, LoadedModule>();
/** SOFTHSM2_CONF as it was when this thread's C_Initialize of SoftHSM2 returned CKR_OK (main thread only). */
let confAtInit: { path: string; conf: string | undefined } | undefined;

export function loadModule(modulePath: string, moduleArgs?: string): LoadedModule {
  const have = loaded.get(modulePath);
  if (have) {
    // A module initialises once per process: a second set of arguments would be silently ignored,
    // and a replica would then run on a token other than the one it was configured for.
    if (moduleArgs !== undefined && have.args !== moduleArgs) {
      throw new TokenError('MODULE_ARGS_CONFLICT', `PKCS#11 module ${modulePath} is already initialised with other module arguments; finalise it first`, {
        operation: 'C_Initialize',
      });
    }
    return have;
  }
  if (!existsSync(modulePath)) {
    throw new TokenError('MODULE_NOT_FOUND', `PKCS#11 module not found: ${modulePath} (set BKV_PKCS11_MODULE or --module)`, {
      operation: 'load',
    });
  }
  const lib = new pkcs11.PKCS11();
  try {
    lib.load(modulePath);
  } catch (e) {
    throw new TokenError('MODULE_LOAD_FAILED', `cannot load PKCS#11 module ${modulePath}: ${(e as Error).message.split('\n')[0]}`, {
      operation: 'load',
      cause: e,
    });
  }
  try {
    const opts: pkcs11.InitializationOptions = { flags: pkcs11.CKF_OS_LOCKING_OK };
    // pkcs11js copies libraryParameters one byte short (it passes the string length, not length+1,
    // as the buffer size); the trailing NUL we add is the byte it drops, so the module sees it whole.
    if (moduleArgs) opts.libraryParameters = moduleArgs + '\0';
    lib.C_Initialize(opts);
    // Only SoftHSM2 reads SOFTHSM2_CONF; another module loaded alongside (NSS) says nothing about it.
    if (isMainThread && isSoftHsm(lib)) confAtInit = { path: modulePath, conf: process.env.SOFTHSM2_CONF };
  } catch (e) {
    if (ckrOf(e) !== pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
      try {
        lib.close();
      } catch {
        /* already failing */
      }
      throw initFailure(e, modulePath, moduleArgs);
    }
  }
  const m = { path: modulePath, lib, args: moduleArgs ?? '' };
  loaded.set(modulePath, m);
  return m;
}

// CKR_ARGUMENTS_BAD at C_Initialize is how modules such as NSS's softoken say they need (or did not
// understand) their initialisation string; name the way to give one rather than the bare CKR.
function initFailure(e: unknown, modulePath: string, moduleArgs: string | undefined): TokenError {
  const err = toTokenError(e, 'C_Initialize', '', `initialising PKCS#11 module ${modulePath}`);
  if (ckrOf(e) !== pkcs11.CKR_ARGUMENTS_BAD) return err;
  const hint = moduleArgs
    ? 'the module refused the module arguments it was given (check --module-args / moduleArgs in fleet.json)'
    : "the module may need module arguments (NSS softoken: configdir='sql:DIR' ...): give them with --module-args, which provision records in fleet.json";
  return new TokenError('MODULE_ARGS_BAD', `${err.message}: ${hint}`, { ckr: err.ckr, operation: 'C_Initialize', cause: e });
}

function isSoftHsm(lib: pkcs11.PKCS11): boolean {
  try {
    return lib.C_GetInfo().manufacturerID.startsWith('SoftHSM');
  } catch {
    return true; // cannot tell: keep the SOFTHSM2_CONF guard
  }
}

/** Whether this thread has initialised a module, and with which SOFTHSM2_CONF (main thread only). */
export function initializedConf(): { path: string; conf: string | undefined } | undefined {
  return confAtInit;
}

/**
 * C_Finalize every module this thread loaded. Call once, from the main thread, after every Token
 * (in every thread) is closed. Safe to call when nothing is loaded.
 */
export function finalizeModule(): void {
  for (const m of loaded.values()) {
    try {
      m.lib.C_Finalize();
    } catch {
      // CKR_CRYPTOKI_NOT_INITIALIZED: someone else finalised; nothing left to release.
    }
  }
  loaded.clear();
  confAtInit = undefined;
}
