// OPAQUE-3DH of RFC 9807: registration and login, device (client) side and vault (server) side.
// Pure: randomness comes from an injected ByteRng, the vault's secrets through ServerSecrets. Section
// numbers below are RFC 9807's.
import { createHash, randomBytes, randomFillSync, timingSafeEqual } from 'node:crypto';
import { OpaqueError } from './errors.ts';
import { EMPTY, concat, hkdfExpand, hkdfExtract, hmac, i2osp, utf8 } from './hash.ts';
import { nativeStatus, type NativeStatus } from '../../native/index.ts';
import {
  nativeAvailable,
  nativeRistretto255,
  nobleP256,
  nobleRistretto255,
  primeDhGroup,
  sodiumReady,
  sodiumRistretto255,
  x25519DhGroup,
  type BackendId,
  type DhGroup,
  type PrimeGroup,
  type ByteRng,
} from './group.ts';
import { defaultKsf, type Ksf } from './ksf.ts';
import { makeOprf, type Oprf } from './oprf.ts';
import { DEFAULT_SUITE, suiteParams, type SuiteId, type SuiteParams } from './suite.ts';
import type { ServerSecrets } from './secrets.ts';

export type { BackendId, ByteRng };

/** The application context bound into every bkv handshake transcript (RFC 9807 §6.1 "context"). */
export const BKV_OPAQUE_CONTEXT = utf8('bkv OPAQUE v1');

export interface OpaqueConfig {
  suite?: SuiteId;
  /**
   * Group arithmetic for ristretto255: 'native' (the bkv_native addon; the default when it loads),
   * 'libsodium' (WebAssembly; the default otherwise) or 'noble' (reference; the only one for P-256).
   * X25519 (vectors only) runs on libsodium for 'libsodium' and on noble otherwise.
   */
  backend?: BackendId;
  /** Key stretching on the device; default Argon2id (RFC 9106 second set). Tests pass identityKsf. */
  ksf?: Ksf;
  /** Transcript context; default BKV_OPAQUE_CONTEXT. The RFC vectors use "OPAQUE-POC". */
  context?: Uint8Array;
}

/** Optional identities (RFC 9807 §4.1.1); each defaults to the party's public key. */
export interface Identities {
  clientIdentity?: Uint8Array;
  serverIdentity?: Uint8Array;
}

export interface RandomOptions {
  /** Byte source; default node:crypto randomBytes. */
  rng?: ByteRng;
  /** The OPRF blind, for test vectors; otherwise drawn from rng. */
  blind?: Uint8Array;
}

/** Device state between the two registration steps. Holds the password: keep it in memory only. */
export interface ClientRegistrationState {
  readonly suite: SuiteId;
  readonly password: Uint8Array;
  readonly blind: Uint8Array;
}

/** Device state between KE1 and KE2. Holds the password: keep it in memory only. */
export interface ClientLoginState {
  readonly suite: SuiteId;
  readonly password: Uint8Array;
  readonly blind: Uint8Array;
  readonly ke1: Uint8Array;
  readonly clientSecret: Uint8Array;
}

/** Vault state between KE2 and KE3 (the secret halves; never stored outside the trust boundary). */
export interface ServerLoginState {
  readonly suite: SuiteId;
  readonly expectedClientMac: Uint8Array;
  readonly sessionKey: Uint8Array;
}

export interface RegistrationRequest {
  blindedMessage: Uint8Array;
}
export interface RegistrationResponse {
  evaluatedMessage: Uint8Array;
  serverPublicKey: Uint8Array;
}
export interface RegistrationRecord {
  clientPublicKey: Uint8Array;
  maskingKey: Uint8Array;
  envelope: Uint8Array;
}
export interface KE1 {
  blindedMessage: Uint8Array;
  clientNonce: Uint8Array;
  clientPublicKeyshare: Uint8Array;
}
export interface KE2 {
  evaluatedMessage: Uint8Array;
  maskingNonce: Uint8Array;
  maskedResponse: Uint8Array;
  serverNonce: Uint8Array;
  serverPublicKeyshare: Uint8Array;
  serverMac: Uint8Array;
}
export interface KE3 {
  clientMac: Uint8Array;
}

/** Byte lengths of every message of a suite (fixed: sizes never depend on the outcome). */
export interface MessageSizes {
  registrationRequest: number;
  registrationResponse: number;
  registrationRecord: number;
  ke1: number;
  ke2: number;
  ke3: number;
}

