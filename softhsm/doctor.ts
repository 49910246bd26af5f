// The checks behind `bkv doctor`: is the module loadable, does each token offer what the vault needs,
// do its keys work and stay inside it, and do the fleet secrets agree across tokens. Works on a
// provisioned fleet (state directory) and on any single PKCS#11 token (then it checks what exists
// and lists what bkv would still need). Also says which OPAQUE group backend this build runs (a slow
// fallback is a warning, not a failure). Reports never contain a secret: only names, flags and KCVs.
import pkcs11 from 'pkcs11js';
import { FLEET_AKE_AAD, KeyLabels, type SealScheme } from '../hsm-adapter/token.ts';
import { TokenError, toTokenError } from '../hsm-adapter/errors.ts';
import { defaultModulePath, loadModule } from '../hsm-adapter/module.ts';
import { parseTokenSpec } from '../hsm-adapter/uri.ts';
import { openToken, mechanismName, requiredMechanisms, sealSchemeMechanisms, signingMechanisms, type Pkcs11Token } from '../hsm-adapter/pkcs11-token.ts';
import { BkvError } from '../protocol/errors.ts';
import { backendStatus, type BackendId } from '../protocol/opaque/index.ts';
import { activateSoftHsmConf, loadState } from './state.ts';
import { CKA_COPYABLE, KEY_USAGES, USAGE_ATTRS, chooseDataStore, fleetAkeKcv, identityFingerprint, oprfSeedKcv, secretKeyFlags } from './keys.ts';
import type { DataStore } from '../hsm-adapter/pkcs11-token.ts';

export type CheckStatus = 'pass' | 'fail' | 'missing';
export interface Check {
  name: string;
  status: CheckStatus;
  detail?: string;
}

export interface TokenReport {
  name?: string;
  tokenLabel: string;
  opened: boolean;
  error?: { code: string; message: string };
  manufacturer?: string;
  model?: string;
  serial?: string;
  mechanismCount?: number;
  /** Every mechanism the token offers (CKM_* names). */
  mechanisms?: string[];
  neededMechanisms?: Record<string, boolean>;
  sealScheme?: SealScheme;
  sealSchemeReason?: string;
  ecdsa?: string;
  /** Where the anchor, vote and sealed AKE seed live in this token, why, and what that costs. */
  dataStore?: { store?: DataStore; reason: string; cost?: string; probe: Record<DataStore, true | string> };
  checks: Check[];
  /** Not red, worth knowing (keys with more usages than bkv needs, a module that does not enforce one). */
  warnings?: string[];
  kcv?: { oprfSeed?: string; fleetAke?: string };
  identityFingerprint?: string;
}

/** The OPAQUE group backend for ristretto255 (the default suite) in this process, as the vault would get it. */
export interface OpaqueBackendReport {
  backend: BackendId;
  native: { loaded: true; path: string; sodiumVersion: string } | { loaded: false; path: string; reason: string };
}

export interface DoctorReport {
  ok: boolean;
  mode: 'fleet' | 'token';
  stateDir?: string;
  modulePath: string;
  library?: { manufacturer: string; description: string; version: string; cryptokiVersion: string };
  tokens: TokenReport[];
  fleetChecks: Check[];
  opaqueBackend: OpaqueBackendReport;
  /** Why the verdict is red, one line each. */
  problems: string[];
  /** Worth fixing but not red (the verdict ignores them), one line each. */
  warnings: string[];
}

function opaqueBackend(): { report: OpaqueBackendReport; warnings: string[] } {
  const st = backendStatus();
  const native = st.native.loaded
    ? { loaded: true as const, path: st.native.path, sodiumVersion: st.native.sodiumVersion }
    : { loaded: false as const, path: st.native.path, reason: st.native.reason };
  const warnings = native.loaded
    ? []
    : [`OPAQUE runs on the ${st.defaultBackend} fallback, not the native backend (${native.reason}): slower, still correct`];
  return { report: { backend: st.defaultBackend, native }, warnings };
}

function newReport(mode: DoctorReport['mode'], modulePath: string, stateDir?: string): DoctorReport {
  const o = opaqueBackend();
  return { ok: false, mode, ...(stateDir ? { stateDir } : {}), modulePath, tokens: [], fleetChecks: [], opaqueBackend: o.report, problems: [], warnings: o.warnings };
}

