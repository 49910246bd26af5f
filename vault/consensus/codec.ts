// The one encoder/decoder of consensus wire messages, entries and stored records (msgpackr).
// Layout: a msgpack array [VERSION, typeTag, ...fields]. Positional arrays, never maps, so the
// encoding of a message is canonical: the transport signs/MACs these exact bytes.
// Decoding validates every field; anything malformed becomes a CodecError, never a crash and never
// a half-built message.

import { Packr } from 'msgpackr';
import { CodecError } from './errors.ts';
import type {
  ConfChange, ConfState, Entry, EntryType, HardState, Message, MessageType, NodeId, PersistedState, Snapshot, SnapshotMeta,
} from './types.ts';

export const WIRE_VERSION = 1;
export const LIMITS = {
  maxNodeIdLength: 64,
  maxMembers: 64,
  maxEntriesPerMessage: 4096,
  maxEntryBytes: 1 << 20,
  maxSnapshotBytes: 256 << 20,
  maxMessageBytes: 300 << 20,
} as const;

const packr = new Packr({ useRecords: false, mapsAsObjects: false, moreTypes: false, int64AsType: 'number' });

const MSG_TAGS: Record<MessageType, number> = {
  preVote: 1, preVoteResp: 2, vote: 3, voteResp: 4, append: 5, appendResp: 6,
  heartbeat: 7, heartbeatResp: 8, snapshot: 9, timeoutNow: 10, propose: 11,
};
const TAG_TO_TYPE = new Map<number, MessageType>(Object.entries(MSG_TAGS).map(([k, v]) => [v, k as MessageType]));
const ENTRY_TAGS: Record<EntryType, number> = { normal: 0, config: 1, noop: 2 };
const ENTRY_TYPES: EntryType[] = ['normal', 'config', 'noop'];
const CC_TAGS = { init: 0, addVoter: 1, addLearner: 2, remove: 3 } as const;
const CC_OPS = ['init', 'addVoter', 'addLearner', 'remove'] as const;

// ---------- encoding ----------

function entryTuple(e: Entry): unknown[] {
  return [e.index, e.term, ENTRY_TAGS[e.type], e.data];
}
function confTuple(c: ConfState): unknown[] { return [[...c.voters], [...c.learners]]; }
function snapTuple(s: Snapshot): unknown[] { return [s.meta.index, s.meta.term, confTuple(s.meta.conf), s.data]; }

function pack(v: unknown): Uint8Array {
  // Copy out: msgpackr packs into a reused buffer, and the caller signs and keeps these bytes.
  return new Uint8Array(packr.pack(v));
}

export function encodeMessage(m: Message): Uint8Array {
  const head = [WIRE_VERSION, MSG_TAGS[m.type], m.from, m.to, m.term];
  switch (m.type) {
    case 'preVote': return pack([...head, m.lastIndex, m.lastTerm]);
    case 'vote': return pack([...head, m.lastIndex, m.lastTerm, m.transfer]);
    case 'preVoteResp': case 'voteResp': return pack([...head, m.reject]);
    case 'append': return pack([...head, m.prevIndex, m.prevTerm, m.entries.map(entryTuple), m.commit]);
    case 'appendResp': return pack([...head, m.index, m.reject, m.hint]);
    case 'heartbeat': return pack([...head, m.commit, m.readSeq]);
    case 'heartbeatResp': return pack([...head, m.readSeq]);
    case 'snapshot': return pack([...head, snapTuple(m.snapshot)]);
    case 'timeoutNow': return pack(head);
    case 'propose': return pack([...head, [...m.data]]);
  }
}

export function encodeConfChange(cc: ConfChange): Uint8Array {
  return cc.op === 'init'
    ? pack([WIRE_VERSION, CC_TAGS.init, confTuple(cc.conf)])
    : pack([WIRE_VERSION, CC_TAGS[cc.op], cc.node]);
}

export function encodeEntry(e: Entry): Uint8Array { return pack([WIRE_VERSION, ...entryTuple(e)]); }
export function encodeHardState(h: HardState): Uint8Array { return pack([WIRE_VERSION, h.term, h.vote, h.commit]); }
export function encodeSnapshot(s: Snapshot): Uint8Array { return pack([WIRE_VERSION, ...snapTuple(s)]); }

// ---------- decoding ----------

