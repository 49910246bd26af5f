// The consensus wire codec: every message type round-trips byte-exactly, and any malformed,
// truncated, oversized or inconsistent input becomes a CodecError (never another exception).

import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import {
  CodecError, WIRE_VERSION, decodeConfChange, decodeEntry, decodeHardState, decodeMessage, decodeSnapshot,
  encodeConfChange, encodeEntry, encodeHardState, encodeMessage, encodeSnapshot, type Entry, type Message,
} from '../../vault/consensus/index.ts';

const packr = new Packr({ useRecords: false, mapsAsObjects: false });
const b = (...x: number[]): Uint8Array => new Uint8Array(x);
const cfg = encodeConfChange({ op: 'addLearner', node: 'eu-west' });
const ents: Entry[] = [
  { index: 8, term: 3, type: 'normal', data: b(1, 2, 3) },
  { index: 9, term: 4, type: 'config', data: cfg },
  { index: 10, term: 4, type: 'noop', data: b() },
];
const snapshot = { meta: { index: 40, term: 4, conf: { voters: ['a', 'b', 'c'], learners: ['d'] } }, data: b(9, 9) };

const samples: Message[] = [
  { type: 'preVote', from: 'a', to: 'b', term: 5, lastIndex: 10, lastTerm: 4 },
  { type: 'preVoteResp', from: 'b', to: 'a', term: 5, reject: false },
  { type: 'vote', from: 'a', to: 'b', term: 5, lastIndex: 10, lastTerm: 4, transfer: true },
  { type: 'voteResp', from: 'b', to: 'a', term: 5, reject: true },
  { type: 'append', from: 'a', to: 'b', term: 4, prevIndex: 7, prevTerm: 3, entries: ents, commit: 6 },
  { type: 'append', from: 'a', to: 'b', term: 4, prevIndex: 7, prevTerm: 3, entries: [], commit: 6 },
  { type: 'appendResp', from: 'b', to: 'a', term: 4, index: 7, reject: true, hint: 5 },
  { type: 'heartbeat', from: 'a', to: 'b', term: 4, commit: 6, readSeq: 12 },
  { type: 'heartbeatResp', from: 'b', to: 'a', term: 4, readSeq: 12 },
  { type: 'snapshot', from: 'a', to: 'd', term: 4, snapshot },
  { type: 'timeoutNow', from: 'a', to: 'c', term: 4 },
  { type: 'propose', from: 'c', to: 'a', term: 4, data: [b(1), b(2, 3)] },
];

function norm(x: unknown): unknown {
  return JSON.parse(JSON.stringify(x, (_k, v: unknown) => (v instanceof Uint8Array ? [...v] : v)));
}