const neededNames = [...new Set([...requiredMechanisms, ...Object.values(sealSchemeMechanisms).flat(), ...signingMechanisms])];

function attempt(checks: Check[], name: string, f: () => string | undefined | void): boolean {
  try {
    const detail = f();
    checks.push({ name, status: 'pass', ...(detail ? { detail } : {}) });
    return true;
  } catch (e) {
    const msg = e instanceof BkvError ? `${e.message} [${e.code}]` : e instanceof Error ? e.message : String(e);
    checks.push({ name, status: 'fail', detail: msg });
    return false;
  }
}

function expect(cond: boolean, msg: string): void {
  if (!cond) throw new Error(msg);
}

function expectTokenError(f: () => unknown, codes: string[], what: string): string {
  try {
    f();
  } catch (e) {
    if (e instanceof TokenError && codes.includes(e.code)) return `refused (${e.ckr || e.code})`;
    throw e;
  }
  throw new Error(`${what} was allowed`);
}

/** The per-token checks. `present` says which bkv objects exist (absent ones are reported missing). */
function checkToken(t: Pkcs11Token, r: TokenReport, akeToken: Pkcs11Token = t, ceremony?: 'token' | 'host', noIdentity = false): void {
  const c = r.checks;
  const has = {
    recordKey: t.findObject(KeyLabels.recordKey, pkcs11.CKO_SECRET_KEY) !== undefined,
    recordMacKey: t.findObject(KeyLabels.recordMacKey, pkcs11.CKO_SECRET_KEY) !== undefined,
    identity:
      t.findObject(KeyLabels.replicaIdentity, pkcs11.CKO_PRIVATE_KEY) !== undefined &&
      t.findObject(KeyLabels.replicaIdentity, pkcs11.CKO_PUBLIC_KEY) !== undefined,
    oprfSeed: t.findObject(KeyLabels.oprfSeed, pkcs11.CKO_SECRET_KEY) !== undefined,
    fleetAke: t.hasData(KeyLabels.fleetAkeSealed),
  };
  const missing = (name: string, label: string) => c.push({ name, status: 'missing', detail: `no object labelled '${label}'` });

  attempt(c, 'random', () => {
    const a = t.random(32);
    const b = t.random(32);
    expect(Buffer.compare(Buffer.from(a), Buffer.from(b)) !== 0, 'two 32-byte draws were equal');
  });

  const twin = t.findObject(KeyLabels.oprfSeedSha256, pkcs11.CKO_SECRET_KEY) !== undefined;
  for (const [label, ok] of [[KeyLabels.recordKey, has.recordKey], [KeyLabels.recordMacKey, has.recordMacKey], [KeyLabels.oprfSeed, has.oprfSeed], [KeyLabels.oprfSeedSha256, twin]] as const) {
    if (!ok) continue;
    attempt(c, `'${label}' stays in the token`, () => {
      const f = secretKeyFlags(t, label)!;
      expect(f.sensitive && !f.extractable && f.token, `flags sensitive=${f.sensitive} extractable=${f.extractable} token=${f.token}`);
      const h = t.findObject(label, pkcs11.CKO_SECRET_KEY)!;
      return expectTokenError(
        () => {
          try {
            return t.raw.C_GetAttributeValue(t.sessionHandle, h, [{ type: pkcs11.CKA_VALUE }]);
          } catch (e) {
            throw toTokenError(e, 'C_GetAttributeValue', t.label);
          }
        },
        ['KEY_NOT_EXTRACTABLE'],
        'reading CKA_VALUE',
      );
    });
  }
  wrapProbe(t, r);

  const needMac = r.sealScheme === 'aes-256-cbc-hmac-sha256';
  if (!has.recordKey) missing('seal/open', KeyLabels.recordKey);
  else if (needMac && !has.recordMacKey) missing('seal/open', KeyLabels.recordMacKey);
  else {
    attempt(c, 'seal/open', () => {
      const aad = Buffer.from('bkv doctor');
      const msg = t.random(40);
      const sealed = t.seal(KeyLabels.recordKey, msg, aad);
      expect(Buffer.from(t.open(KeyLabels.recordKey, sealed, aad)).equals(Buffer.from(msg)), 'round trip changed the plaintext');
      const bad = Uint8Array.from(sealed);
      bad[bad.length - 1] ^= 1;
      expectTokenError(() => t.open(KeyLabels.recordKey, bad, aad), ['SEAL_OPEN_FAILED'], 'opening a tampered seal');
      expectTokenError(() => t.open(KeyLabels.recordKey, sealed, Buffer.from('other aad')), ['SEAL_OPEN_FAILED'], 'opening with a wrong AAD');
      return `${r.sealScheme}; tampering and a wrong AAD are rejected`;
    });
  }
  if (!has.recordMacKey) {
    if (needMac || r.sealScheme === undefined) missing('HMAC-SHA-256', KeyLabels.recordMacKey);
  } else {
    attempt(c, 'HMAC-SHA-256', () => {
      const m = t.hmac(KeyLabels.recordMacKey, 'sha256', Buffer.from('bkv doctor'));
      expect(m.length === 32, `MAC length ${m.length}`);
    });
  }
  if (!has.identity && noIdentity) c.push({ name: 'sign/verify', status: 'pass', detail: 'no identity key: a single vault never signs (fleet.json records none)' });
  else if (!has.identity) missing('sign/verify', KeyLabels.replicaIdentity);
  else {
    attempt(c, 'sign/verify', () => {
      const data = Buffer.from('bkv doctor');
      const sig = t.sign(KeyLabels.replicaIdentity, data);
      const pub = t.publicKey(KeyLabels.replicaIdentity);
      expect(t.verify(pub, data, sig), 'signature did not verify');
      expect(!t.verify(pub, Buffer.from('bkv doctoR'), sig), 'signature verified other data');
      r.identityFingerprint = identityFingerprint(t);
      return `ECDSA P-256 via ${t.ecdsaMechanism}`;
    });
  }
  leastPrivilegeInto(t, r, ceremony);
  r.kcv = {};
  if (!has.oprfSeed) missing('OPRF seed', KeyLabels.oprfSeed);
  else {
    attempt(c, 'OPRF seed', () => {
      const m = t.hmac(KeyLabels.oprfSeed, 'sha512', Buffer.from('bkv doctor'));
      expect(m.length === 64, `HMAC-SHA-512 length ${m.length}`);
      r.kcv!.oprfSeed = oprfSeedKcv(t);
      return `HMAC-SHA-512 and -256 work; KCV ${r.kcv!.oprfSeed}`;
    });
  }
  if (!has.fleetAke) missing('fleet AKE seed', KeyLabels.fleetAkeSealed);
  else if (!has.recordKey) c.push({ name: 'fleet AKE seed', status: 'fail', detail: `present but '${KeyLabels.recordKey}' is missing, so it cannot be opened` });
  else {
    attempt(c, 'fleet AKE seed', () => {
      const seed = akeToken.open(KeyLabels.recordKey, akeToken.readData(KeyLabels.fleetAkeSealed), FLEET_AKE_AAD);
      const len = seed.length;
      seed.fill(0);
      expect(len === 32, `opened seed has ${len} bytes, want 32`);
      r.kcv!.fleetAke = fleetAkeKcv(akeToken);
      return `opens under this token's record key (${akeToken.sealScheme}); KCV ${r.kcv!.fleetAke}`;
    });
  }
}

