// The OPRF of RFC 9497, mode 0x00 (base OPRF), over a PrimeGroup.
import { OpaqueError } from './errors.ts';
import { concat, hash, i2osp, utf8 } from './hash.ts';
import type { PrimeGroup } from './group.ts';
import type { OprfSuiteId } from './suite.ts';

export interface Oprf {
  readonly id: OprfSuiteId;
  readonly group: PrimeGroup;
  /** Blind(input, blind): blind * HashToGroup(input). */
  blind(input: Uint8Array, blind: Uint8Array): Uint8Array;
  /** BlindEvaluate(skS, blindedElement). */
  evaluate(key: Uint8Array, blinded: Uint8Array): Uint8Array;
  /** Finalize(input, blind, evaluatedElement). */
  finalize(input: Uint8Array, blind: Uint8Array, evaluated: Uint8Array): Uint8Array;
  /** DeriveKeyPair(seed, info), private half only (OPAQUE never needs the OPRF public key). */
  deriveKey(seed: Uint8Array, info: Uint8Array): Uint8Array;
}

const FINALIZE = utf8('Finalize');

export function makeOprf(id: OprfSuiteId, group: PrimeGroup): Oprf {
  // contextString = "OPRFV1-" || I2OSP(mode=0, 1) || "-" || identifier
  const context = concat(utf8('OPRFV1-'), Uint8Array.of(0), utf8('-' + id));
  const hashToGroupDst = concat(utf8('HashToGroup-'), context);
  const deriveDst = concat(utf8('DeriveKeyPair'), context);
  return {
    id,
    group,
    blind(input, blind) {
      return group.scalarMult(blind, group.hashToGroup(input, hashToGroupDst));
    },
    evaluate(key, blinded) {
      return group.scalarMult(key, blinded);
    },
    finalize(input, blind, evaluated) {
      const unblinded = group.scalarMult(group.scalarInvert(blind), evaluated);
      return hash(group.hash, i2osp(input.length, 2), input, i2osp(unblinded.length, 2), unblinded, FINALIZE);
    },
    deriveKey(seed, info) {
      const deriveInput = concat(seed, i2osp(info.length, 2), info, Uint8Array.of(0));
      const last = deriveInput.length - 1;
      for (let counter = 0; counter <= 255; counter++) {
        deriveInput[last] = counter;
        const sk = group.hashToScalar(deriveInput, deriveDst);
        if (!group.scalarIsZero(sk)) return sk;
      }
      throw new OpaqueError('DERIVE_FAILED', 'DeriveKeyPair: no non-zero scalar');
    },
  };
}
