/*
 * bkv_native: the ristretto255 operations of protocol/opaque/group.ts on the system libsodium.
 *
 * Calling convention (why): every function takes no JS arguments and works on one per-thread
 * 128-byte scratch ArrayBuffer that JS fills and reads. That skips napi_get_typedarray_info on
 * small (V8 on-heap) typed arrays, which would force V8 to move each one off-heap, and it skips
 * allocating a result object in C. Scratch layout:
 *   [0, 64)   input: scalar (32) or wide scalar / hash (64)
 *   [64, 96)  input: element, or the second scalar
 *   [96, 128) output
 * Functions return an int status: 0 ok, -1 bad element (not canonical, not on the group, the
 * identity, or an identity result), -2 bad scalar (not canonical or zero). Every secret input is
 * wiped before returning; JS wipes the output after copying it out.
 *
 * Context-aware (NAPI_MODULE_INIT + instance data): each worker thread gets its own scratch.
 */
#include <node_api.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define SCRATCH_LEN 128
#define IN_A 0
#define IN_B 64
#define OUT 96

typedef struct {
  napi_ref scratch_ref; /* keeps the ArrayBuffer (and so the pointer below) alive */
  unsigned char *scratch;
} bkv_state;

static bkv_state *state_of(napi_env env, napi_callback_info info) {
  void *data = NULL;
  if (napi_get_cb_info(env, info, NULL, NULL, NULL, &data) != napi_ok) return NULL;
  return (bkv_state *)data;
}

static napi_value int_result(napi_env env, int v) {
  napi_value r;
  if (napi_create_int32(env, v, &r) != napi_ok) return NULL;
  return r;
}

/* 2^252 + 27742317777372353535851937790883648493, little-endian: the group order L. */
static const unsigned char L_ORDER[32] = {
  0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
};

/* 1 iff s is canonical (s < L) and non-zero; constant time in s. */
static int scalar_ok(const unsigned char *s) {
  unsigned int borrow = 0, nz = 0;
  for (int i = 0; i < 32; i++) {
    unsigned int d = (unsigned int)s[i] - (unsigned int)L_ORDER[i] - borrow;
    borrow = (d >> 8) & 1;
    nz |= s[i];
  }
  /* borrow == 1 means s - L < 0, i.e. s < L */
  return (int)(borrow & (unsigned int)((nz + 0xff) >> 8));
}

/* libsodium 1.0.18's ristretto255 decoder ignores the top bit of the last byte (later releases
 * refuse it); RFC 9496 says such an encoding is non-canonical, so it is refused here first. */
static int top_bit_clear(const unsigned char *p) {
  return (p[31] & 0x80) == 0;
}

/* 1 iff p is a canonical encoding of a non-identity element. libsodium 1.0.18's
 * is_valid_point accepts the identity (all zeroes), so that is refused here too. */
static int element_ok(const unsigned char *p) {
  return top_bit_clear(p) && !sodium_is_zero(p, 32) && crypto_core_ristretto255_is_valid_point(p) == 1;
}

/* OUT = A * B (A scalar, B element). */
static napi_value scalarmult(napi_env env, napi_callback_info info) {
  bkv_state *st = state_of(env, info);
  if (!st) return NULL;
  unsigned char *m = st->scratch;
  int rc;
  if (!scalar_ok(m + IN_A)) {
    /* Report the element first if it is bad too: the order of checks noble uses. */
    rc = element_ok(m + IN_B) ? -2 : -1;
  } else if (!top_bit_clear(m + IN_B) || crypto_scalarmult_ristretto255(m + OUT, m + IN_A, m + IN_B) != 0) {
    /* Invalid element, or an identity result, which for a non-zero scalar in a prime-order
     * group means the identity was the input. */
    rc = -1;
  } else {
    rc = 0;
  }
  sodium_memzero(m + IN_A, 32);
  if (rc != 0) sodium_memzero(m + OUT, 32);
  return int_result(env, rc);
}