export interface Opaque {
  readonly suite: SuiteParams;
  readonly backend: BackendId;
  readonly ksf: Ksf;
  readonly context: Uint8Array;
  readonly sizes: MessageSizes;
  readonly oprf: Oprf;
  readonly dh: DhGroup;

  // Registration (§5)
  clientStartRegistration(password: Uint8Array, opts?: RandomOptions): { request: Uint8Array; state: ClientRegistrationState };
  serverRegistrationResponse(secrets: ServerSecrets, request: Uint8Array, credentialIdentifier: Uint8Array): Uint8Array;
  clientFinishRegistration(
    state: ClientRegistrationState,
    response: Uint8Array,
    opts?: Identities & { rng?: ByteRng; expectedServerPublicKey?: Uint8Array },
  ): { record: Uint8Array; exportKey: Uint8Array; serverPublicKey: Uint8Array };

  // Login (§6)
  clientStartLogin(password: Uint8Array, opts?: RandomOptions): { ke1: Uint8Array; state: ClientLoginState };
  /**
   * The vault's KE2. `record` null means "no such user": a fake record derived from the secrets
   * (deterministic per credential identifier) is used, with the same sizes and the same work.
   */
  serverStartLogin(
    secrets: ServerSecrets,
    record: Uint8Array | null,
    ke1: Uint8Array,
    credentialIdentifier: Uint8Array,
    opts?: Identities & { rng?: ByteRng },
  ): { ke2: Uint8Array; state: ServerLoginState };
  /** Throws AUTH_FAILED on a wrong KE3 (wrong password or tampering). */
  serverFinishLogin(state: ServerLoginState, ke3: Uint8Array): { sessionKey: Uint8Array };
  /** Throws AUTH_FAILED on a wrong password, a tampered KE2, or a server key that differs from the pinned one. */
  clientFinishLogin(
    state: ClientLoginState,
    ke2: Uint8Array,
    opts?: Identities & { expectedServerPublicKey?: Uint8Array },
  ): { ke3: Uint8Array; sessionKey: Uint8Array; exportKey: Uint8Array; serverPublicKey: Uint8Array };

  /** The fake record the vault answers an unknown user with (RFC 9807 §6.3.2.2, made deterministic). */
  fakeRecord(secrets: ServerSecrets, credentialIdentifier: Uint8Array): Uint8Array;
  /** DeriveDiffieHellmanKeyPair(seed) for this suite's AKE group (e.g. the fleet AKE key from its 32-byte seed). */
  deriveAkeKeyPair(seed: Uint8Array): { privateKey: Uint8Array; publicKey: Uint8Array };

  // Strict decoders: typed OpaqueError on wrong length, bad element, identity.
  decodeRegistrationRequest(bytes: Uint8Array): RegistrationRequest;
  decodeRegistrationResponse(bytes: Uint8Array): RegistrationResponse;
  decodeRegistrationRecord(bytes: Uint8Array): RegistrationRecord;
  decodeKE1(bytes: Uint8Array): KE1;
  decodeKE2(bytes: Uint8Array): KE2;
  decodeKE3(bytes: Uint8Array): KE3;
}

// Randomness from a pool refilled 4 KiB at a time: one getrandom per ~40 KE2s instead of one each.
const POOL = new Uint8Array(4096);
let poolPos = POOL.length;
const defaultRng: ByteRng = (n) => {
  if (n > POOL.length) return new Uint8Array(randomBytes(n));
  if (poolPos + n > POOL.length) {
    randomFillSync(POOL);
    poolPos = 0;
  }
  const out = POOL.slice(poolPos, poolPos + n);
  POOL.fill(0, poolPos, poolPos + n);
  poolPos += n;
  return out;
};

/**
 * Loads libsodium's WebAssembly and tries the native addon. Needed once per thread before any
 * libsodium-backed instance (the native one loads on demand, synchronously).
 */
export async function ready(): Promise<void> {
  nativeAvailable();
  await sodiumReady();
}

/** Async factory: awaits libsodium when the backend needs it. */
export async function createOpaque(config: OpaqueConfig = {}): Promise<Opaque> {
  const suite = suiteParams(config.suite ?? DEFAULT_SUITE);
  if ((config.backend ?? defaultBackend(suite.id)) === 'libsodium') await sodiumReady();
  return makeOpaque(config);
}