describe('consensus codec', () => {
  it('round-trips every message type, byte-exactly', () => {
    for (const m of samples) {
      const bytes = encodeMessage(m);
      const back = decodeMessage(bytes);
      expect(norm(back)).toEqual(norm(m));
      expect(Buffer.from(encodeMessage(back)).equals(Buffer.from(bytes))).toBe(true);
    }
  });

  it('round-trips entries, hard state, snapshots and conf changes', () => {
    for (const e of ents) expect(norm(decodeEntry(encodeEntry(e)))).toEqual(norm(e));
    const hs = { term: 9, vote: 'us-east', commit: 77 };
    expect(decodeHardState(encodeHardState(hs))).toEqual(hs);
    expect(decodeHardState(encodeHardState({ ...hs, vote: null }))).toEqual({ ...hs, vote: null });
    expect(norm(decodeSnapshot(encodeSnapshot(snapshot)))).toEqual(norm(snapshot));
    expect(decodeConfChange(cfg)).toEqual({ op: 'addLearner', node: 'eu-west' });
    const init = { op: 'init', conf: { voters: ['a', 'b'], learners: [] } } as const;
    expect(decodeConfChange(encodeConfChange(init))).toEqual(init);
  });

  const bad = (v: unknown): Uint8Array => new Uint8Array(packr.pack(v));
  const cases: [string, Uint8Array][] = [
    ['empty', b()],
    ['not msgpack', b(0xc1)],
    ['truncated', encodeMessage(samples[4]!).slice(0, 20)],
    ['a map', bad({ type: 'vote' })],
    ['wrong version', bad([WIRE_VERSION + 1, 1, 'a', 'b', 5, 10, 4])],
    ['unknown type', bad([WIRE_VERSION, 99, 'a', 'b', 5])],
    ['negative term', bad([WIRE_VERSION, 1, 'a', 'b', -1, 10, 4])],
    ['float index', bad([WIRE_VERSION, 1, 'a', 'b', 5, 1.5, 4])],
    ['bad node id', bad([WIRE_VERSION, 1, 'a b', 'b', 5, 10, 4])],
    ['empty node id', bad([WIRE_VERSION, 1, '', 'b', 5, 10, 4])],
    ['extra field', bad([WIRE_VERSION, 10, 'a', 'b', 5, 1])],
    ['missing field', bad([WIRE_VERSION, 3, 'a', 'b', 5, 10, 4])],
    ['string for bool', bad([WIRE_VERSION, 2, 'a', 'b', 5, 'no'])],
    ['gap in entries', bad([WIRE_VERSION, 5, 'a', 'b', 4, 7, 3, [[8, 3, 0, b()], [10, 3, 0, b()]], 6])],
    ['entry from a later term', bad([WIRE_VERSION, 5, 'a', 'b', 4, 7, 3, [[8, 5, 0, b()]], 6])],
    ['entry terms going down', bad([WIRE_VERSION, 5, 'a', 'b', 4, 7, 3, [[8, 2, 0, b()]], 6])],
    ['unknown entry type', bad([WIRE_VERSION, 5, 'a', 'b', 4, 7, 3, [[8, 3, 7, b()]], 6])],
    ['noop with data', bad([WIRE_VERSION, 5, 'a', 'b', 4, 7, 3, [[8, 3, 2, b(1)]], 6])],
    ['garbled config entry', bad([WIRE_VERSION, 5, 'a', 'b', 4, 7, 3, [[8, 3, 1, b(1, 2)]], 6])],
    ['entry data not bytes', bad([WIRE_VERSION, 5, 'a', 'b', 4, 7, 3, [[8, 3, 0, 'text']], 6])],
    ['duplicate member in snapshot', bad([WIRE_VERSION, 9, 'a', 'b', 4, [3, 2, [['a', 'a'], []], b()]])],
    ['snapshot from a later term', bad([WIRE_VERSION, 9, 'a', 'b', 4, [3, 9, [['a'], []], b()]])],
    ['empty propose', bad([WIRE_VERSION, 11, 'a', 'b', 4, []])],
  ];
  for (const [name, bytes] of cases) {
    it(`rejects ${name} with a CodecError`, () => {
      let err: unknown;
      try { decodeMessage(bytes); } catch (e) { err = e; }
      expect(err).toBeInstanceOf(CodecError);
      expect((err as CodecError).code).toBe('BAD_PEER_MESSAGE');
    });
  }

  it('never throws anything but CodecError on random bytes or mutated valid messages', () => {
    const valid = samples.map(encodeMessage);
    fc.assert(fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 200 }),
        fc.tuple(fc.nat(valid.length - 1), fc.nat(400), fc.integer({ min: 0, max: 255 })).map(([i, pos, v]) => {
          const x = new Uint8Array(valid[i]!);
          if (x.length > 0) x[pos % x.length] = v;
          return x;
        }),
      ),
      (bytes) => {
        try {
          const m = decodeMessage(bytes);
          expect(decodeMessage(encodeMessage(m))).toEqual(m); // whatever decodes is canonical
        } catch (e) {
          if (!(e instanceof CodecError)) throw e;
        }
      },
    ), { numRuns: 3000 });
  });

  it('decoded byte fields do not alias the receive buffer', () => {
    const bytes = encodeMessage(samples[11]!);
    const m = decodeMessage(bytes) as Extract<Message, { type: 'propose' }>;
    bytes.fill(0);
    expect([...m.data[1]!]).toEqual([2, 3]);
  });
});