/* OUT = A * G. */
static napi_value scalarmult_base(napi_env env, napi_callback_info info) {
  bkv_state *st = state_of(env, info);
  if (!st) return NULL;
  unsigned char *m = st->scratch;
  int rc;
  if (!scalar_ok(m + IN_A)) rc = -2;
  else rc = crypto_scalarmult_ristretto255_base(m + OUT, m + IN_A) == 0 ? 0 : -2;
  sodium_memzero(m + IN_A, 32);
  if (rc != 0) sodium_memzero(m + OUT, 32);
  return int_result(env, rc);
}

/* OUT = the element for the 64-byte uniform string at A (RFC 9496 one-way map). */
static napi_value from_hash(napi_env env, napi_callback_info info) {
  bkv_state *st = state_of(env, info);
  if (!st) return NULL;
  unsigned char *m = st->scratch;
  int rc = crypto_core_ristretto255_from_hash(m + OUT, m + IN_A) == 0 ? 0 : -1;
  sodium_memzero(m + IN_A, 64);
  if (rc == 0 && sodium_is_zero(m + OUT, 32)) rc = -1; /* the identity: callers refuse it */
  return int_result(env, rc);
}

/* 1 if B is a canonical non-identity element, else 0. */
static napi_value is_valid_point(napi_env env, napi_callback_info info) {
  bkv_state *st = state_of(env, info);
  if (!st) return NULL;
  return int_result(env, element_ok(st->scratch + IN_B));
}

/* OUT = (64-byte A) mod L. */
static napi_value scalar_reduce(napi_env env, napi_callback_info info) {
  bkv_state *st = state_of(env, info);
  if (!st) return NULL;
  unsigned char *m = st->scratch;
  crypto_core_ristretto255_scalar_reduce(m + OUT, m + IN_A);
  sodium_memzero(m + IN_A, 64);
  return int_result(env, 0);
}

/* OUT = A^-1 mod L. */
static napi_value scalar_invert(napi_env env, napi_callback_info info) {
  bkv_state *st = state_of(env, info);
  if (!st) return NULL;
  unsigned char *m = st->scratch;
  int rc;
  if (!scalar_ok(m + IN_A)) rc = -2;
  else rc = crypto_core_ristretto255_scalar_invert(m + OUT, m + IN_A) == 0 ? 0 : -2;
  sodium_memzero(m + IN_A, 32);
  if (rc != 0) sodium_memzero(m + OUT, 32);
  return int_result(env, rc);
}

/* Two-scalar ops on canonical scalars (libsodium's own contract; zero allowed). */
#define SCALAR_OP2(NAME, FN)                                                         \
  static napi_value NAME(napi_env env, napi_callback_info info) {                    \
    bkv_state *st = state_of(env, info);                                             \
    if (!st) return NULL;                                                            \
    unsigned char *m = st->scratch;                                                  \
    FN(m + OUT, m + IN_A, m + IN_B);                                                 \
    sodium_memzero(m + IN_A, 32);                                                    \
    sodium_memzero(m + IN_B, 32);                                                    \
    return int_result(env, 0);                                                       \
  }
SCALAR_OP2(scalar_mul, crypto_core_ristretto255_scalar_mul)
SCALAR_OP2(scalar_add, crypto_core_ristretto255_scalar_add)
SCALAR_OP2(scalar_sub, crypto_core_ristretto255_scalar_sub)

static napi_value scalar_negate(napi_env env, napi_callback_info info) {
  bkv_state *st = state_of(env, info);
  if (!st) return NULL;
  unsigned char *m = st->scratch;
  crypto_core_ristretto255_scalar_negate(m + OUT, m + IN_A);
  sodium_memzero(m + IN_A, 32);
  return int_result(env, 0);
}

/* X25519 (RFC 7748) for the device-vault session (protocol/session.ts): OUT = X25519(A[0..32), B).
 * -1 when the result is all zero (a low-order input point): Noise must not use such a DH. */