/** The backend an instance of this suite gets when the config names none: native when it loaded. */
export function defaultBackend(suite: SuiteId = DEFAULT_SUITE): BackendId {
  if (suite === 'P256-SHA256') return 'noble';
  return nativeAvailable() ? 'native' : 'libsodium';
}

export interface BackendStatus {
  /** What `createOpaque()` / `makeOpaque()` use for the default suite in this thread. */
  readonly defaultBackend: BackendId;
  /** The native addon: loaded (with libsodium's version) or why not. */
  readonly native: NativeStatus;
}

/** Which group backend is active in this thread, and why native is not when it is not. */
export function backendStatus(): BackendStatus {
  return { defaultBackend: defaultBackend(DEFAULT_SUITE), native: nativeStatus() };
}

function checkLen(what: string, bytes: Uint8Array, want: number): void {
  if (!(bytes instanceof Uint8Array)) throw new OpaqueError('BAD_LENGTH', `${what}: not a byte array`);
  if (bytes.length !== want) throw new OpaqueError('BAD_LENGTH', `${what}: expected ${want} bytes, got ${bytes.length}`);
}

function xor(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

function ctEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

function lp(x: Uint8Array): Uint8Array {
  return concat(i2osp(x.length, 2), x);
}

/** Sync factory; for the libsodium backend (the default when native is unavailable), `await ready()` must have run in this thread. */
export function makeOpaque(config: OpaqueConfig = {}): Opaque {
  const S = suiteParams(config.suite ?? DEFAULT_SUITE);
  const backend = config.backend ?? defaultBackend(S.id);
  const ksf = config.ksf ?? defaultKsf();
  const context = config.context ?? BKV_OPAQUE_CONTEXT;
  let group: PrimeGroup;
  if (S.oprf === 'P256-SHA256') {
    if (backend !== 'noble') throw new OpaqueError('BAD_CONFIG', `backend ${backend} has no P-256; use 'noble'`);
    group = nobleP256;
  } else if (backend === 'native') {
    if (!nativeAvailable()) {
      const st = nativeStatus();
      throw new OpaqueError('BAD_CONFIG', `native backend unavailable: ${st.loaded ? 'unknown' : st.reason}`);
    }
    group = nativeRistretto255;
  } else if (backend === 'libsodium') group = sodiumRistretto255;
  else if (backend === 'noble') group = nobleRistretto255;
  else throw new OpaqueError('BAD_CONFIG', `unknown backend ${JSON.stringify(backend)}`);
  const oprf = makeOprf(S.oprf, group);
  const dh: DhGroup = S.ake === 'X25519' ? x25519DhGroup(backend) : primeDhGroup(group, oprf.deriveKey);
  const H = S.hash;
  const { Nh, Nm, Nx, Npk, Noe, Nn, Nseed, Nenvelope, Nok } = S;

  // Constant labels, built once.
  const L_OPRF_KEY = utf8('OprfKey');
  const L_DERIVE_KP = utf8('OPAQUE-DeriveKeyPair');
  const L_MASKING = utf8('MaskingKey');
  const L_AUTH = utf8('AuthKey');
  const L_EXPORT = utf8('ExportKey');
  const L_PRIVATE = utf8('PrivateKey');
  const L_PAD = utf8('CredentialResponsePad');
  const L_FAKE_MASK = utf8('bkv-FakeMaskingKey');
  const L_FAKE_CLIENT = utf8('bkv-FakeClientKey');
  const DST_FAKE_PK = utf8('bkv-FakeClientPublicKey-' + S.id);
  const PREAMBLE_HEAD = concat(utf8('OPAQUEv1-'), lp(context));
  const customLabel = (label: string, ctxLen: number, len: number): Uint8Array => {
    const full = utf8('OPAQUE-' + label);
    return concat(i2osp(len, 2), i2osp(full.length, 1), full, i2osp(ctxLen, 1));
  };
  // Expand-Label(secret, label, ctx, L) = Expand(secret, CustomLabel, L) with L <= Nh: one HMAC.
  const LBL_HS = customLabel('HandshakeSecret', Nh, Nx);
  const LBL_SK = customLabel('SessionKey', Nh, Nx);
  const LBL_SMAC = concat(customLabel('ServerMAC', 0, Nx), Uint8Array.of(1));
  const LBL_CMAC = concat(customLabel('ClientMAC', 0, Nx), Uint8Array.of(1));
  const ONE = Uint8Array.of(1);
  const ZERO_ENVELOPE = new Uint8Array(Nenvelope);
  const RESPONSE_LEN = Npk + Nenvelope;
  const CRED_RESPONSE_LEN = Noe + Nn + RESPONSE_LEN;
  const sizes: MessageSizes = Object.freeze({
    registrationRequest: Noe,
    registrationResponse: Noe + Npk,
    registrationRecord: Npk + Nh + Nenvelope,
    ke1: Noe + Nn + Npk,
    ke2: CRED_RESPONSE_LEN + Nn + Npk + Nm,
    ke3: Nm,
  });

  function checkSecrets(secrets: ServerSecrets): void {
    if (secrets.suite !== S.id) throw new OpaqueError('BAD_CONFIG', `server secrets are for ${secrets.suite}, not ${S.id}`);
  }

  const FAKE_SEED_LEN = 32;

  /**
   * One Expand of the OPRF seed per request (one token HMAC for SHA-512): the first Nok bytes are
   * the RFC's OPRF key seed, the next 32 seed this user's fake masking key (used only if the user
   * is unknown, but always derived, so known and unknown users cost the same).
   */
  function perUserKeys(secrets: ServerSecrets, credentialIdentifier: Uint8Array): { oprfKey: Uint8Array; fakeMaskingKey: Uint8Array } {
    const okm = secrets.oprfExpand(concat(credentialIdentifier, L_OPRF_KEY), Nok + FAKE_SEED_LEN);
    if (okm.length !== Nok + FAKE_SEED_LEN) throw new OpaqueError('BAD_CONFIG', `oprfExpand returned ${okm.length} bytes, expected ${Nok + FAKE_SEED_LEN}`);
    return {
      oprfKey: oprf.deriveKey(okm.subarray(0, Nok), L_DERIVE_KP),
      fakeMaskingKey: hkdfExpand(H, okm.subarray(Nok), L_FAKE_MASK, Nh),
    };
  }

  function oprfKeyFor(secrets: ServerSecrets, credentialIdentifier: Uint8Array): Uint8Array {
    const seed = secrets.oprfExpand(concat(credentialIdentifier, L_OPRF_KEY));
    if (seed.length !== Nok) throw new OpaqueError('BAD_CONFIG', `oprfExpand returned ${seed.length} bytes, expected ${Nok}`);
    return oprf.deriveKey(seed, L_DERIVE_KP);
  }

  function newBlind(opts: RandomOptions | undefined): Uint8Array {
    if (opts?.blind) {
      group.checkScalar(opts.blind);
      return opts.blind;
    }
    return group.randomScalar(opts?.rng ?? defaultRng);
  }

  function cleartextCredentials(serverPk: Uint8Array, clientPk: Uint8Array, ids: Identities | undefined): Uint8Array {
    return concat(serverPk, lp(ids?.serverIdentity ?? serverPk), lp(ids?.clientIdentity ?? clientPk));
  }

  function randomizedPassword(password: Uint8Array, blind: Uint8Array, evaluated: Uint8Array): Uint8Array {
    const oprfOutput = oprf.finalize(password, blind, evaluated);
    const stretched = ksf.stretch(oprfOutput, Nh);
    return hkdfExtract(H, EMPTY, concat(oprfOutput, stretched));
  }

  /** Store/Recover's key schedule (§4.1.2 / §4.1.3). */
  function envelopeKeys(rwd: Uint8Array, nonce: Uint8Array) {
    const authKey = hkdfExpand(H, rwd, concat(nonce, L_AUTH), Nh);
    const exportKey = hkdfExpand(H, rwd, concat(nonce, L_EXPORT), Nh);
    const seed = hkdfExpand(H, rwd, concat(nonce, L_PRIVATE), Nseed);
    const kp = dh.deriveKeyPair(seed);
    return { authKey, exportKey, clientPrivateKey: kp.privateKey, clientPublicKey: kp.publicKey };
  }

  /** 3DH key schedule (§6.4.2): from ikm and preamble to (server MAC, expected client MAC, session key). */
  function deriveKeys(ikm: Uint8Array, preamble: Uint8Array) {
    const prk = hkdfExtract(H, EMPTY, ikm);
    // Hash(preamble) and Hash(preamble || server_mac) share one pass over the preamble.
    const h = createHash(H).update(preamble);
    const hCont = h.copy();
    const th = h.digest();
    const handshake = hmac(H, prk, LBL_HS, th, ONE).subarray(0, Nx);
    const sessionKey = hmac(H, prk, LBL_SK, th, ONE).subarray(0, Nx);
    const km2 = hmac(H, handshake, LBL_SMAC).subarray(0, Nx);
    const km3 = hmac(H, handshake, LBL_CMAC).subarray(0, Nx);
    const serverMac = hmac(H, km2, th);
    const clientMac = hmac(H, km3, hCont.update(serverMac).digest());
    return { serverMac, clientMac, sessionKey };
  }

  function preambleOf(clientId: Uint8Array, ke1: Uint8Array, serverId: Uint8Array, credResponse: Uint8Array, serverNonce: Uint8Array, serverKeyshare: Uint8Array): Uint8Array {
    return concat(PREAMBLE_HEAD, lp(clientId), ke1, lp(serverId), credResponse, serverNonce, serverKeyshare);
  }

  // One fake client public key per secrets object (i.e. per fleet), like the fake key pair of an
  // opaque-ke ServerSetup; the masking key is per credential identifier.
  const fakeClientPks = new WeakMap<ServerSecrets, Uint8Array>();
  function fakeClientPk(secrets: ServerSecrets): Uint8Array {
    let pk = fakeClientPks.get(secrets);
    if (!pk) {
      const seed = hkdfExpand(H, secrets.oprfExpand(L_FAKE_CLIENT), L_FAKE_CLIENT, Nseed);
      // For prime-order groups a hashed element is a valid client key nobody knows the private key of.
      pk = S.ake === 'X25519' ? dh.deriveKeyPair(seed).publicKey : group.hashToGroup(seed, DST_FAKE_PK);
      fakeClientPks.set(secrets, pk);
    }
    return pk;
  }

  function fakeRecord(secrets: ServerSecrets, credentialIdentifier: Uint8Array): Uint8Array {
    checkSecrets(secrets);
    return concat(fakeClientPk(secrets), perUserKeys(secrets, credentialIdentifier).fakeMaskingKey, ZERO_ENVELOPE);
  }

  const api: Opaque = {
    suite: S,
    backend,
    ksf,
    context,
    sizes,
    oprf,
    dh,

    clientStartRegistration(password, opts) {
      const blind = newBlind(opts);
      const request = oprf.blind(password, blind);
      return { request, state: { suite: S.id, password: password.slice(), blind } };
    },

    serverRegistrationResponse(secrets, request, credentialIdentifier) {
      checkSecrets(secrets);
      checkLen('registration request', request, Noe);
      const evaluated = oprf.evaluate(oprfKeyFor(secrets, credentialIdentifier), request);
      return concat(evaluated, secrets.akeKeyPair.publicKey);
    },

    clientFinishRegistration(state, response, opts) {
      if (state.suite !== S.id) throw new OpaqueError('BAD_CONFIG', 'registration state from another suite');
      const r = api.decodeRegistrationResponse(response);
      if (opts?.expectedServerPublicKey && !ctEqual(opts.expectedServerPublicKey, r.serverPublicKey)) {
        throw new OpaqueError('AUTH_FAILED', 'server public key differs from the pinned one');
      }
      const rwd = randomizedPassword(state.password, state.blind, r.evaluatedMessage);
      const nonce = (opts?.rng ?? defaultRng)(Nn);
      checkLen('envelope nonce', nonce, Nn);
      const maskingKey = hkdfExpand(H, rwd, L_MASKING, Nh);
      const k = envelopeKeys(rwd, nonce);
      const authTag = hmac(H, k.authKey, nonce, cleartextCredentials(r.serverPublicKey, k.clientPublicKey, opts));
      const record = concat(k.clientPublicKey, maskingKey, nonce, authTag);
      return { record, exportKey: k.exportKey, serverPublicKey: r.serverPublicKey };
    },

    clientStartLogin(password, opts) {
      const blind = newBlind(opts);
      const blinded = oprf.blind(password, blind);
      const rng = opts?.rng ?? defaultRng;
      const clientNonce = rng(Nn);
      const keyshareSeed = rng(Nseed);
      checkLen('client nonce', clientNonce, Nn);
      const kp = dh.deriveKeyPair(keyshareSeed);
      const ke1 = concat(blinded, clientNonce, kp.publicKey);
      return { ke1, state: { suite: S.id, password: password.slice(), blind, ke1, clientSecret: kp.privateKey } };
    },

    serverStartLogin(secrets, record, ke1, credentialIdentifier, opts) {
      checkSecrets(secrets);
      checkLen('KE1', ke1, sizes.ke1);
      // Same work for known and unknown users: both keys come from one Expand, then the real or
      // the fake record is used.
      const keys = perUserKeys(secrets, credentialIdentifier);
      let clientPk: Uint8Array, maskingKey: Uint8Array, envelope: Uint8Array;
      if (record !== null) {
        checkLen('registration record', record, sizes.registrationRecord);
        clientPk = record.subarray(0, Npk);
        maskingKey = record.subarray(Npk, Npk + Nh);
        envelope = record.subarray(Npk + Nh);
      } else {
        clientPk = fakeClientPk(secrets);
        maskingKey = keys.fakeMaskingKey;
        envelope = ZERO_ENVELOPE;
      }
      const blinded = ke1.subarray(0, Noe);
      const clientKeyshare = ke1.subarray(Noe + Nn);

      // The evaluation also validates the blinded element (typed BAD_ELEMENT on failure).
      const evaluated = oprf.evaluate(keys.oprfKey, blinded);
      const rnd = (opts?.rng ?? defaultRng)(Nn + Nn + Nseed);
      checkLen('server randomness', rnd, Nn + Nn + Nseed);
      const maskingNonce = rnd.subarray(0, Nn);
      const serverNonce = rnd.subarray(Nn, 2 * Nn);
      const keyshareSeed = rnd.subarray(2 * Nn);

      const pad = hkdfExpand(H, maskingKey, concat(maskingNonce, L_PAD), RESPONSE_LEN);
      const credResponse = new Uint8Array(CRED_RESPONSE_LEN);
      credResponse.set(evaluated, 0);
      credResponse.set(maskingNonce, Noe);
      const serverPk = secrets.akeKeyPair.publicKey;
      const base = Noe + Nn;
      for (let i = 0; i < Npk; i++) credResponse[base + i] = pad[i]! ^ serverPk[i]!;
      for (let i = 0; i < Nenvelope; i++) credResponse[base + Npk + i] = pad[Npk + i]! ^ envelope[i]!;

      const eph = dh.deriveKeyPair(keyshareSeed);
      const preamble = preambleOf(opts?.clientIdentity ?? clientPk, ke1, opts?.serverIdentity ?? serverPk, credResponse, serverNonce, eph.publicKey);
      const dh1 = dh.dh(eph.privateKey, clientKeyshare);
      const dh2 = dh.dh(secrets.akeKeyPair.privateKey, clientKeyshare);
      const dh3 = dh.dh(eph.privateKey, clientPk);
      const k = deriveKeys(concat(dh1, dh2, dh3), preamble);

      const ke2 = new Uint8Array(sizes.ke2);
      ke2.set(credResponse, 0);
      ke2.set(serverNonce, CRED_RESPONSE_LEN);
      ke2.set(eph.publicKey, CRED_RESPONSE_LEN + Nn);
      ke2.set(k.serverMac, CRED_RESPONSE_LEN + Nn + Npk);
      return { ke2, state: { suite: S.id, expectedClientMac: k.clientMac, sessionKey: k.sessionKey } };
    },

    serverFinishLogin(state, ke3) {
      if (state.suite !== S.id) throw new OpaqueError('BAD_CONFIG', 'login state from another suite');
      checkLen('KE3', ke3, Nm);
      if (!ctEqual(ke3, state.expectedClientMac)) throw new OpaqueError('AUTH_FAILED', 'client authentication failed');
      return { sessionKey: state.sessionKey };
    },

    clientFinishLogin(state, ke2, opts) {
      if (state.suite !== S.id) throw new OpaqueError('BAD_CONFIG', 'login state from another suite');
      const m = api.decodeKE2(ke2);
      const rwd = randomizedPassword(state.password, state.blind, m.evaluatedMessage);
      const maskingKey = hkdfExpand(H, rwd, L_MASKING, Nh);
      const pad = hkdfExpand(H, maskingKey, concat(m.maskingNonce, L_PAD), RESPONSE_LEN);
      const unmasked = xor(pad, m.maskedResponse);
      const serverPk = unmasked.subarray(0, Npk);
      const envelopeNonce = unmasked.subarray(Npk, Npk + Nn);
      const authTag = unmasked.subarray(Npk + Nn);
      // With a wrong password the unmasked key is noise: that is a failed recovery, not a bad message.
      try {
        dh.checkPublicKey(serverPk);
      } catch {
        throw new OpaqueError('AUTH_FAILED', 'envelope recovery failed');
      }
      const k = envelopeKeys(rwd, envelopeNonce);
      const expectedTag = hmac(H, k.authKey, envelopeNonce, cleartextCredentials(serverPk, k.clientPublicKey, opts));
      if (!ctEqual(expectedTag, authTag)) throw new OpaqueError('AUTH_FAILED', 'envelope recovery failed');
      if (opts?.expectedServerPublicKey && !ctEqual(opts.expectedServerPublicKey, serverPk)) {
        throw new OpaqueError('AUTH_FAILED', 'server public key differs from the pinned one');
      }
      const credResponse = ke2.subarray(0, CRED_RESPONSE_LEN);
      const preamble = preambleOf(opts?.clientIdentity ?? k.clientPublicKey, state.ke1, opts?.serverIdentity ?? serverPk, credResponse, m.serverNonce, m.serverPublicKeyshare);
      const dh1 = dh.dh(state.clientSecret, m.serverPublicKeyshare);
      const dh2 = dh.dh(state.clientSecret, serverPk);
      const dh3 = dh.dh(k.clientPrivateKey, m.serverPublicKeyshare);
      const keys = deriveKeys(concat(dh1, dh2, dh3), preamble);
      if (!ctEqual(keys.serverMac, m.serverMac)) throw new OpaqueError('AUTH_FAILED', 'server authentication failed');
      return { ke3: keys.clientMac, sessionKey: keys.sessionKey, exportKey: k.exportKey, serverPublicKey: serverPk.slice() };
    },

    fakeRecord,

    deriveAkeKeyPair(seed) {
      checkLen('AKE seed', seed, Nseed);
      return dh.deriveKeyPair(seed);
    },

    decodeRegistrationRequest(bytes) {
      checkLen('registration request', bytes, sizes.registrationRequest);
      group.checkElement(bytes);
      return { blindedMessage: bytes.slice() };
    },
    decodeRegistrationResponse(bytes) {
      checkLen('registration response', bytes, sizes.registrationResponse);
      const evaluatedMessage = bytes.slice(0, Noe);
      const serverPublicKey = bytes.slice(Noe);
      group.checkElement(evaluatedMessage);
      dh.checkPublicKey(serverPublicKey);
      return { evaluatedMessage, serverPublicKey };
    },
    decodeRegistrationRecord(bytes) {
      checkLen('registration record', bytes, sizes.registrationRecord);
      const clientPublicKey = bytes.slice(0, Npk);
      dh.checkPublicKey(clientPublicKey);
      return { clientPublicKey, maskingKey: bytes.slice(Npk, Npk + Nh), envelope: bytes.slice(Npk + Nh) };
    },
    decodeKE1(bytes) {
      checkLen('KE1', bytes, sizes.ke1);
      const blindedMessage = bytes.slice(0, Noe);
      const clientNonce = bytes.slice(Noe, Noe + Nn);
      const clientPublicKeyshare = bytes.slice(Noe + Nn);
      group.checkElement(blindedMessage);
      dh.checkPublicKey(clientPublicKeyshare);
      return { blindedMessage, clientNonce, clientPublicKeyshare };
    },
    decodeKE2(bytes) {
      checkLen('KE2', bytes, sizes.ke2);
      let o = 0;
      const take = (n: number): Uint8Array => bytes.slice(o, (o += n));
      const m: KE2 = {
        evaluatedMessage: take(Noe),
        maskingNonce: take(Nn),
        maskedResponse: take(RESPONSE_LEN),
        serverNonce: take(Nn),
        serverPublicKeyshare: take(Npk),
        serverMac: take(Nm),
      };
      group.checkElement(m.evaluatedMessage);
      dh.checkPublicKey(m.serverPublicKeyshare);
      return m;
    },
    decodeKE3(bytes) {
      checkLen('KE3', bytes, sizes.ke3);
      return { clientMac: bytes.slice() };
    },
  };
  return Object.freeze(api);
}
