// The device <-> ChatD framing (protocol/device-frames.ts): round trips, and every malformed input
// fails as a FrameError, never as anything else.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  CHATD_ERROR_STATUS,
  FrameError,
  FrameKind,
  chatdError,
  decodeErrorBody,
  decodeFrame,
  encodeErrorBody,
  encodeFrame,
  type FrameKind as Kind,
} from '../../protocol/device-frames.ts';

const kinds = Object.values(FrameKind) as Kind[];

describe('device frames', () => {
  it('round-trips every kind, id and payload', () => {
    fc.assert(
      fc.property(fc.constantFrom(...kinds), fc.integer({ min: 0, max: 0xffffffff }), fc.uint8Array({ maxLength: 2048 }), (kind, id, payload) => {
        const f = decodeFrame(encodeFrame({ kind, id, payload }));
        expect(f.kind).toBe(kind);
        expect(f.id).toBe(id);
        expect(Buffer.from(f.payload).equals(Buffer.from(payload))).toBe(true);
      }),
    );
  });

  it('lays out version, kind and a big-endian id', () => {
    expect([...encodeFrame({ kind: FrameKind.Request, id: 0x01020304, payload: new Uint8Array([9]) })]).toEqual([1, 2, 1, 2, 3, 4, 9]);
  });

  it('rejects malformed frames with FrameError only', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        try {
          decodeFrame(bytes);
        } catch (e) {
          expect(e).toBeInstanceOf(FrameError);
        }
      }),
    );
    expect(() => decodeFrame(new Uint8Array([2, 2, 0, 0, 0, 1]))).toThrow(FrameError);
    expect(() => decodeFrame(new Uint8Array([1, 3, 0, 0, 0, 1]))).toThrow(FrameError);
    expect(() => encodeFrame({ kind: FrameKind.Reply, id: -1, payload: new Uint8Array() })).toThrow(FrameError);
  });

  it('round-trips error bodies and rejects malformed ones with FrameError', () => {
    for (const code of Object.keys(CHATD_ERROR_STATUS) as (keyof typeof CHATD_ERROR_STATUS)[]) {
      const b = chatdError(code, 'm', { retryAfterMs: 1500.2, vaultCode: 'NO_QUORUM' });
      expect(decodeErrorBody(encodeErrorBody(b))).toEqual({ ...b, retryAfterMs: 1501 });
    }
    const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
    for (const bad of [
      new Uint8Array(),
      new Uint8Array([0xff, 0xfe]),
      enc([]),
      enc({ v: 2, code: 'UNAUTHORIZED', status: 401, message: '' }),
      enc({ v: 1, code: 'NOPE', status: 401, message: '' }),
      enc({ v: 1, code: 'UNAUTHORIZED', status: 200, message: '' }),
      enc({ v: 1, code: 'UNAUTHORIZED', status: 401 }),
      enc({ v: 1, code: 'RATE_LIMITED', status: 429, message: '', retryAfterMs: -1 }),
      enc({ v: 1, code: 'VAULT_REJECTED', status: 422, message: '', vaultCode: 'lower case' }),
    ]) {
      expect(() => decodeErrorBody(bad)).toThrow(FrameError);
    }
  });
});
