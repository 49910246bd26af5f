// Public API of OPAQUE (RFC 9807 on the RFC 9497 OPRF). Import from here, not from the files
// behind it. Everything is pure (no I/O); randomness is injectable; the vault's secrets come in
// through ServerSecrets so the OPRF seed can stay in the HSM.
//
//   const op = await createOpaque({ suite: 'ristretto255-SHA512', ksf });   // backend: native if built, else libsodium
//   backendStatus() -> { defaultBackend, native: { loaded, sodiumVersion | reason } }
//   device: op.clientStartRegistration / op.clientFinishRegistration, op.clientStartLogin / op.clientFinishLogin
//   vault:  op.serverRegistrationResponse, op.serverStartLogin (record or null) / op.serverFinishLogin
export { OpaqueError, type OpaqueErrorCode } from './errors.ts';
export { SUITES, DEFAULT_SUITE, suiteParams, type SuiteId, type SuiteParams, type OprfSuiteId, type AkeGroupId, type HashId } from './suite.ts';
export {
  identityKsf,
  argon2idKsf,
  scryptKsf,
  defaultKsf,
  ksfFromName,
  ARGON2ID_RFC9106_FIRST,
  ARGON2ID_RFC9106_SECOND,
  SCRYPT_RFC9807,
  type Ksf,
  type KsfSpec,
  type Argon2idParams,
  type ScryptParams,
} from './ksf.ts';
export {
  softwareServerSecrets,
  softwareServerSecretsFromSeed,
  tokenServerSecrets,
  TOKEN_OBJECTS,
  FLEET_AKE_AAD_V1,
  type ServerSecrets,
  type AkeKeyPair,
} from './secrets.ts';
export {
  createOpaque,
  makeOpaque,
  ready,
  defaultBackend,
  backendStatus,
  BKV_OPAQUE_CONTEXT,
  type Opaque,
  type OpaqueConfig,
  type BackendStatus,
  type BackendId,
  type ByteRng,
  type Identities,
  type RandomOptions,
  type ClientRegistrationState,
  type ClientLoginState,
  type ServerLoginState,
  type MessageSizes,
  type RegistrationRequest,
  type RegistrationResponse,
  type RegistrationRecord,
  type KE1,
  type KE2,
  type KE3,
} from './opaque.ts';
export type { PrimeGroup, DhGroup } from './group.ts';
export type { NativeStatus } from '../../native/index.ts';
export type { Oprf } from './oprf.ts';
