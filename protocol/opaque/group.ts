// Prime-order groups behind one interface, working on encoded bytes (what goes on the wire and what
// libsodium's API takes). Three backends: @noble/curves (reference, both groups), libsodium
// (ristretto255 only, in WebAssembly, ~10x faster) and native (ristretto255 only, the system
// libsodium through the bkv_native addon, ~3x faster again: the vault's hot path when it loads).
// Every decode check lives here: canonical encoding, on the group, not the identity, right length.
import { ristretto255, ristretto255_hasher, x25519 } from '@noble/curves/ed25519.js';
import { p256, p256_hasher } from '@noble/curves/nist.js';
import { bytesToNumberBE, bytesToNumberLE, numberToBytesBE, numberToBytesLE } from '@noble/curves/utils.js';
import sodium from 'libsodium-wrappers-sumo';
import { loadNative, nativeStatus, type NativeRistretto } from '../../native/index.ts';
import { OpaqueError } from './errors.ts';
import { expandMessageXmd } from './hash.ts';
import type { HashId } from './suite.ts';

export type BackendId = 'noble' | 'libsodium' | 'native';
export type ByteRng = (length: number) => Uint8Array;

/** A prime-order group of RFC 9497 with its encodings. Elements and scalars are always encoded bytes. */
export interface PrimeGroup {
  readonly name: 'ristretto255' | 'P256';
  readonly backend: BackendId;
  /** Element and scalar lengths (RFC 9497 Ne, Ns). */
  readonly Ne: number;
  readonly Ns: number;
  readonly hash: HashId;
  /** HashToGroup of RFC 9497 (hash_to_curve with the suite's XMD hash); never returns identity. */
  hashToGroup(msg: Uint8Array, dst: Uint8Array): Uint8Array;
  /** HashToScalar of RFC 9497; may return the zero scalar (callers that need non-zero check). */
  hashToScalar(msg: Uint8Array, dst: Uint8Array): Uint8Array;
  scalarIsZero(s: Uint8Array): boolean;
  scalarInvert(s: Uint8Array): Uint8Array;
  /** A uniformly random non-zero scalar from rng bytes (wide reduction, bias < 2^-128). */
  randomScalar(rng: ByteRng): Uint8Array;
  /** s * E. Throws OpaqueError BAD_ELEMENT if E is not a valid non-identity element or the product is identity. */
  scalarMult(s: Uint8Array, e: Uint8Array): Uint8Array;
  scalarMultBase(s: Uint8Array): Uint8Array;
  /** Throws BAD_LENGTH / BAD_ELEMENT unless e is a canonical encoding of a non-identity element. */
  checkElement(e: Uint8Array): void;
  /** Throws BAD_LENGTH / BAD_SCALAR unless s is a canonical, non-zero scalar. */
  checkScalar(s: Uint8Array): void;
}