/**
 * Whether the module refuses to wrap a key marked non-extractable under a key the caller made (and
 * could read). NSS softoken 3.87 wraps it anyway. A warning, not red: a software token's key store
 * is a host file that the PIN decrypts, so whoever holds the PIN holds the keys on SoftHSM2 as well;
 * on such a module CKA_EXTRACTABLE false keeps keys out of bkv's own calls, not from the PIN's holder.
 */
function wrapProbe(t: Pkcs11Token, r: TokenReport): void {
  const target = t.findObject(KeyLabels.recordMacKey, pkcs11.CKO_SECRET_KEY) ?? t.findObject(KeyLabels.recordKey, pkcs11.CKO_SECRET_KEY);
  if (!target || !t.mechanisms.has(pkcs11.CKM_AES_KEY_WRAP_PAD) || !t.mechanisms.has(pkcs11.CKM_AES_KEY_GEN)) return;
  const s = t.sessionHandle;
  let wrapper: Buffer | undefined;
  let blob: Buffer | undefined;
  try {
    wrapper = t.raw.C_GenerateKey(s, { mechanism: pkcs11.CKM_AES_KEY_GEN }, [
      { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_SECRET_KEY }, { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_AES },
      { type: pkcs11.CKA_VALUE_LEN, value: 32 }, { type: pkcs11.CKA_TOKEN, value: false }, { type: pkcs11.CKA_WRAP, value: true },
    ]);
    blob = t.raw.C_WrapKey(s, { mechanism: pkcs11.CKM_AES_KEY_WRAP_PAD }, wrapper, target, Buffer.alloc(256));
  } catch {
    /* refused: as it should be */
  } finally {
    blob?.fill(0);
    if (wrapper) {
      try {
        t.raw.C_DestroyObject(s, wrapper);
      } catch {
        /* a session object */
      }
    }
  }
  if (blob) {
    (r.warnings ??= []).push(
      'the module wraps keys marked non-extractable (CKA_EXTRACTABLE false) under a key the caller makes: whoever holds the PIN can take the bkv keys out. ' +
        'Use it only where the PIN is kept like the keys (on a software token the key store is a host file the PIN decrypts anyway)',
    );
  }
}