function unpack(bytes: Uint8Array, what: string): unknown {
  if (!(bytes instanceof Uint8Array)) throw new CodecError(`${what}: not a byte string`);
  if (bytes.byteLength > LIMITS.maxMessageBytes) throw new CodecError(`${what}: too large`);
  let v: unknown;
  try {
    v = packr.unpack(bytes);
  } catch {
    throw new CodecError(`${what}: not valid msgpack`);
  }
  return v;
}

function arr(v: unknown, what: string, min: number, max = min): unknown[] {
  if (!Array.isArray(v) || v.length < min || v.length > max) throw new CodecError(`${what}: bad shape`);
  return v;
}
function nat(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new CodecError(`${what}: not a non-negative integer`);
  return v;
}
function bool(v: unknown, what: string): boolean {
  if (typeof v !== 'boolean') throw new CodecError(`${what}: not a boolean`);
  return v;
}
function nodeId(v: unknown, what: string): NodeId {
  if (typeof v !== 'string' || v.length === 0 || v.length > LIMITS.maxNodeIdLength || !/^[A-Za-z0-9._:-]+$/.test(v)) {
    throw new CodecError(`${what}: bad node id`);
  }
  return v;
}
function bytes(v: unknown, what: string, max: number): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new CodecError(`${what}: not bytes`);
  if (v.byteLength > max) throw new CodecError(`${what}: too large`);
  return new Uint8Array(v); // copy: never alias the receive buffer
}
function version(v: unknown, what: string): void {
  if (v !== WIRE_VERSION) throw new CodecError(`${what}: unsupported version`);
}

function decodeEntryTuple(v: unknown, what: string): Entry {
  const t = arr(v, what, 4);
  const index = nat(t[0], `${what}.index`);
  const term = nat(t[1], `${what}.term`);
  const tag = nat(t[2], `${what}.type`);
  const type = ENTRY_TYPES[tag];
  if (type === undefined) throw new CodecError(`${what}: unknown entry type`);
  if (index < 1) throw new CodecError(`${what}: index 0`);
  const data = bytes(t[3], `${what}.data`, LIMITS.maxEntryBytes);
  if (type === 'config') decodeConfChange(data);
  if (type === 'noop' && data.byteLength !== 0) throw new CodecError(`${what}: noop with data`);
  return { index, term, type, data };
}

function decodeConf(v: unknown, what: string): ConfState {
  const t = arr(v, what, 2);
  const ids = (x: unknown, w: string): NodeId[] => {
    const a = arr(x, w, 0, LIMITS.maxMembers);
    return a.map((y, i) => nodeId(y, `${w}[${i}]`));
  };
  const voters = ids(t[0], `${what}.voters`);
  const learners = ids(t[1], `${what}.learners`);
  const all = new Set([...voters, ...learners]);
  if (all.size !== voters.length + learners.length) throw new CodecError(`${what}: duplicate member`);
  return { voters, learners };
}

function decodeSnapTuple(t: unknown[], what: string): Snapshot {
  const meta: SnapshotMeta = {
    index: nat(t[0], `${what}.index`),
    term: nat(t[1], `${what}.term`),
    conf: decodeConf(t[2], `${what}.conf`),
  };
  return { meta, data: bytes(t[3], `${what}.data`, LIMITS.maxSnapshotBytes) };
}

export function decodeConfChange(b: Uint8Array): ConfChange {
  const t = arr(unpack(b, 'conf change'), 'conf change', 3);
  version(t[0], 'conf change');
  const op = CC_OPS[nat(t[1], 'conf change op')];
  if (op === undefined) throw new CodecError('conf change: unknown op');
  if (op === 'init') return { op, conf: decodeConf(t[2], 'conf change conf') };
  return { op, node: nodeId(t[2], 'conf change node') };
}

export function decodeEntry(b: Uint8Array): Entry {
  const t = arr(unpack(b, 'entry'), 'entry', 5);
  version(t[0], 'entry');
  return decodeEntryTuple(t.slice(1), 'entry');
}

export function decodeHardState(b: Uint8Array): HardState {
  const t = arr(unpack(b, 'hard state'), 'hard state', 4);
  version(t[0], 'hard state');
  const vote = t[2] === null ? null : nodeId(t[2], 'hard state vote');
  return { term: nat(t[1], 'hard state term'), vote, commit: nat(t[3], 'hard state commit') };
}