/** Diffie-Hellman for the 3DH AKE. Keys are encoded bytes. */
export interface DhGroup {
  readonly name: 'ristretto255' | 'P256' | 'X25519';
  readonly Npk: number;
  readonly Nsk: number;
  /** DeriveDiffieHellmanKeyPair(seed) of RFC 9807. */
  deriveKeyPair(seed: Uint8Array): { privateKey: Uint8Array; publicKey: Uint8Array };
  publicKey(privateKey: Uint8Array): Uint8Array;
  /** DH(sk, pk) serialized; rejects invalid or low-order pk with BAD_ELEMENT. */
  dh(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array;
  checkPublicKey(pk: Uint8Array): void;
  checkPrivateKey(sk: Uint8Array): void;
}

function badLength(what: string, want: number, got: number): OpaqueError {
  return new OpaqueError('BAD_LENGTH', `${what}: expected ${want} bytes, got ${got}`);
}
function badElement(group: string, cause?: unknown): OpaqueError {
  return new OpaqueError('BAD_ELEMENT', `not a valid non-identity ${group} element`, cause === undefined ? undefined : { cause });
}

// ---------------------------------------------------------------------------------------------------
// ristretto255, noble

const R_ORDER = ristretto255.Point.Fn.ORDER;
type RPoint = InstanceType<typeof ristretto255.Point>;

function nobleRistrettoDecode(e: Uint8Array): RPoint {
  if (e.length !== 32) throw badLength('ristretto255 element', 32, e.length);
  let p: RPoint;
  try {
    p = ristretto255.Point.fromBytes(e);
  } catch (err) {
    throw badElement('ristretto255', err);
  }
  if (p.is0()) throw badElement('ristretto255');
  return p;
}

function ristrettoScalarValue(s: Uint8Array): bigint {
  if (s.length !== 32) throw badLength('ristretto255 scalar', 32, s.length);
  const v = bytesToNumberLE(s);
  if (v === 0n || v >= R_ORDER) throw new OpaqueError('BAD_SCALAR', 'not a canonical non-zero ristretto255 scalar');
  return v;
}

const ristrettoCommon = {
  name: 'ristretto255' as const,
  Ne: 32,
  Ns: 32,
  hash: 'sha512' as const,
  checkScalar(s: Uint8Array): void {
    ristrettoScalarValue(s);
  },
  scalarIsZero(s: Uint8Array): boolean {
    let acc = 0;
    for (const b of s) acc |= b;
    return acc === 0;
  },
};

export const nobleRistretto255: PrimeGroup = {
  ...ristrettoCommon,
  backend: 'noble',
  hashToGroup(msg, dst) {
    const p = ristretto255_hasher.hashToCurve(msg, { DST: dst });
    if (p.is0()) throw new OpaqueError('DERIVE_FAILED', 'hash-to-group gave the identity');
    return p.toBytes();
  },
  hashToScalar(msg, dst) {
    return numberToBytesLE(bytesToNumberLE(expandMessageXmd('sha512', msg, dst, 64)) % R_ORDER, 32);
  },
  scalarInvert(s) {
    return numberToBytesLE(ristretto255.Point.Fn.inv(ristrettoScalarValue(s)), 32);
  },
  randomScalar(rng) {
    for (;;) {
      const v = bytesToNumberLE(rng(64)) % R_ORDER;
      if (v !== 0n) return numberToBytesLE(v, 32);
    }
  },
  scalarMult(s, e) {
    const r = nobleRistrettoDecode(e).multiply(ristrettoScalarValue(s));
    if (r.is0()) throw badElement('ristretto255');
    return r.toBytes();
  },
  scalarMultBase(s) {
    return ristretto255.Point.BASE.multiply(ristrettoScalarValue(s)).toBytes();
  },
  checkElement(e) {
    nobleRistrettoDecode(e);
  },
};

// ---------------------------------------------------------------------------------------------------
// ristretto255, libsodium (call sodiumReady() first)

let sodiumIsReady = false;

/** The raw Emscripten exports we call directly (the wrapper's per-call malloc/copy/free is skipped). */
interface SodiumRaw {
  HEAPU8: Uint8Array;
  _malloc(n: number): number;
  _crypto_scalarmult_ristretto255(q: number, n: number, p: number): number;
  _crypto_scalarmult_ristretto255_base(q: number, n: number): number;
  _crypto_core_ristretto255_scalar_reduce(r: number, s: number): void;
  _crypto_core_ristretto255_from_hash(p: number, r: number): number;
}
let raw: SodiumRaw | null = null;
// One scratch area in wasm memory: [0,64) input scalar / hash, [64,96) input point, [96,128) output.
let scratch = 0;

/** Resolves once libsodium's WebAssembly is loaded; every libsodium-backed call needs it. */
export async function sodiumReady(): Promise<void> {
  await sodium.ready;
  if (!raw) {
    const r = (sodium as unknown as { libsodium?: SodiumRaw }).libsodium;
    if (r && typeof r._crypto_scalarmult_ristretto255 === 'function' && typeof r._malloc === 'function') {
      raw = r;
      scratch = r._malloc(128);
    }
  }
  sodiumIsReady = true;
}
function needSodium(): void {
  if (!sodiumIsReady) throw new OpaqueError('BAD_CONFIG', 'libsodium backend used before ready(): await createOpaque(...) or ready()');
}

/** s * P through the raw export; null if libsodium refuses (invalid P or identity result). */
function rawScalarMult(r: SodiumRaw, s: Uint8Array, p: Uint8Array | null): Uint8Array | null {
  const heap = r.HEAPU8; // re-read each call: memory growth replaces the view
  heap.set(s, scratch);
  let rc: number;
  if (p) {
    heap.set(p, scratch + 64);
    rc = r._crypto_scalarmult_ristretto255(scratch + 96, scratch, scratch + 64);
  } else {
    rc = r._crypto_scalarmult_ristretto255_base(scratch + 96, scratch);
  }
  const h = r.HEAPU8;
  const out = rc === 0 ? h.slice(scratch + 96, scratch + 128) : null;
  h.fill(0, scratch, scratch + 32); // no scalar left behind in wasm memory
  h.fill(0, scratch + 96, scratch + 128);
  return out;
}

export const sodiumRistretto255: PrimeGroup = {
  ...ristrettoCommon,
  backend: 'libsodium',
  hashToGroup(msg, dst) {
    needSodium();
    const p = sodium.crypto_core_ristretto255_from_hash(expandMessageXmd('sha512', msg, dst, 64));
    if (ristrettoCommon.scalarIsZero(p)) throw new OpaqueError('DERIVE_FAILED', 'hash-to-group gave the identity');
    return p;
  },
  hashToScalar(msg, dst) {
    needSodium();
    const wide = expandMessageXmd('sha512', msg, dst, 64);
    if (raw) {
      raw.HEAPU8.set(wide, scratch);
      raw._crypto_core_ristretto255_scalar_reduce(scratch + 96, scratch);
      const h = raw.HEAPU8;
      const out = h.slice(scratch + 96, scratch + 128);
      h.fill(0, scratch, scratch + 64);
      h.fill(0, scratch + 96, scratch + 128);
      return out;
    }
    return sodium.crypto_core_ristretto255_scalar_reduce(wide);
  },
  scalarInvert(s) {
    needSodium();
    ristrettoScalarValue(s);
    return sodium.crypto_core_ristretto255_scalar_invert(s);
  },
  randomScalar(rng) {
    needSodium();
    for (;;) {
      const s = sodium.crypto_core_ristretto255_scalar_reduce(rng(64));
      if (!ristrettoCommon.scalarIsZero(s)) return s;
    }
  },
  scalarMult(s, e) {
    needSodium();
    if (e.length !== 32) throw badLength('ristretto255 element', 32, e.length);
    if (s.length !== 32) throw badLength('ristretto255 scalar', 32, s.length);
    // libsodium decodes strictly (canonical, on the group) and fails on an identity result, which
    // for a non-zero scalar in a prime-order group means an identity input: one call, all checks.
    if (raw) {
      const out = rawScalarMult(raw, s, e);
      if (!out) throw badElement('ristretto255');
      return out;
    }
    try {
      return sodium.crypto_scalarmult_ristretto255(s, e);
    } catch (err) {
      throw badElement('ristretto255', err);
    }
  },
  scalarMultBase(s) {
    needSodium();
    if (s.length !== 32) throw badLength('ristretto255 scalar', 32, s.length);
    if (raw) {
      const out = rawScalarMult(raw, s, null);
      if (!out) throw new OpaqueError('BAD_SCALAR', 'not a non-zero ristretto255 scalar');
      return out;
    }
    try {
      return sodium.crypto_scalarmult_ristretto255_base(s);
    } catch (err) {
      // libsodium refuses only the zero scalar here
      throw new OpaqueError('BAD_SCALAR', 'not a non-zero ristretto255 scalar', { cause: err });
    }
  },
  checkElement(e) {
    needSodium();
    if (e.length !== 32) throw badLength('ristretto255 element', 32, e.length);
    if (ristrettoCommon.scalarIsZero(e) || !sodium.crypto_core_ristretto255_is_valid_point(e)) throw badElement('ristretto255');
  },
};

// ---------------------------------------------------------------------------------------------------
// ristretto255, native (the bkv_native addon over the system libsodium; see native/README.md)
//
// Same checks and errors as noble: BAD_LENGTH, then the element, then the scalar (the addon looks
// at the element only when the scalar is bad, so the common path decodes once). Inputs go into
// the addon's per-thread scratch, the result is copied out and the scratch output wiped (the
// addon wipes the inputs).

let nat: NativeRistretto | null = null;
let natMem = new Uint8Array(0);
const N_A = 0;
const N_B = 64;
const N_OUT = 96;

function needNative(): NativeRistretto {
  if (!nat) {
    const n = loadNative();
    if (!n) {
      const st = nativeStatus();
      throw new OpaqueError('BAD_CONFIG', `native backend unavailable: ${st.loaded ? 'unknown' : st.reason}`);
    }
    nat = n;
    natMem = new Uint8Array(n.scratch);
  }
  return nat;
}

/** True when the addon loads in this thread (tries once, then remembers). */
export function nativeAvailable(): boolean {
  return loadNative() !== null;
}

/** The 32-byte output of a native call, or the typed error its status stands for. */
function nativeOut(rc: number, onBadScalar = 'not a canonical non-zero ristretto255 scalar'): Uint8Array {
  if (rc === 0) {
    const out = natMem.slice(N_OUT, N_OUT + 32);
    natMem.fill(0, N_OUT, N_OUT + 32);
    return out;
  }
  if (rc === -2) throw new OpaqueError('BAD_SCALAR', onBadScalar);
  throw badElement('ristretto255');
}

function nativeCheckElement(n: NativeRistretto, e: Uint8Array): void {
  if (e.length !== 32) throw badLength('ristretto255 element', 32, e.length);
  natMem.set(e, N_B);
  if (n.isValidPoint() !== 1) throw badElement('ristretto255');
}

function nativeScalarLength(s: Uint8Array): void {
  if (s.length !== 32) throw badLength('ristretto255 scalar', 32, s.length);
}

function nativeReduce(n: NativeRistretto, wide: Uint8Array): Uint8Array {
  if (wide.length !== 64) throw badLength('wide ristretto255 scalar', 64, wide.length);
  natMem.set(wide, N_A);
  return nativeOut(n.scalarReduce());
}

export const nativeRistretto255: PrimeGroup = {
  ...ristrettoCommon,
  backend: 'native',
  hashToGroup(msg, dst) {
    const n = nat ?? needNative();
    natMem.set(expandMessageXmd('sha512', msg, dst, 64), N_A);
    if (n.fromHash() !== 0) throw new OpaqueError('DERIVE_FAILED', 'hash-to-group gave the identity');
    return nativeOut(0);
  },
  hashToScalar(msg, dst) {
    return nativeReduce(nat ?? needNative(), expandMessageXmd('sha512', msg, dst, 64));
  },
  scalarInvert(s) {
    const n = nat ?? needNative();
    nativeScalarLength(s);
    natMem.set(s, N_A);
    return nativeOut(n.scalarInvert());
  },
  randomScalar(rng) {
    const n = nat ?? needNative();
    for (;;) {
      const s = nativeReduce(n, rng(64));
      if (!ristrettoCommon.scalarIsZero(s)) return s;
    }
  },
  scalarMult(s, e) {
    const n = nat ?? needNative();
    if (e.length !== 32) throw badLength('ristretto255 element', 32, e.length);
    if (s.length !== 32) {
      nativeCheckElement(n, e);
      throw badLength('ristretto255 scalar', 32, s.length);
    }
    natMem.set(s, N_A);
    natMem.set(e, N_B);
    return nativeOut(n.scalarmult());
  },
  scalarMultBase(s) {
    const n = nat ?? needNative();
    nativeScalarLength(s);
    natMem.set(s, N_A);
    return nativeOut(n.scalarmultBase());
  },
  checkElement(e) {
    nativeCheckElement(nat ?? needNative(), e);
  },
};

/**
 * Scalar arithmetic mod L on the addon (canonical 32-byte scalars in and out). Not part of
 * PrimeGroup: OPAQUE does not need it; exported for tests and tools that compare backends.
 */
export const nativeScalars = {
  mul: (a: Uint8Array, b: Uint8Array): Uint8Array => nativeScalarOp2(a, b, (n) => n.scalarMul()),
  add: (a: Uint8Array, b: Uint8Array): Uint8Array => nativeScalarOp2(a, b, (n) => n.scalarAdd()),
  sub: (a: Uint8Array, b: Uint8Array): Uint8Array => nativeScalarOp2(a, b, (n) => n.scalarSub()),
  negate(a: Uint8Array): Uint8Array {
    const n = nat ?? needNative();
    ristrettoCanonical(a);
    natMem.set(a, N_A);
    return nativeOut(n.scalarNegate());
  },
  reduce: (wide: Uint8Array): Uint8Array => nativeReduce(nat ?? needNative(), wide),
};

// libsodium's scalar ops expect canonical inputs (zero allowed); refuse anything else up front.
function ristrettoCanonical(s: Uint8Array): void {
  if (s.length !== 32) throw badLength('ristretto255 scalar', 32, s.length);
  if (bytesToNumberLE(s) >= R_ORDER) throw new OpaqueError('BAD_SCALAR', 'not a canonical ristretto255 scalar');
}

function nativeScalarOp2(a: Uint8Array, b: Uint8Array, op: (n: NativeRistretto) => number): Uint8Array {
  const n = nat ?? needNative();
  ristrettoCanonical(a);
  ristrettoCanonical(b);
  natMem.set(a, N_A);
  natMem.set(b, N_B);
  return nativeOut(op(n));
}

// ---------------------------------------------------------------------------------------------------
// P-256, noble (compressed SEC1 elements, big-endian scalars)

const P_ORDER = p256.Point.Fn.ORDER;
type PPoint = InstanceType<typeof p256.Point>;

function p256Decode(e: Uint8Array): PPoint {
  if (e.length !== 33) throw badLength('P-256 element', 33, e.length);
  if (e[0] !== 2 && e[0] !== 3) throw badElement('P-256');
  let p: PPoint;
  try {
    p = p256.Point.fromBytes(e);
    p.assertValidity();
  } catch (err) {
    throw badElement('P-256', err);
  }
  if (p.is0()) throw badElement('P-256');
  return p;
}

function p256ScalarValue(s: Uint8Array): bigint {
  if (s.length !== 32) throw badLength('P-256 scalar', 32, s.length);
  const v = bytesToNumberBE(s);
  if (v === 0n || v >= P_ORDER) throw new OpaqueError('BAD_SCALAR', 'not a canonical non-zero P-256 scalar');
  return v;
}

export const nobleP256: PrimeGroup = {
  name: 'P256',
  backend: 'noble',
  Ne: 33,
  Ns: 32,
  hash: 'sha256',
  hashToGroup(msg, dst) {
    const p = p256_hasher.hashToCurve(msg, { DST: dst });
    if (p.is0()) throw new OpaqueError('DERIVE_FAILED', 'hash-to-group gave the identity');
    return p.toBytes(true);
  },
  hashToScalar(msg, dst) {
    // hash_to_field with L = 48 (RFC 9497 §4.3 P256-SHA256)
    return numberToBytesBE(bytesToNumberBE(expandMessageXmd('sha256', msg, dst, 48)) % P_ORDER, 32);
  },
  scalarIsZero(s) {
    return bytesToNumberBE(s) === 0n;
  },
  scalarInvert(s) {
    return numberToBytesBE(p256.Point.Fn.inv(p256ScalarValue(s)), 32);
  },
  randomScalar(rng) {
    for (;;) {
      const v = bytesToNumberBE(rng(48)) % P_ORDER;
      if (v !== 0n) return numberToBytesBE(v, 32);
    }
  },
  scalarMult(s, e) {
    const r = p256Decode(e).multiply(p256ScalarValue(s));
    if (r.is0()) throw badElement('P-256');
    return r.toBytes(true);
  },
  scalarMultBase(s) {
    return p256.Point.BASE.multiply(p256ScalarValue(s)).toBytes(true);
  },
  checkElement(e) {
    p256Decode(e);
  },
  checkScalar(s) {
    p256ScalarValue(s);
  },
};

// ---------------------------------------------------------------------------------------------------
// DH groups for 3DH

const DERIVE_DH_INFO = new TextEncoder().encode('OPAQUE-DeriveDiffieHellmanKeyPair');

/** 3DH over an OPRF group: DeriveDiffieHellmanKeyPair = DeriveKeyPair(seed, "OPAQUE-DeriveDiffieHellmanKeyPair"). */
export function primeDhGroup(g: PrimeGroup, deriveKeyPair: (seed: Uint8Array, info: Uint8Array) => Uint8Array): DhGroup {
  return {
    name: g.name,
    Npk: g.Ne,
    Nsk: g.Ns,
    deriveKeyPair(seed) {
      const privateKey = deriveKeyPair(seed, DERIVE_DH_INFO);
      return { privateKey, publicKey: g.scalarMultBase(privateKey) };
    },
    publicKey: (sk) => g.scalarMultBase(sk),
    dh: (sk, pk) => g.scalarMult(sk, pk),
    checkPublicKey: (pk) => g.checkElement(pk),
    checkPrivateKey: (sk) => g.checkScalar(sk),
  };
}

// X25519 (RFC 7748). The u-coordinates of points of order 1, 2, 4, 8 (and their non-canonical
// twins) are rejected on decode; a DH result of all zeros is rejected too.
const X25519_BLOCKED = [
  '0000000000000000000000000000000000000000000000000000000000000000',
  '0100000000000000000000000000000000000000000000000000000000000000',
  'e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800',
  '5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157',
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
];
const X25519_P = (1n << 255n) - 19n;

function x25519CheckPublic(pk: Uint8Array): void {
  if (pk.length !== 32) throw badLength('X25519 public key', 32, pk.length);
  // Only canonical encodings: top bit clear and u < p.
  if ((pk[31]! & 0x80) !== 0 || bytesToNumberLE(pk) >= X25519_P) throw badElement('X25519');
  const hex = Buffer.from(pk).toString('hex');
  if (X25519_BLOCKED.includes(hex)) throw badElement('X25519');
}

export function x25519DhGroup(backend: BackendId): DhGroup {
  const mult = (sk: Uint8Array, pk: Uint8Array): Uint8Array => {
    if (backend === 'native') {
      const n = nat ?? needNative();
      natMem.set(sk, N_A);
      natMem.set(pk, N_B);
      if (n.x25519() !== 0) throw badElement('X25519');
      return nativeOut(0);
    }
    if (backend === 'libsodium') {
      needSodium();
      return sodium.crypto_scalarmult(sk, pk);
    }
    return x25519.scalarMult(sk, pk);
  };
  const base = (sk: Uint8Array): Uint8Array => {
    if (backend === 'native') {
      const n = nat ?? needNative();
      natMem.set(sk, N_A);
      return nativeOut(n.x25519Base());
    }
    if (backend === 'libsodium') {
      needSodium();
      return sodium.crypto_scalarmult_base(sk);
    }
    return x25519.scalarMultBase(sk);
  };
  const checkSk = (sk: Uint8Array): void => {
    if (sk.length !== 32) throw badLength('X25519 private key', 32, sk.length);
  };
  return {
    name: 'X25519',
    Npk: 32,
    Nsk: 32,
    // RFC 9807 §6.4.3 (Curve25519): the seed is the private key (X25519 clamps it).
    deriveKeyPair(seed) {
      checkSk(seed);
      const privateKey = seed.slice();
      return { privateKey, publicKey: base(privateKey) };
    },
    publicKey(sk) {
      checkSk(sk);
      return base(sk);
    },
    dh(sk, pk) {
      checkSk(sk);
      x25519CheckPublic(pk);
      let out: Uint8Array;
      try {
        out = mult(sk, pk);
      } catch (err) {
        throw badElement('X25519', err);
      }
      if (out.every((b) => b === 0)) throw badElement('X25519');
      return out;
    },
    checkPublicKey: x25519CheckPublic,
    checkPrivateKey: checkSk,
  };
}

/** X25519 on the fastest backend this thread has: the native addon, else noble (no set-up needed). */
export function fastX25519(): DhGroup {
  return x25519DhGroup(nativeAvailable() ? 'native' : 'noble');
}