/**
 * Probes which data stores the token accepts (a probe object of each, made and destroyed) and checks
 * the store in use. `recorded`: the store fleet.json records (fleet mode); without it (one token)
 * the token is switched to the store bkv would choose, so existing bkv values are found.
 */
function dataStoreInto(t: Pkcs11Token, r: TokenReport, recorded?: DataStore): void {
  let probe: Record<DataStore, true | string>;
  try {
    probe = t.probeDataStores();
  } catch (e) {
    r.checks.push({ name: 'data store', status: 'fail', detail: e instanceof BkvError ? `${e.message} [${e.code}]` : String(e) });
    return;
  }
  const choice = chooseDataStore(probe);
  r.dataStore = { ...(choice.store ? { store: choice.store, cost: choice.cost } : {}), reason: choice.reason, probe };
  if (recorded !== undefined) {
    r.dataStore.store = recorded;
    if (probe[recorded] !== true) {
      r.checks.push({ name: 'data store', status: 'fail', detail: `fleet.json records ${recorded}, which the token now refuses (${probe[recorded]})` });
      return;
    }
    if (choice.store !== recorded) r.dataStore.reason = `as provisioned (bkv would choose ${choice.store ?? 'none'} now: ${choice.reason})`;
  } else if (choice.store) {
    t.useDataStore(choice.store);
  }
  if (!r.dataStore.store) {
    r.checks.push({ name: 'data store', status: 'fail', detail: choice.reason });
    return;
  }
  r.checks.push({ name: 'data store', status: 'pass', detail: `${r.dataStore.store}: ${r.dataStore.reason}` });
}

/**
 * Each bkv key's usage flags against KEY_USAGES. Keys made by an older bkv allow more (sign/verify on
 * the record key, encrypt/wrap on generic secrets): a warning, since they cannot be narrowed in place
 * (CKA_MODIFIABLE false) and still work; re-provisioning makes them right.
 */
