// NSS softoken (libsoftokn3 from Debian's libnss3): an independently written PKCS#11 software token,
// so the adapter is tested against a module other than SoftHSM2. One module initialisation carries
// every token (NSS's tokens=<...> argument: one key database per slot), so make all the tokens a
// test file needs with one call, before anything else loads the module. Each new database gets its
// user PIN here (an NSS database starts with an empty one and is not "initialised" until it has one).
import pkcs11 from 'pkcs11js';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModule } from '../../hsm-adapter/module.ts';

export const NSS_MODULE = '/usr/lib/x86_64-linux-gnu/libsoftokn3.so';
/** Why NSS tests skip here, or undefined when the module is present. */
export const nssMissing = existsSync(NSS_MODULE) ? undefined : `${NSS_MODULE} is not installed (apt-get install libnss3)`;

export interface NssTokens {
  dir: string;
  modulePath: string;
  moduleArgs: string;
  labels: string[];
  /** User PIN per label; also written to `<dir>/<label>.pin` (0600). */
  pins: Record<string, string>;
  pinFile(label: string): string;
  cleanup(): void;
}

/** The C_Initialize string for these token directories (slot ids from 4, NSS's first user slot). */
export function nssModuleArgs(tokens: { dir: string; label: string }[]): string {
  const slots = tokens.map((t, i) => `0x${(4 + i).toString(16)}=[configdir='sql:${t.dir}' tokenDescription='${t.label}']`).join(' ');
  return `configdir='' certPrefix='' keyPrefix='' secmod='' flags=noModDB,noCertDB tokens=<${slots}>`;
}

export function makeNssTokens(labels: string[]): NssTokens {
  const dir = mkdtempSync(join(tmpdir(), 'bkv-nss-'));
  const specs = labels.map((label) => ({ label, dir: join(dir, label) }));
  for (const s of specs) mkdirSync(s.dir, { mode: 0o700 });
  const moduleArgs = nssModuleArgs(specs);
  const lib = loadModule(NSS_MODULE, moduleArgs).lib;
  const pins: Record<string, string> = {};
  for (const s of lib.C_GetSlotList(true)) {
    const label = lib.C_GetTokenInfo(s).label.trimEnd();
    if (!labels.includes(label)) continue;
    const pin = randomBytes(8).toString('hex');
    const session = lib.C_OpenSession(s, pkcs11.CKF_SERIAL_SESSION | pkcs11.CKF_RW_SESSION);
    try {
      lib.C_Login(session, pkcs11.CKU_SO, '');
      lib.C_InitPIN(session, pin);
      lib.C_Logout(session);
    } finally {
      lib.C_CloseSession(session);
    }
    pins[label] = pin;
    writeFileSync(join(dir, `${label}.pin`), pin + '\n', { mode: 0o600 });
  }
  const missing = labels.filter((l) => !pins[l]);
  if (missing.length) throw new Error(`NSS did not offer slots for ${missing.join(', ')}`);
  return {
    dir, modulePath: NSS_MODULE, moduleArgs, labels, pins,
    pinFile: (label) => join(dir, `${label}.pin`),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
