// The Token interface over pkcs11js, one PKCS#11 session per Token object. A Token belongs to the
// thread that opened it (sessions are not shared between threads); open one per worker.
// The hot path (seal/open/hmac) is kept to the raw calls: key handles are cached by label, the
// session is reused, the seal scheme is chosen once at open, and output buffers are allocated once
// per call with the IV written in place.
import pkcs11 from 'pkcs11js';
import { createPublicKey, createHash, randomBytes, timingSafeEqual, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { TokenError, ckrName, ckrOf, toTokenError } from './errors.ts';
import { defaultModulePath, loadModule, type LoadedModule } from './module.ts';
import { describeSelector, parseTokenSpec, type TokenSelector } from './uri.ts';
import type { HmacAlg, SealScheme, Token, TokenDescription } from './token.ts';

export interface OpenTokenOptions {
  /** Path of the PKCS#11 module; default: the URI's module-path, BKV_PKCS11_MODULE, then SoftHSM2. */
  modulePath?: string;
  /** A token label, or a PKCS#11 URI (RFC 7512) such as `pkcs11:token=us-east`. */
  token: string;
  /** User PIN. When absent, the URI's pin-source file is read. */
  pin?: string;
  /** String handed to C_Initialize (pReserved / NSS LibraryParameters) for modules that take one. */
  moduleArgs?: string;
  /** 'auto' (default) picks AES-GCM when the token offers it, else the CBC+HMAC fallback. */
  sealScheme?: SealScheme | 'auto';
  /**
   * true (default): refuse a token lacking a mechanism the vault strictly needs. false: open anyway
   * (doctor describes such tokens); the missing operations then fail when called.
   */
  requireMechanisms?: boolean;
  /**
   * true (default): the token signs for a fleet replica, so ECDSA is required. false: a single vault,
   * which never signs; sign() then fails with MECHANISM_MISSING where the token has no ECDSA.
   */
  signs?: boolean;
  /** Where bkv's data values live in this token (default 'data-object'); recorded in fleet.json. */
  dataStore?: DataStore;
}

const mechNames = new Map<number, string>();
for (const [name, value] of Object.entries(pkcs11)) {
  if (name.startsWith('CKM_') && typeof value === 'number' && !mechNames.has(value)) mechNames.set(value, name);
}
// PKCS#11 3.0 names pkcs11js does not know, and the preferred name where it knows two.
for (const [v, n] of [[0x1040, 'CKM_EC_KEY_PAIR_GEN'], [0x1055, 'CKM_EC_EDWARDS_KEY_PAIR_GEN'], [0x1057, 'CKM_EDDSA']] as const) mechNames.set(v, n);
export function mechanismName(m: number): string {
  return mechNames.get(m) ?? `CKM_0x${m.toString(16)}`;
}

/** What each seal scheme needs from the token. */
export const sealSchemeMechanisms: Record<SealScheme, number[]> = {
  'aes-256-gcm': [pkcs11.CKM_AES_GCM],
  'aes-256-cbc-hmac-sha256': [pkcs11.CKM_AES_CBC_PAD, pkcs11.CKM_SHA256_HMAC],
};
/** Mechanisms the vault needs whatever the seal scheme and role: OPRF (HMAC-SHA-512), HKDF (HMAC-SHA-256). */
export const requiredMechanisms = [pkcs11.CKM_SHA256_HMAC, pkcs11.CKM_SHA512_HMAC];
/**
 * What a fleet replica needs to sign its consensus traffic: either will do (CKM_ECDSA over a host
 * digest otherwise). A single vault never signs, so its token need offer neither.
 */
export const signingMechanisms = [pkcs11.CKM_ECDSA_SHA256, pkcs11.CKM_ECDSA];

const GCM_IV = 12;
const GCM_TAG = 16;
const CBC_IV = 16;
const MAC_LEN = 32;
// Data objects this adapter writes: 8-byte generation, then the value (see writeData).
const DATA_APP_GENERATIONS = 'bkv data v2';
const DATA_HEADER = 8;
// More than two objects of one label means someone else wrote them; the newest still wins.
const MAX_DATA_GENERATIONS = 16;
// A fresh template each call: pkcs11js fills the one it is given.
const dataAttrs = (): pkcs11.Template => [{ type: pkcs11.CKA_APPLICATION }, { type: pkcs11.CKA_VALUE }];
const keyIdAttrs = (): pkcs11.Template => [{ type: pkcs11.CKA_ID }];
// The 'secret-key-id' store: CKA_ID of an inert key starts with this tag, then the generation.
const KEY_ID_TAG = Buffer.from('bkv\x01');
const KEY_ID_HEADER = KEY_ID_TAG.length + DATA_HEADER;

/**
 * Where a token keeps bkv's small values (the sealed fleet AKE seed, the rollback anchor, the vote).
 * 'data-object': CKO_DATA token objects, CKA_VALUE (SoftHSM2 and most tokens). 'secret-key-id': for
 * tokens that refuse CKO_DATA token objects (NSS softoken): a generic secret key that can do nothing
 * (every usage flag false, sensitive, never extractable, not modifiable) whose CKA_ID holds the
 * value. The host cannot read such a value where it could not read a data object (both are private
 * token objects) and the same successor-first write protocol applies.
 */
export type DataStore = 'data-object' | 'secret-key-id';
export const DATA_STORES: readonly DataStore[] = ['data-object', 'secret-key-id'];
// Domain-separates the fallback's MAC input from any other HMAC made with the same key.
const CBC_MAC_PREFIX = Buffer.from('bkv seal cbc-hmac-sha256 v1\0');

function asBuffer(u: Uint8Array): Buffer {
  if (u.length === 0) return EMPTY;
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}
// An empty input as a zero-length view into real memory: a bare empty Buffer reaches the module as a
// NULL pointer, which SoftHSM2 refuses (CKR_ARGUMENTS_BAD, leaving the operation active), while a
// non-NULL pointer with length 0 is what every module takes in a one-part call. The one-part call
// (C_Encrypt, C_Sign) is the portable one: NSS refuses C_EncryptFinal for AES-GCM after C_EncryptInit
// (CKR_OPERATION_NOT_INITIALIZED) and leaves the session stuck with the operation active.
const EMPTY = Buffer.alloc(16).subarray(8, 8);

/** The MAC key that pairs with an AES key in the fallback scheme: `record-key` -> `record-mac-key`. */
export function macKeyLabelFor(keyLabel: string): string {
  return keyLabel.replace(/-key$/, '') + '-mac-key';
}

function readPinSource(source: string): string {
  const path = source.startsWith('file:') ? fileURLToPath(source) : source;
  try {
    return readFileSync(path, 'utf8').replace(/\r?\n$/, '');
  } catch (e) {
    throw new TokenError('PIN_FILE_UNREADABLE', `cannot read PIN file ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, {
      operation: 'login',
    });
  }
}

// Digests (salted per process) of PINs that logged in from this thread, to catch a wrong PIN when
// the module skips the check because the token is already logged in. Never the PIN itself.
const pinSalt = randomBytes(32);
const loginPins = new Map<string, Buffer>();
function pinDigest(pin: string): Buffer {
  return createHash('sha256').update(pinSalt).update(pin).digest();
}

function slotIdString(slot: Buffer): string {
  return slot.length >= 8 ? slot.readBigUInt64LE(0).toString() : slot.readUInt32LE(0).toString();
}

/** Finds the one slot whose token matches the selector; throws a clear error for none or several. */
export function findSlot(lib: pkcs11.PKCS11, sel: TokenSelector): { slot: Buffer; info: pkcs11.TokenInfo } {
  let slots: Buffer[];
  try {
    slots = lib.C_GetSlotList(true);
  } catch (e) {
    throw toTokenError(e, 'C_GetSlotList', '', 'listing slots');
  }
  const matches: { slot: Buffer; info: pkcs11.TokenInfo }[] = [];
  const labels: string[] = [];
  for (const slot of slots) {
    let info: pkcs11.TokenInfo;
    try {
      info = lib.C_GetTokenInfo(slot);
    } catch {
      continue; // a slot that lost its token between the two calls
    }
    if (!(info.flags & pkcs11.CKF_TOKEN_INITIALIZED)) continue;
    const label = info.label.trimEnd();
    labels.push(label);
    if (sel.token !== undefined && label !== sel.token) continue;
    if (sel.serial !== undefined && info.serialNumber.trimEnd() !== sel.serial) continue;
    if (sel.model !== undefined && info.model.trimEnd() !== sel.model) continue;
    if (sel.manufacturer !== undefined && info.manufacturerID.trimEnd() !== sel.manufacturer) continue;
    if (sel.slotId !== undefined && slotIdString(slot) !== sel.slotId) continue;
    matches.push({ slot, info });
  }
  if (matches.length === 0) {
    const have = labels.length ? `tokens present: ${labels.map((l) => `'${l}'`).join(', ')}` : 'no initialised token is present';
    throw new TokenError('TOKEN_NOT_FOUND', `no token matches ${describeSelector(sel)} (${have})`, { operation: 'open' });
  }
  if (matches.length > 1) {
    throw new TokenError('TOKEN_AMBIGUOUS', `${matches.length} tokens match ${describeSelector(sel)}; add serial= to the URI`, {
      operation: 'open',
    });
  }
  return matches[0];
}

export class Pkcs11Token implements Token {
  readonly label: string;
  readonly module: LoadedModule;
  readonly slot: Buffer;
  readonly tokenInfo: pkcs11.TokenInfo;
  /** Mechanisms the token offers. */
  readonly mechanisms: ReadonlySet<number>;
  /** Strictly needed mechanisms this token lacks (empty unless opened with requireMechanisms: false). */
  readonly missingMechanisms: string[];
  readonly sealScheme: SealScheme;
  /** Whether ECDSA hashes in the token (CKM_ECDSA_SHA256) or on the host (CKM_ECDSA over a digest). */
  readonly ecdsaMechanism: 'CKM_ECDSA_SHA256' | 'CKM_ECDSA' | undefined;
  /** Where this token keeps bkv's data values; set at open, or by useDataStore once probed. */
  get dataStore(): DataStore {
    return this.store;
  }
  private store: DataStore;
  private readonly lib: pkcs11.PKCS11;
  private readonly pin: string;
  private session: Buffer;
  private sessionBroken = false;
  private closed = false;
  private readonly handles = new Map<string, Buffer>();
  /** Hash-bound twins (hmacKey) this token was found not to hold; cleared with the handles. */
  private readonly noTwin = new Set<string>();
  /** Data objects by label: the handle and generation this session last wrote or read. */
  private readonly dataCache = new Map<string, { handle: Buffer; generation: number }>();
  private readonly verifyKeys = new Map<string, KeyObject>();

  private constructor(mod: LoadedModule, slot: Buffer, info: pkcs11.TokenInfo, pin: string, opts: OpenTokenOptions) {
    this.module = mod;
    this.lib = mod.lib;
    this.slot = slot;
    this.tokenInfo = info;
    this.label = info.label.trimEnd();
    this.pin = pin;
    let mechs: number[];
    try {
      mechs = this.lib.C_GetMechanismList(slot);
    } catch (e) {
      throw toTokenError(e, 'C_GetMechanismList', this.label, 'listing mechanisms');
    }
    this.mechanisms = new Set(mechs);
    const missing = requiredMechanisms.filter((m) => !this.mechanisms.has(m)).map(mechanismName);
    const canSign = signingMechanisms.some((m) => this.mechanisms.has(m));
    if (opts.signs !== false && !canSign) missing.push(signingMechanisms.map(mechanismName).join(' or '));
    const wanted = opts.sealScheme ?? 'auto';
    const has = (s: SealScheme) => sealSchemeMechanisms[s].every((m) => this.mechanisms.has(m));
    let scheme: SealScheme;
    if (wanted === 'auto') {
      scheme = has('aes-256-gcm') ? 'aes-256-gcm' : 'aes-256-cbc-hmac-sha256';
    } else {
      scheme = wanted;
    }
    if (!has(scheme)) {
      const lacking = sealSchemeMechanisms[scheme].filter((m) => !this.mechanisms.has(m)).map(mechanismName);
      // With 'auto' either scheme would do, so name both ways out.
      missing.push(wanted === 'auto' ? `${mechanismName(pkcs11.CKM_AES_GCM)} or ${lacking.join(' + ')}` : lacking.join(' + '));
    }
    this.missingMechanisms = [...new Set(missing)];
    if (this.missingMechanisms.length && opts.requireMechanisms !== false) {
      const list = this.missingMechanisms.join(', ');
      throw new TokenError('MECHANISM_MISSING', `token '${this.label}' lacks mechanisms bkv needs: ${list}`, {
        operation: 'open',
        tokenLabel: this.label,
      });
    }
    this.sealScheme = scheme;
    this.ecdsaMechanism = this.mechanisms.has(pkcs11.CKM_ECDSA_SHA256) ? 'CKM_ECDSA_SHA256' : canSign ? 'CKM_ECDSA' : undefined;
    this.store = opts.dataStore ?? 'data-object';
    if (!DATA_STORES.includes(this.store)) {
      throw new TokenError('BAD_INPUT', `unknown data store '${String(this.store)}'`, { operation: 'open', tokenLabel: this.label });
    }
    this.session = this.openSession();
  }

  static open(opts: OpenTokenOptions): Pkcs11Token {
    const sel = parseTokenSpec(opts.token);
    const modulePath = opts.modulePath ?? sel.modulePath ?? defaultModulePath();
    let pin = opts.pin;
    if (pin === undefined && sel.pinSource) pin = readPinSource(sel.pinSource);
    if (pin === undefined) {
      throw new TokenError('PIN_MISSING', `no PIN given for ${describeSelector(sel)}`, { operation: 'open' });
    }
    const mod = loadModule(modulePath, opts.moduleArgs);
    const { slot, info } = findSlot(mod.lib, sel);
    return new Pkcs11Token(mod, slot, info, pin, opts);
  }

  private openSession(): Buffer {
    let session: Buffer;
    try {
      session = this.lib.C_OpenSession(this.slot, pkcs11.CKF_SERIAL_SESSION | pkcs11.CKF_RW_SESSION);
    } catch (e) {
      throw toTokenError(e, 'C_OpenSession', this.label, 'opening a session');
    }
    try {
      this.lib.C_Login(session, pkcs11.CKU_USER, this.pin);
    } catch (e) {
      // Login state is per application and token: another session may already hold it, and then
      // the module does not look at the PIN. Where this thread made that login, compare with it.
      const known = loginPins.get(this.loginKey);
      if (ckrOf(e) === pkcs11.CKR_USER_ALREADY_LOGGED_IN && known && !timingSafeEqual(known, pinDigest(this.pin))) {
        try {
          this.lib.C_CloseSession(session);
        } catch {
          /* reporting the wrong PIN matters more */
        }
        throw new TokenError('PIN_INCORRECT', `wrong PIN for token '${this.label}' (it differs from the PIN this process logged in with)`, {
          operation: 'C_Login',
          tokenLabel: this.label,
        });
      }
      if (ckrOf(e) !== pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
        try {
          this.lib.C_CloseSession(session);
        } catch {
          /* reporting the login failure matters more */
        }
        const err = toTokenError(e, 'C_Login', this.label, 'logging in');
        if (err.code === 'PIN_INCORRECT') {
          throw new TokenError('PIN_INCORRECT', `wrong PIN for token '${this.label}' (${err.ckr})`, {
            ckr: err.ckr,
            operation: 'C_Login',
            tokenLabel: this.label,
          });
        }
        throw err;
      }
    }
    if (!loginPins.has(this.loginKey)) loginPins.set(this.loginKey, pinDigest(this.pin));
    return session;
  }

  private get loginKey(): string {
    return `${this.module.path}\0${this.tokenInfo.serialNumber}\0${this.label}`;
  }

  /** The live session, reopened (and logged in again) after a session loss was reported. */
  get sessionHandle(): Buffer {
    if (this.sessionBroken) this.reopen();
    return this.session;
  }

  /** The raw pkcs11js binding, for provisioning and the benchmark's baseline. */
  get raw(): pkcs11.PKCS11 {
    return this.lib;
  }

  private reopen(): void {
    if (this.closed) throw new TokenError('TOKEN_CLOSED', `token '${this.label}' is closed`, { operation: 'use', tokenLabel: this.label });
    // The new session first: while the old one is open the login stands, so the new one need not log
    // in again (SoftHSM2 rewrites its token file at every real C_Login, and a process killed during
    // that rewrite leaves a token that no longer logs in).
    const old = this.session;
    this.session = this.openSession();
    try {
      this.lib.C_CloseSession(old);
    } catch {
      /* already gone */
    }
    // Handles of token objects survive a new session, but not a re-inserted token: look them up again.
    this.handles.clear();
    this.noTwin.clear();
    this.dataCache.clear();
    this.sessionBroken = false;
  }

  // Any failed token call may leave the session unusable: lost, or holding an operation the module
  // did not terminate (SoftHSM2 keeps it active after CKR_ARGUMENTS_BAD). Errors are rare, so the
  // next call simply starts over with a fresh session rather than guessing which case this is.
  private fail(e: unknown, operation: string, what?: string): TokenError {
    this.sessionBroken = true;
    return toTokenError(e, operation, this.label, what);
  }

  /** Handle of the object with this label and class, or undefined. Not cached (provisioning uses it). */
  findObject(label: string, cls: number, keyType?: number): Buffer | undefined {
    const s = this.sessionHandle;
    const tmpl: pkcs11.Template = [
      { type: pkcs11.CKA_CLASS, value: cls },
      { type: pkcs11.CKA_LABEL, value: label },
    ];
    if (keyType !== undefined) tmpl.push({ type: pkcs11.CKA_KEY_TYPE, value: keyType });
    let found: Buffer[];
    try {
      this.lib.C_FindObjectsInit(s, tmpl);
      try {
        found = this.lib.C_FindObjects(s, 2);
      } finally {
        this.lib.C_FindObjectsFinal(s);
      }
    } catch (e) {
      throw this.fail(e, 'C_FindObjects', `finding '${label}'`);
    }
    if (found.length > 1) {
      throw new TokenError('KEY_AMBIGUOUS', `token '${this.label}' holds several objects labelled '${label}'`, {
        operation: 'find',
        tokenLabel: this.label,
      });
    }
    return found[0];
  }

  private handle(label: string, cls: number): Buffer {
    const cacheKey = cls === pkcs11.CKO_SECRET_KEY ? label : `${cls}:${label}`;
    const cached = this.handles.get(cacheKey);
    if (cached && !this.sessionBroken) return cached;
    const h = this.findObject(label, cls);
    if (!h) {
      const what = cls === pkcs11.CKO_SECRET_KEY ? 'secret key' : cls === pkcs11.CKO_PRIVATE_KEY ? 'private key' : cls === pkcs11.CKO_PUBLIC_KEY ? 'public key' : 'data object';
      throw new TokenError('KEY_NOT_FOUND', `token '${this.label}' has no ${what} labelled '${label}'`, {
        operation: 'find',
        tokenLabel: this.label,
      });
    }
    this.handles.set(cacheKey, h);
    return h;
  }

  /** Cached handle of a secret key; exposed for the benchmark's raw baseline. */
  secretKeyHandle(label: string): Buffer {
    return this.handle(label, pkcs11.CKO_SECRET_KEY);
  }

  describe(): TokenDescription {
    return {
      label: this.label,
      slotId: slotIdString(this.slot),
      manufacturer: this.tokenInfo.manufacturerID.trimEnd(),
      model: this.tokenInfo.model.trimEnd(),
      serial: this.tokenInfo.serialNumber.trimEnd(),
      mechanisms: [...this.mechanisms].map(mechanismName).sort(),
      sealScheme: this.sealScheme,
    };
  }

  seal(keyLabel: string, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
    if (aad.length === 0) throw this.emptyAad('seal');
    if (this.sealScheme === 'aes-256-gcm') {
      const key = this.handle(keyLabel, pkcs11.CKO_SECRET_KEY);
      const s = this.session;
      const out = Buffer.allocUnsafe(GCM_IV + plaintext.length + GCM_TAG);
      const iv = out.subarray(0, GCM_IV);
      try {
        this.lib.C_GenerateRandom(s, iv);
        this.lib.C_EncryptInit(
          s,
          { mechanism: pkcs11.CKM_AES_GCM, parameter: { type: pkcs11.CK_PARAMS_AES_GCM_v240, iv, ivBits: GCM_IV * 8, aad: asBuffer(aad), tagBits: GCM_TAG * 8 } as pkcs11.GcmParams },
          key,
        );
        const ct = this.lib.C_Encrypt(s, asBuffer(plaintext), out.subarray(GCM_IV));
        if (ct.length !== plaintext.length + GCM_TAG) throw new Error(`unexpected ciphertext length ${ct.length}`);
      } catch (e) {
        throw this.fail(e, 'seal');
      }
      return out;
    }
    return this.sealCbcHmac(keyLabel, plaintext, aad);
  }

  open(keyLabel: string, sealed: Uint8Array, aad: Uint8Array): Uint8Array {
    if (aad.length === 0) throw this.emptyAad('open');
    if (this.sealScheme === 'aes-256-gcm') {
      if (sealed.length < GCM_IV + GCM_TAG) throw this.openFailed('sealed data too short');
      const key = this.handle(keyLabel, pkcs11.CKO_SECRET_KEY);
      const s = this.session;
      const input = asBuffer(sealed);
      // SoftHSM2 wants room for ciphertext+tag in the output even though it writes only the plaintext.
      const out = Buffer.allocUnsafe(sealed.length - GCM_IV);
      let pt: Buffer;
      try {
        this.lib.C_DecryptInit(
          s,
          { mechanism: pkcs11.CKM_AES_GCM, parameter: { type: pkcs11.CK_PARAMS_AES_GCM_v240, iv: input.subarray(0, GCM_IV), ivBits: GCM_IV * 8, aad: asBuffer(aad), tagBits: GCM_TAG * 8 } as pkcs11.GcmParams },
          key,
        );
      } catch (e) {
        throw this.fail(e, 'open');
      }
      try {
        pt = this.lib.C_Decrypt(s, input.subarray(GCM_IV), out);
      } catch (e) {
        throw this.decryptFailure(e);
      }
      return pt;
    }
    return this.openCbcHmac(keyLabel, sealed, aad);
  }

  // Fallback: AES-256-CBC-PAD then HMAC-SHA-256 over prefix || len(aad) || aad || iv || ciphertext.
  // Output: iv(16) || ciphertext || mac(32). The MAC is checked before anything is decrypted.
  private sealCbcHmac(keyLabel: string, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
    const key = this.handle(keyLabel, pkcs11.CKO_SECRET_KEY);
    const macKey = this.handle(macKeyLabelFor(keyLabel), pkcs11.CKO_SECRET_KEY);
    const s = this.session;
    const ctLen = (Math.floor(plaintext.length / 16) + 1) * 16;
    const out = Buffer.allocUnsafe(CBC_IV + ctLen + MAC_LEN);
    const iv = out.subarray(0, CBC_IV);
    try {
      this.lib.C_GenerateRandom(s, iv);
      this.lib.C_EncryptInit(s, { mechanism: pkcs11.CKM_AES_CBC_PAD, parameter: iv }, key);
      const dst = out.subarray(CBC_IV, CBC_IV + ctLen);
      const ct = this.lib.C_Encrypt(s, asBuffer(plaintext), dst);
      if (ct.length !== ctLen) throw new Error(`unexpected ciphertext length ${ct.length}`);
      this.macInto(macKey, aad, out.subarray(0, CBC_IV + ctLen), out.subarray(CBC_IV + ctLen));
    } catch (e) {
      throw this.fail(e, 'seal');
    }
    return out;
  }

  private openCbcHmac(keyLabel: string, sealed: Uint8Array, aad: Uint8Array): Uint8Array {
    if (sealed.length < CBC_IV + 16 + MAC_LEN || (sealed.length - CBC_IV - MAC_LEN) % 16 !== 0) {
      throw this.openFailed('sealed data has a bad length');
    }
    const key = this.handle(keyLabel, pkcs11.CKO_SECRET_KEY);
    const macKey = this.handle(macKeyLabelFor(keyLabel), pkcs11.CKO_SECRET_KEY);
    const s = this.session;
    const input = asBuffer(sealed);
    const body = input.subarray(0, input.length - MAC_LEN);
    const mac = Buffer.allocUnsafe(MAC_LEN);
    let pt: Buffer;
    try {
      this.macInto(macKey, aad, body, mac);
    } catch (e) {
      throw this.fail(e, 'open');
    }
    if (!timingSafeEqual(mac, input.subarray(input.length - MAC_LEN))) throw this.openFailed('MAC mismatch');
    try {
      this.lib.C_DecryptInit(s, { mechanism: pkcs11.CKM_AES_CBC_PAD, parameter: input.subarray(0, CBC_IV) }, key);
    } catch (e) {
      throw this.fail(e, 'open');
    }
    try {
      pt = this.lib.C_Decrypt(s, body.subarray(CBC_IV), Buffer.allocUnsafe(body.length - CBC_IV));
    } catch (e) {
      throw this.decryptFailure(e);
    }
    return pt;
  }

  private macInto(macKey: Buffer, aad: Uint8Array, ivAndCt: Buffer, out: Buffer): void {
    const s = this.session;
    const len = Buffer.allocUnsafe(8);
    len.writeBigUInt64BE(BigInt(aad.length));
    this.lib.C_SignInit(s, { mechanism: pkcs11.CKM_SHA256_HMAC }, macKey);
    this.lib.C_SignUpdate(s, CBC_MAC_PREFIX);
    this.lib.C_SignUpdate(s, len);
    this.lib.C_SignUpdate(s, asBuffer(aad));
    this.lib.C_SignUpdate(s, ivAndCt);
    const m = this.lib.C_SignFinal(s, out);
    if (m.length !== MAC_LEN) throw new Error(`unexpected MAC length ${m.length}`);
  }

  hmac(keyLabel: string, alg: HmacAlg, data: Uint8Array): Uint8Array {
    const key = this.hmacKey(keyLabel, alg);
    const s = this.session;
    const sha512 = alg === 'sha512';
    try {
      this.lib.C_SignInit(s, { mechanism: sha512 ? pkcs11.CKM_SHA512_HMAC : pkcs11.CKM_SHA256_HMAC }, key);
      const out = Buffer.allocUnsafe(sha512 ? 64 : 32);
      return this.lib.C_Sign(s, asBuffer(data), out);
    } catch (e) {
      throw this.fail(e, 'hmac');
    }
  }

  // A key may have a twin bound to one hash, `<label>-<alg>` (KeyLabels.oprfSeedSha256): used when
  // the token holds it, else the key itself. Looked up once per label and session.
  private hmacKey(keyLabel: string, alg: HmacAlg): Buffer {
    const twin = `${keyLabel}-${alg}`;
    const cached = this.handles.get(twin);
    if (cached && !this.sessionBroken) return cached;
    if (!this.sessionBroken && this.noTwin.has(twin)) return this.handle(keyLabel, pkcs11.CKO_SECRET_KEY);
    const h = this.findObject(twin, pkcs11.CKO_SECRET_KEY);
    if (h) {
      this.handles.set(twin, h);
      return h;
    }
    this.noTwin.add(twin);
    return this.handle(keyLabel, pkcs11.CKO_SECRET_KEY);
  }

  sign(keyLabel: string, data: Uint8Array): Uint8Array {
    if (this.ecdsaMechanism === undefined) {
      throw new TokenError('MECHANISM_MISSING', `token '${this.label}' offers no ECDSA (${signingMechanisms.map(mechanismName).join(' or ')}): it cannot sign for a fleet`, { operation: 'sign', tokenLabel: this.label });
    }
    const key = this.handle(keyLabel, pkcs11.CKO_PRIVATE_KEY);
    const s = this.sessionHandle;
    try {
      if (this.ecdsaMechanism === 'CKM_ECDSA_SHA256') {
        this.lib.C_SignInit(s, { mechanism: pkcs11.CKM_ECDSA_SHA256 }, key);
        return this.lib.C_Sign(s, asBuffer(data), Buffer.allocUnsafe(64));
      }
      const digest = createHash('sha256').update(data).digest();
      this.lib.C_SignInit(s, { mechanism: pkcs11.CKM_ECDSA }, key);
      return this.lib.C_Sign(s, digest, Buffer.allocUnsafe(64));
    } catch (e) {
      throw this.fail(e, 'sign');
    }
  }

  // Verification needs no secret, so it runs on the host (node:crypto): importing a peer's public key
  // into the token for every check would cost a token object per call.
  verify(publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
    if (signature.length !== 64) return false;
    const hex = Buffer.from(publicKey).toString('hex');
    let key = this.verifyKeys.get(hex);
    if (!key) {
      if (publicKey.length !== 65 || publicKey[0] !== 4) {
        throw new TokenError('BAD_PUBLIC_KEY', 'public key is not an uncompressed P-256 point (65 bytes, 0x04...)', { operation: 'verify', tokenLabel: this.label });
      }
      try {
        key = createPublicKey({
          key: { kty: 'EC', crv: 'P-256', x: Buffer.from(publicKey.subarray(1, 33)).toString('base64url'), y: Buffer.from(publicKey.subarray(33)).toString('base64url') },
          format: 'jwk',
        });
      } catch {
        throw new TokenError('BAD_PUBLIC_KEY', 'public key is not a point on P-256', { operation: 'verify', tokenLabel: this.label });
      }
      this.verifyKeys.set(hex, key);
    }
    return cryptoVerify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, signature);
  }

  publicKey(keyLabel: string): Uint8Array {
    const h = this.handle(keyLabel, pkcs11.CKO_PUBLIC_KEY);
    let point: Buffer;
    try {
      point = this.lib.C_GetAttributeValue(this.sessionHandle, h, [{ type: pkcs11.CKA_EC_POINT }])[0].value;
    } catch (e) {
      throw this.fail(e, 'publicKey');
    }
    // CKA_EC_POINT is a DER OCTET STRING around the SEC1 point; some tokens store the bare point.
    if (point.length === 67 && point[0] === 0x04 && point[1] === 0x41) point = point.subarray(2);
    if (point.length !== 65 || point[0] !== 0x04) {
      throw new TokenError('BAD_PUBLIC_KEY', `token '${this.label}': '${keyLabel}' is not an uncompressed P-256 point`, { operation: 'publicKey', tokenLabel: this.label });
    }
    return Uint8Array.from(point);
  }

  readData(label: string): Uint8Array {
    // The object this session last wrote or read, when it is still there: one call, as a cached key.
    // (Another writer replaces it by destroying it, so a stale handle fails and the search below runs.
    // A writer killed between creating its successor and destroying the old object leaves the old
    // one in place: this session then reads the last value whose write returned, and its own next
    // write finds the successor and is refused, DATA_CHANGED.)
    const known = this.dataCache.get(label);
    if (known && !this.sessionBroken) {
      try {
        const o = this.decodeData(label, known.handle, this.lib.C_GetAttributeValue(this.session, known.handle, this.storeAttrs()), 'readData');
        if (o.generation === known.generation) return o.value;
      } catch (e) {
        if (e instanceof TokenError) throw e;
        if (ckrOf(e) !== pkcs11.CKR_OBJECT_HANDLE_INVALID) throw this.fail(e, 'readData');
      }
      this.dataCache.delete(label);
    }
    const objects = this.findData(label, 'readData').map((h) => this.dataObject(label, h, 'readData'));
    if (objects.length === 0) {
      throw new TokenError('KEY_NOT_FOUND', `token '${this.label}' has no data object labelled '${label}'`, { operation: 'readData', tokenLabel: this.label });
    }
    const [newest, next] = [...objects].sort((a, b) => b.generation - a.generation);
    if (next && next.generation === newest!.generation) {
      throw new TokenError('KEY_AMBIGUOUS', `token '${this.label}' holds several data objects labelled '${label}' of one generation`, { operation: 'readData', tokenLabel: this.label });
    }
    this.dataCache.set(label, { handle: newest!.handle, generation: newest!.generation });
    return newest!.value;
  }

  /**
   * An overwrite creates the successor before it destroys what it replaces: the host controls the
   * process and can kill it between any two calls, and a destroy-then-create would leave, for an
   * instant it can aim at, no anchor and no vote at all (a rolled-back disk would pass; a second vote
   * in one term would be cast). Killed between the two, the token holds both, and the higher
   * generation is the value. (SoftHSM2 makes CKA_VALUE of a data object read-only, so an in-place
   * C_SetAttributeValue is not the portable way either.) A newer object this session did not write
   * means another writer (another instance of this replica) moved it: DATA_CHANGED, nothing written.
   */
  writeData(label: string, value: Uint8Array): void {
    const known = this.dataCache.get(label);
    const old = this.findData(label, 'writeData').map((handle) =>
      known && handle.equals(known.handle) ? { handle, generation: known.generation } : { handle, generation: this.dataObject(label, handle, 'writeData').generation });
    if (known && old.some((o) => o.generation > known.generation)) {
      this.dataCache.delete(label);
      throw new TokenError('DATA_CHANGED', `token '${this.label}': data object '${label}' was rewritten by another session or process`, { operation: 'writeData', tokenLabel: this.label });
    }
    const generation = old.reduce((g, o) => Math.max(g, o.generation), 0) + 1;
    const framed = Buffer.alloc(DATA_HEADER + value.length);
    framed.writeBigUInt64BE(BigInt(generation), 0);
    framed.set(value, DATA_HEADER);
    let handle: Buffer;
    try {
      handle = this.store === 'data-object'
        ? this.lib.C_CreateObject(this.sessionHandle, [
            { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_DATA },
            { type: pkcs11.CKA_TOKEN, value: true },
            { type: pkcs11.CKA_PRIVATE, value: true },
            { type: pkcs11.CKA_APPLICATION, value: DATA_APP_GENERATIONS },
            { type: pkcs11.CKA_LABEL, value: label },
            { type: pkcs11.CKA_VALUE, value: framed },
          ])
        : this.lib.C_GenerateKey(this.sessionHandle, { mechanism: pkcs11.CKM_GENERIC_SECRET_KEY_GEN }, inertKeyTemplate(label, Buffer.concat([KEY_ID_TAG, framed])));
    } catch (e) {
      this.dataCache.delete(label);
      throw this.fail(e, 'writeData');
    }
    // NSS softoken answers a key generation whose label and CKA_ID equal an existing key's with that
    // key's handle. The generation makes the CKA_ID new, but should a module ever hand back an old
    // handle, destroying "the old objects" would destroy the only copy: stop instead.
    if (old.some((o) => o.handle.equals(handle))) {
      this.dataCache.delete(label);
      this.sessionBroken = true;
      throw new TokenError('DATA_CHANGED', `token '${this.label}': writing '${label}' returned an existing object; nothing was destroyed`, { operation: 'writeData', tokenLabel: this.label });
    }
    this.dataCache.set(label, { handle, generation });
    for (const o of old) {
      try {
        this.lib.C_DestroyObject(this.sessionHandle, o.handle);
      } catch (e) {
        // The new value stands (it has the higher generation); the old object goes at the next write.
        throw this.fail(e, 'writeData');
      }
    }
  }

  private findData(label: string, operation: 'readData' | 'writeData'): Buffer[] {
    const s = this.sessionHandle;
    try {
      this.lib.C_FindObjectsInit(s, [
        { type: pkcs11.CKA_CLASS, value: this.store === 'data-object' ? pkcs11.CKO_DATA : pkcs11.CKO_SECRET_KEY },
        { type: pkcs11.CKA_LABEL, value: label },
      ]);
      try {
        return this.lib.C_FindObjects(s, MAX_DATA_GENERATIONS);
      } finally {
        this.lib.C_FindObjectsFinal(s);
      }
    } catch (e) {
      throw this.fail(e, operation, `finding '${label}'`);
    }
  }

  private dataObject(label: string, handle: Buffer, operation: 'readData' | 'writeData'): { handle: Buffer; generation: number; value: Uint8Array } {
    let attrs: pkcs11.Attribute[];
    try {
      attrs = this.lib.C_GetAttributeValue(this.sessionHandle, handle, this.storeAttrs());
    } catch (e) {
      throw this.fail(e, operation);
    }
    return this.decodeData(label, handle, attrs, operation);
  }

  /**
   * Objects this adapter wrote carry their generation in an 8-byte header (application
   * DATA_APP_GENERATIONS); any other (written once at provisioning, or by an older bkv) is
   * generation 0 and its value is taken whole.
   */
  private decodeData(label: string, handle: Buffer, attrs: pkcs11.Attribute[], operation: 'readData' | 'writeData'): { handle: Buffer; generation: number; value: Uint8Array } {
    if (this.store === 'secret-key-id') {
      const id = attrs[0]!.value as Buffer;
      if (id.length < KEY_ID_HEADER || !id.subarray(0, KEY_ID_TAG.length).equals(KEY_ID_TAG)) {
        throw new TokenError('DATA_CORRUPT', `token '${this.label}': key '${label}' does not hold a bkv value in CKA_ID`, { operation, tokenLabel: this.label });
      }
      return { handle, generation: Number(id.readBigUInt64BE(KEY_ID_TAG.length)), value: Uint8Array.from(id.subarray(KEY_ID_HEADER)) };
    }
    const app = Buffer.from(attrs[0]!.value as Buffer).toString('utf8');
    const raw = attrs[1]!.value as Buffer;
    if (app !== DATA_APP_GENERATIONS) return { handle, generation: 0, value: Uint8Array.from(raw) };
    if (raw.length < DATA_HEADER) {
      throw new TokenError('DATA_CORRUPT', `token '${this.label}': data object '${label}' is shorter than its header`, { operation, tokenLabel: this.label });
    }
    return { handle, generation: Number(raw.readBigUInt64BE(0)), value: Uint8Array.from(raw.subarray(DATA_HEADER)) };
  }

  private storeAttrs(): pkcs11.Template {
    return this.store === 'data-object' ? dataAttrs() : keyIdAttrs();
  }

  /** Forgets cached key lookups (provisioning, after it made keys): a twin found missing may exist now. */
  forgetKeys(): void {
    this.handles.clear();
    this.noTwin.clear();
  }

  /** Switches the data store (provisioning, after probing the token). */
  useDataStore(store: DataStore): void {
    if (!DATA_STORES.includes(store)) throw new TokenError('BAD_INPUT', `unknown data store '${String(store)}'`, { operation: 'open', tokenLabel: this.label });
    this.store = store;
    this.dataCache.clear();
  }

  /** Whether a value with this label exists in the token's data store. */
  hasData(label: string): boolean {
    return this.findData(label, 'readData').length > 0;
  }

  /**
   * Which data stores this token accepts, found by writing and destroying a probe of each (token
   * objects, so this writes to the token: doctor and provisioning only). A refusal gives its CKR.
   */
  probeDataStores(): Record<DataStore, true | string> {
    const s = this.sessionHandle;
    const label = 'bkv-probe';
    const attempt = (make: () => Buffer): true | string => {
      let h: Buffer;
      try {
        h = make();
      } catch (e) {
        return ckrOf(e) !== undefined ? ckrName(ckrOf(e)!) : (e as Error).message;
      }
      try {
        this.lib.C_DestroyObject(s, h);
      } catch (e) {
        throw this.fail(e, 'probe', 'removing a probe object');
      }
      return true;
    };
    return {
      'data-object': attempt(() => this.lib.C_CreateObject(s, [
        { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_DATA },
        { type: pkcs11.CKA_TOKEN, value: true },
        { type: pkcs11.CKA_PRIVATE, value: true },
        { type: pkcs11.CKA_LABEL, value: label },
        { type: pkcs11.CKA_VALUE, value: Buffer.from('probe') },
      ])),
      'secret-key-id': this.mechanisms.has(pkcs11.CKM_GENERIC_SECRET_KEY_GEN)
        ? attempt(() => this.lib.C_GenerateKey(s, { mechanism: pkcs11.CKM_GENERIC_SECRET_KEY_GEN }, inertKeyTemplate(label, Buffer.concat([KEY_ID_TAG, Buffer.alloc(DATA_HEADER + 96)]))))
        : 'lacks CKM_GENERIC_SECRET_KEY_GEN',
    };
  }

  random(length: number): Uint8Array {
    if (!Number.isInteger(length) || length < 0) {
      throw new TokenError('BAD_INPUT', `random length must be a non-negative integer`, { operation: 'random', tokenLabel: this.label });
    }
    const out = Buffer.allocUnsafe(length);
    if (length === 0) return out;
    try {
      return this.lib.C_GenerateRandom(this.sessionHandle, out);
    } catch (e) {
      throw this.fail(e, 'random');
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handles.clear();
    this.dataCache.clear();
    try {
      this.lib.C_CloseSession(this.session);
    } catch {
      /* the session may already be gone with the token */
    }
  }

  private emptyAad(operation: string): TokenError {
    return new TokenError('BAD_INPUT', `${operation} needs a non-empty AAD`, { operation, tokenLabel: this.label });
  }

  // After a successful C_DecryptInit, these are how tokens report a bad tag or padding (SoftHSM2
  // says CKR_GENERAL_ERROR for a GCM tag mismatch). Device and session failures stay what they are,
  // so a sick token is never mistaken for tampering or the other way round. Either way the next call
  // gets a fresh session: whether a failed C_Decrypt ended the operation differs between modules
  // (SoftHSM2 keeps it active after CKR_BUFFER_TOO_SMALL, as the standard says), and a session left
  // holding it fails every later C_DecryptInit with CKR_OPERATION_ACTIVE.
  private decryptFailure(e: unknown): TokenError {
    this.sessionBroken = true;
    const rv = ckrOf(e);
    if (rv === pkcs11.CKR_ENCRYPTED_DATA_INVALID || rv === pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE || rv === pkcs11.CKR_GENERAL_ERROR || rv === pkcs11.CKR_FUNCTION_FAILED) {
      return this.openFailed(ckrName(rv));
    }
    return this.fail(e, 'open');
  }

  private openFailed(why: string): TokenError {
    return new TokenError('SEAL_OPEN_FAILED', `cannot open sealed data on token '${this.label}': ${why}`, {
      operation: 'open',
      tokenLabel: this.label,
      ckr: why.startsWith('CKR_') ? why : '',
    });
  }
}

/** A key that can do nothing, whose CKA_ID carries a value: the 'secret-key-id' data store. */
function inertKeyTemplate(label: string, id: Buffer): pkcs11.Template {
  return [
    { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_SECRET_KEY },
    { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_GENERIC_SECRET },
    { type: pkcs11.CKA_TOKEN, value: true },
    { type: pkcs11.CKA_PRIVATE, value: true },
    { type: pkcs11.CKA_SENSITIVE, value: true },
    { type: pkcs11.CKA_EXTRACTABLE, value: false },
    { type: pkcs11.CKA_MODIFIABLE, value: false },
    { type: pkcs11.CKA_VALUE_LEN, value: 16 },
    { type: pkcs11.CKA_LABEL, value: label },
    { type: pkcs11.CKA_ID, value: id },
    ...[pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE].map((type) => ({ type, value: false })),
  ];
}

/** Opens a token by label or PKCS#11 URI and logs in. */
export function openToken(opts: OpenTokenOptions): Pkcs11Token {
  return Pkcs11Token.open(opts);
}

export { finalizeModule, defaultModulePath } from './module.ts';