function leastPrivilegeInto(t: Pkcs11Token, r: TokenReport, ceremony?: 'token' | 'host'): void {
  const warn = (w: string) => (r.warnings ??= []).push(w);
  const objs = [
    [KeyLabels.recordKey, pkcs11.CKO_SECRET_KEY, KEY_USAGES.recordKey],
    [KeyLabels.recordMacKey, pkcs11.CKO_SECRET_KEY, KEY_USAGES.recordMacKey],
    [KeyLabels.oprfSeed, pkcs11.CKO_SECRET_KEY, KEY_USAGES.oprfSeed],
    [KeyLabels.oprfSeedSha256, pkcs11.CKO_SECRET_KEY, KEY_USAGES.oprfSeed],
    [KeyLabels.replicaIdentity, pkcs11.CKO_PRIVATE_KEY, KEY_USAGES.identityPrivate],
  ] as const;
  const extra: string[] = [];
  let copyUnknown = false;
  for (const [label, cls, granted] of objs) {
    const h = t.findObject(label, cls);
    if (!h) continue;
    for (const [u, type] of Object.entries(USAGE_ATTRS)) {
      if ((granted as readonly string[]).includes(u)) continue;
      try {
        const v = t.raw.C_GetAttributeValue(t.sessionHandle, h, [{ type }])[0]!.value as Buffer;
        if (v.length && v[0]) extra.push(`'${label}' allows ${u}`);
      } catch {
        /* the module has no such attribute for this class: nothing granted */
      }
    }
    try {
      const v = t.raw.C_GetAttributeValue(t.sessionHandle, h, [{ type: CKA_COPYABLE }])[0]!.value as Buffer;
      if (v.length && v[0]) extra.push(`'${label}' is copyable`);
    } catch {
      copyUnknown = true;
    }
  }
  // The token ceremony unwraps the seed keys; a module that cannot unwrap into a key both unmodifiable
  // and uncopyable (SoftHSM2) leaves them copyable: say that, not "older bkv".
  // (One token, no manifest: the ceremony is unknown, so a copyable seed key may be either.)
  const seedCopy = extra.filter((x) => ceremony !== 'host' && /^'oprf-seed(-sha256)?' is copyable$/.test(x));
  const other = extra.filter((x) => !seedCopy.includes(x));
  const seedNote = seedCopy.length
    ? `${seedCopy.join(', ')}: the module cannot unwrap a key both unmodifiable and uncopyable, so the token ceremony kept it unmodifiable ` +
      `(a copy stays sensitive, unextractable and unmodifiable)`
    : '';
  // A known cost of a recorded token ceremony is said in the check; unexplained (one token), it is a warning.
  if (seedNote && ceremony === undefined) warn(`${seedNote}, or an older bkv made it`);
  if (other.length) warn(`keys allow more than bkv uses (${other.join(', ')}); made by an older bkv? re-provision to narrow them`);
  if (copyUnknown) warn('the module has no CKA_COPYABLE (PKCS#11 2.40), so keys cannot be marked uncopyable; a copy stays sensitive and unextractable');
  // NSS softoken 3.87 derives through CKM_SHA256_KEY_DERIVATION from a key whose CKA_DERIVE is false.
  const mac = t.findObject(KeyLabels.recordMacKey, pkcs11.CKO_SECRET_KEY);
  // Tried whether or not the mechanism list names it: NSS does not list CKM_SHA256_KEY_DERIVATION yet performs it.
  if (mac) {
    let derived: Buffer | undefined;
    try {
      derived = t.raw.C_DeriveKey(t.sessionHandle, { mechanism: pkcs11.CKM_SHA256_KEY_DERIVATION }, mac, [
        { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_SECRET_KEY }, { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_GENERIC_SECRET },
        { type: pkcs11.CKA_TOKEN, value: false }, { type: pkcs11.CKA_SENSITIVE, value: true },
      ]);
    } catch {
      /* refused, as it should be */
    }
    if (derived) {
      try {
        t.raw.C_DestroyObject(t.sessionHandle, derived);
      } catch {
        /* a session object; it goes with the session */
      }
      warn('the module derives (CKM_SHA256_KEY_DERIVATION) from keys whose CKA_DERIVE is false: it does not enforce that flag, so anyone with the PIN can obtain SHA-256 of a bkv key (not the key itself)');
    }
  }
  const detail = other.length ? `wider than needed: ${other.join(', ')}` : 'every key allows only what bkv uses';
  r.checks.push({ name: 'least privilege', status: 'pass', detail: seedNote && ceremony === 'token' ? `${detail}; ${seedNote}` : detail });
}

function describeInto(t: Pkcs11Token, r: TokenReport, forced: boolean): void {
  const d = t.describe();
  r.manufacturer = d.manufacturer;
  r.model = d.model;
  r.serial = d.serial;
  r.mechanismCount = d.mechanisms.length;
  r.mechanisms = d.mechanisms;
  r.neededMechanisms = Object.fromEntries(neededNames.map((m) => [mechanismName(m), t.mechanisms.has(m)]));
  r.sealScheme = t.sealScheme;
  const hasGcm = t.mechanisms.has(pkcs11.CKM_AES_GCM);
  r.sealSchemeReason = forced
    ? 'chosen by --seal-scheme'
    : t.sealScheme === 'aes-256-gcm'
      ? 'token offers CKM_AES_GCM'
      : hasGcm
        ? 'AES-CBC-PAD + HMAC-SHA-256 encrypt-then-MAC, as provisioned (the token also offers CKM_AES_GCM)'
        : 'token lacks CKM_AES_GCM: AES-CBC-PAD + HMAC-SHA-256 encrypt-then-MAC';
  r.ecdsa = t.ecdsaMechanism === undefined ? 'none (fine for a single vault; a fleet replica must sign)' : t.ecdsaMechanism === 'CKM_ECDSA' ? 'CKM_ECDSA over a host SHA-256 digest' : 'CKM_ECDSA_SHA256';
  if (t.missingMechanisms.length) {
    r.checks.push({ name: 'mechanisms', status: 'fail', detail: `lacks ${t.missingMechanisms.join(', ')}` });
  } else {
    r.checks.push({ name: 'mechanisms', status: 'pass', detail: `all ${neededNames.length} needed mechanisms present` });
  }
}