static napi_value x25519(napi_env env, napi_callback_info info) {
  bkv_state *st = state_of(env, info);
  if (!st) return NULL;
  unsigned char *m = st->scratch;
  int rc = crypto_scalarmult(m + OUT, m + IN_A, m + IN_B);
  sodium_memzero(m + IN_A, 32);
  if (rc != 0) sodium_memzero(m + OUT, 32);
  return int_result(env, rc == 0 ? 0 : -1);
}

/* OUT = X25519(A[0..32), 9): the public key of a private key. */
static napi_value x25519_base(napi_env env, napi_callback_info info) {
  bkv_state *st = state_of(env, info);
  if (!st) return NULL;
  unsigned char *m = st->scratch;
  int rc = crypto_scalarmult_base(m + OUT, m + IN_A);
  sodium_memzero(m + IN_A, 32);
  return int_result(env, rc == 0 ? 0 : -2);
}

static void free_state(napi_env env, void *data, void *hint) {
  (void)hint;
  bkv_state *st = (bkv_state *)data;
  if (!st) return;
  if (st->scratch) sodium_memzero(st->scratch, SCRATCH_LEN);
  if (st->scratch_ref) napi_delete_reference(env, st->scratch_ref);
  free(st);
}

static napi_value fail(napi_env env, const char *msg) {
  napi_throw_error(env, "BKV_NATIVE_INIT", msg);
  return NULL;
}

NAPI_MODULE_INIT() {
  if (sodium_init() < 0) return fail(env, "sodium_init failed");
  bkv_state *st = (bkv_state *)calloc(1, sizeof *st);
  if (!st) return fail(env, "out of memory");
  napi_value ab;
  void *p = NULL;
  if (napi_create_arraybuffer(env, SCRATCH_LEN, &p, &ab) != napi_ok ||
      napi_create_reference(env, ab, 1, &st->scratch_ref) != napi_ok) {
    free(st);
    return fail(env, "cannot allocate the scratch buffer");
  }
  st->scratch = (unsigned char *)p;
  if (napi_set_instance_data(env, st, free_state, NULL) != napi_ok) {
    napi_delete_reference(env, st->scratch_ref);
    free(st);
    return fail(env, "cannot set instance data");
  }

  napi_property_descriptor props[] = {
    {"scratch", NULL, NULL, NULL, NULL, ab, napi_enumerable, NULL},
    {"scalarmult", NULL, scalarmult, NULL, NULL, NULL, napi_enumerable, st},
    {"scalarmultBase", NULL, scalarmult_base, NULL, NULL, NULL, napi_enumerable, st},
    {"fromHash", NULL, from_hash, NULL, NULL, NULL, napi_enumerable, st},
    {"isValidPoint", NULL, is_valid_point, NULL, NULL, NULL, napi_enumerable, st},
    {"scalarReduce", NULL, scalar_reduce, NULL, NULL, NULL, napi_enumerable, st},
    {"scalarInvert", NULL, scalar_invert, NULL, NULL, NULL, napi_enumerable, st},
    {"scalarMul", NULL, scalar_mul, NULL, NULL, NULL, napi_enumerable, st},
    {"scalarAdd", NULL, scalar_add, NULL, NULL, NULL, napi_enumerable, st},
    {"scalarSub", NULL, scalar_sub, NULL, NULL, NULL, napi_enumerable, st},
    {"scalarNegate", NULL, scalar_negate, NULL, NULL, NULL, napi_enumerable, st},
    {"x25519", NULL, x25519, NULL, NULL, NULL, napi_enumerable, st},
    {"x25519Base", NULL, x25519_base, NULL, NULL, NULL, napi_enumerable, st},
  };
  napi_value version;
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok ||
      napi_create_string_utf8(env, sodium_version_string(), NAPI_AUTO_LENGTH, &version) != napi_ok ||
      napi_set_named_property(env, exports, "sodiumVersion", version) != napi_ok) {
    return fail(env, "cannot define exports");
  }
  return exports;
}