export function decodeSnapshot(b: Uint8Array): Snapshot {
  const t = arr(unpack(b, 'snapshot'), 'snapshot', 5);
  version(t[0], 'snapshot');
  return decodeSnapTuple(t.slice(1), 'snapshot');
}

/** Decode and fully validate one peer message. Throws CodecError on anything malformed. */
export function decodeMessage(b: Uint8Array): Message {
  const raw = unpack(b, 'message');
  if (!Array.isArray(raw) || raw.length < 5) throw new CodecError('message: bad shape');
  version(raw[0], 'message');
  const type = TAG_TO_TYPE.get(nat(raw[1], 'message type') );
  if (type === undefined) throw new CodecError('message: unknown type');
  const from = nodeId(raw[2], 'message.from');
  const to = nodeId(raw[3], 'message.to');
  const term = nat(raw[4], 'message.term');
  const w = `message(${type})`;
  const f = raw.slice(5);
  const base = { from, to, term };
  const fields = (n: number): unknown[] => { if (f.length !== n) throw new CodecError(`${w}: bad field count`); return f; };
  switch (type) {
    case 'preVote': { const x = fields(2); return { type, ...base, lastIndex: nat(x[0], w), lastTerm: nat(x[1], w) }; }
    case 'vote': { const x = fields(3); return { type, ...base, lastIndex: nat(x[0], w), lastTerm: nat(x[1], w), transfer: bool(x[2], w) }; }
    case 'preVoteResp': case 'voteResp': { const x = fields(1); return { type, ...base, reject: bool(x[0], w) }; }
    case 'append': {
      const x = fields(4);
      const prevIndex = nat(x[0], w);
      const prevTerm = nat(x[1], w);
      const list = arr(x[2], `${w}.entries`, 0, LIMITS.maxEntriesPerMessage);
      const entries = list.map((e, i) => decodeEntryTuple(e, `${w}.entries[${i}]`));
      // Entries must be contiguous after prevIndex with non-decreasing terms, all within the
      // sender's term: anything else is a forged or corrupted message.
      entries.forEach((e, i) => {
        if (e.index !== prevIndex + 1 + i) throw new CodecError(`${w}: entries not contiguous`);
        if (e.term > term || e.term < (i === 0 ? prevTerm : entries[i - 1]!.term)) throw new CodecError(`${w}: entry terms out of order`);
      });
      if (prevTerm > term) throw new CodecError(`${w}: prevTerm after term`);
      return { type, ...base, prevIndex, prevTerm, entries, commit: nat(x[3], w) };
    }
    case 'appendResp': { const x = fields(3); return { type, ...base, index: nat(x[0], w), reject: bool(x[1], w), hint: nat(x[2], w) }; }
    case 'heartbeat': { const x = fields(2); return { type, ...base, commit: nat(x[0], w), readSeq: nat(x[1], w) }; }
    case 'heartbeatResp': { const x = fields(1); return { type, ...base, readSeq: nat(x[0], w) }; }
    case 'snapshot': {
      const x = fields(1);
      const snapshot = decodeSnapTuple(arr(x[0], `${w}.snapshot`, 4), `${w}.snapshot`);
      if (snapshot.meta.term > term) throw new CodecError(`${w}: snapshot from a later term`);
      return { type, ...base, snapshot };
    }
    case 'timeoutNow': fields(0); return { type, ...base };
    case 'propose': {
      const x = fields(1);
      const list = arr(x[0], `${w}.data`, 1, LIMITS.maxEntriesPerMessage);
      return { type, ...base, data: list.map((d, i) => bytes(d, `${w}.data[${i}]`, LIMITS.maxEntryBytes)) };
    }
  }
}

/** Validate a record the host hands back on restart (it is untrusted input too). */
export function validatePersisted(p: PersistedState): PersistedState {
  const base = p.snapshot ? p.snapshot.meta.index : 0;
  p.entries.forEach((e, i) => {
    if (e.index !== base + 1 + i) throw new CodecError('persisted log: entries not contiguous');
    if (i > 0 && e.term < p.entries[i - 1]!.term) throw new CodecError('persisted log: terms decrease');
    if (e.term > p.hardState.term) throw new CodecError('persisted log: entry term after current term');
  });
  if (p.snapshot && p.entries.length > 0 && p.entries[0]!.term < p.snapshot.meta.term) {
    throw new CodecError('persisted log: entry before snapshot term');
  }
  return p;
}