function libraryInfo(modulePath: string, moduleArgs?: string): DoctorReport['library'] {
  const lib = loadModule(modulePath, moduleArgs).lib;
  let info: pkcs11.ModuleInfo;
  try {
    info = lib.C_GetInfo();
  } catch (e) {
    throw toTokenError(e, 'C_GetInfo', '', 'reading the module info');
  }
  return {
    manufacturer: info.manufacturerID.trim(),
    description: info.libraryDescription.trim(),
    version: `${info.libraryVersion.major}.${info.libraryVersion.minor}`,
    cryptokiVersion: `${info.cryptokiVersion.major}.${info.cryptokiVersion.minor}`,
  };
}

function verdict(report: DoctorReport, missingIsProblem: boolean): DoctorReport {
  for (const t of report.tokens) {
    if (!t.opened) report.problems.push(`token '${t.tokenLabel}': ${t.error?.message}`);
    for (const c of t.checks) {
      if (c.status === 'fail' || (c.status === 'missing' && missingIsProblem)) {
        report.problems.push(`token '${t.tokenLabel}': ${c.name}: ${c.status === 'missing' ? 'missing, ' : ''}${c.detail ?? ''}`);
      }
    }
  }
  for (const c of report.fleetChecks) if (c.status !== 'pass') report.problems.push(`fleet: ${c.name}: ${c.detail ?? ''}`);
  for (const t of report.tokens) for (const w of t.warnings ?? []) report.warnings.push(`token '${t.tokenLabel}': ${w}`);
  report.ok = report.problems.length === 0;
  return report;
}

function openFor(r: TokenReport, open: () => Pkcs11Token): Pkcs11Token | undefined {
  try {
    const t = open();
    r.opened = true;
    return t;
  } catch (e) {
    r.error = e instanceof BkvError ? { code: e.code, message: e.message } : { code: 'INTERNAL', message: String(e) };
    return undefined;
  }
}

export interface FleetDoctorOptions {
  stateDir: string;
  /** Force a seal scheme on every token (default: the one recorded at provisioning). */
  sealScheme?: SealScheme | 'auto';
}

/** Doctor for a provisioned fleet. Throws StateError when the state directory is missing or incomplete. */
export function doctorFleet(opts: FleetDoctorOptions): DoctorReport {
  const state = loadState(opts.stateDir);
  activateSoftHsmConf(state);
  const report = newReport('fleet', state.modulePath, state.stateDir);
  report.library = libraryInfo(state.modulePath, state.moduleArgs);
  const open: Pkcs11Token[] = [];
  try {
    for (const rep of state.replicas) {
      const r: TokenReport = { name: rep.name, tokenLabel: rep.tokenLabel, opened: false, checks: [] };
      report.tokens.push(r);
      const recorded = state.sealSchemeFor(rep.tokenLabel);
      const scheme = opts.sealScheme ?? recorded;
      const openWith = (sealScheme: SealScheme | 'auto') =>
        openToken({ ...state.tokenOptions(rep.tokenLabel), sealScheme, requireMechanisms: false, signs: state.replicas.length > 1 });
      const t = openFor(r, () => openWith(scheme));
      if (!t) continue;
      open.push(t);
      // The fleet AKE blob was sealed with the recorded scheme; a forced other scheme is tested on
      // fresh data only, and the blob is opened through a second session that uses the recorded one.
      let akeToken = t;
      if (t.sealScheme !== recorded) {
        akeToken = openWith(recorded);
        open.push(akeToken);
      }
      describeInto(t, r, opts.sealScheme !== undefined && opts.sealScheme !== 'auto');
      dataStoreInto(t, r, t.dataStore);
      // A single vault provisioned on a token without EC keys records no identity ('').
      const noIdentity = state.replicas.length === 1 && state.manifest.replicas[0]!.identityFingerprint === '';
      checkToken(t, r, akeToken, state.manifest.ceremony?.kind ?? 'host', noIdentity);
    }
    const fc = report.fleetChecks;
    const kcvAgree = (key: 'oprfSeed' | 'fleetAke') =>
      attempt(fc, `${key === 'oprfSeed' ? 'OPRF seed' : 'fleet AKE seed'} agrees across tokens`, () => {
        const vals = report.tokens.map((t) => t.kcv?.[key]);
        expect(vals.every((v) => v !== undefined), `not computed on ${report.tokens.filter((t) => !t.kcv?.[key]).map((t) => t.tokenLabel).join(', ')}`);
        expect(new Set(vals).size === 1, `KCVs differ: ${report.tokens.map((t) => `${t.tokenLabel}=${t.kcv?.[key]}`).join(', ')}`);
        expect(vals[0] === state.manifest.kcv[key], `tokens hold KCV ${vals[0]}, fleet.json records ${state.manifest.kcv[key]}`);
        return `KCV ${vals[0]} in all ${vals.length} tokens, as recorded in fleet.json`;
      });
    kcvAgree('oprfSeed');
    kcvAgree('fleetAke');
    const cer = state.manifest.ceremony;
    fc.push({ name: 'key ceremony', status: 'pass', detail: cer ? `${cer.kind === 'token' ? 'token to token' : 'on the host'}: ${cer.reason}` : 'not recorded (a fleet made before bkv recorded it: a host ceremony)' });
    attempt(fc, 'replica identities match fleet.json and differ', () => {
      const fps = report.tokens.map((t) => t.identityFingerprint);
      expect(new Set(fps).size === fps.length, 'two replicas share an identity key');
      state.manifest.replicas.forEach((m, i) =>
        expect(m.identityFingerprint === (fps[i] ?? ''), `identity of '${m.tokenLabel}' is not the one fleet.json records`),
      );
    });
    const mains = open.filter((t, i) => open.findIndex((u) => u.label === t.label) === i);
    if (mains.length > 1) {
      attempt(fc, 'record keys differ per token', () => {
        const aad = Buffer.from('bkv doctor cross');
        for (let i = 0; i < mains.length; i++) {
          const a = mains[i];
          const b = mains[(i + 1) % mains.length];
          if (a.sealScheme !== b.sealScheme) continue;
          const sealed = a.seal(KeyLabels.recordKey, Buffer.from('x'), aad);
          expectTokenError(() => b.open(KeyLabels.recordKey, sealed, aad), ['SEAL_OPEN_FAILED'], `opening a seal of '${a.label}' on '${b.label}'`);
        }
      });
    }
  } finally {
    for (const t of open) t.close();
  }
  return verdict(report, true);
}

export interface TokenDoctorOptions {
  /** Default: the URI's module-path, then BKV_PKCS11_MODULE, then SoftHSM2. */
  modulePath?: string;
  token: string;
  pin?: string;
  moduleArgs?: string;
  sealScheme?: SealScheme | 'auto';
}

/**
 * The module a token spec names: --module and a URI's module-path must agree (two different
 * modules would mean the report describes another library than the one the token was opened in).
 */
export function tokenModulePath(token: string, modulePath?: string): string {
  const fromUri = parseTokenSpec(token).modulePath;
  if (modulePath !== undefined && fromUri !== undefined && modulePath !== fromUri) {
    throw new TokenError('BAD_TOKEN_URI', `the URI's module-path (${fromUri}) differs from --module (${modulePath}); give one`, { operation: 'open' });
  }
  return modulePath ?? fromUri ?? defaultModulePath();
}

/** Doctor for one token of any PKCS#11 module: checks what exists, reports missing bkv objects. */
export function doctorToken(opts: TokenDoctorOptions): DoctorReport {
  const modulePath = tokenModulePath(opts.token, opts.modulePath);
  const report = newReport('token', modulePath);
  report.library = libraryInfo(modulePath, opts.moduleArgs);
  const r: TokenReport = { tokenLabel: opts.token, opened: false, checks: [] };
  report.tokens.push(r);
  // One token: its role is not known, so ECDSA (a fleet's need) is a warning here, not red.
  const t = openFor(r, () => openToken({ ...opts, modulePath, requireMechanisms: false, signs: false }));
  if (t) {
    try {
      r.tokenLabel = t.label;
      if (t.ecdsaMechanism === undefined) report.warnings.push(`token '${t.label}' offers no ECDSA: it can serve a single vault, not a fleet replica`);
      describeInto(t, r, opts.sealScheme !== undefined && opts.sealScheme !== 'auto');
      dataStoreInto(t, r);
      checkToken(t, r);
    } finally {
      t.close();
    }
  }
  return verdict(report, false);
}
