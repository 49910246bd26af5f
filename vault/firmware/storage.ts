// What the firmware hands the untrusted host to keep, and how it checks what comes back.
//
// - Every stored item is sealed by the token (record key, per replica) with an AAD naming the replica,
//   the kind of item, its log index and the format version: a flipped bit, an item moved to another
//   index or taken from another replica's disk does not open.
// - Log entries are chained: hash_i = SHA-256("bkv chain v1" || hash_{i-1} || u64(i) || entry), and
//   each sealed entry carries hash_{i-1}; the snapshot carries the chain head at its index. A dropped
//   or reordered entry breaks the chain.
// - The anchor {index, hash} of the latest entry whose effects may have left the replica lives in the
//   token (writeData), sealed. On start, a log that ends before the anchor, or holds a different hash at
//   the anchor's index, is a rollback: the replica refuses to serve (ROLLBACK_DETECTED).
//
// No I/O here: the agent moves the bytes; the token is injected.
import { createHash } from 'node:crypto';
import { Packr } from 'msgpackr';
import { KeyLabels, type Token } from '../../hsm-adapter/token.ts';
import { FirmwareError } from './errors.ts';

export const STORAGE_VERSION = 1;
export const GENESIS_HASH = new Uint8Array(32);

export interface ChainPoint {
  index: number;
  hash: Uint8Array;
  /** Raft term of the entry at `index` (fleet anchors; absent in a solo vault's and in older anchors). */
  term?: number;
}

/** What the agent read from its disk, untouched. */
export interface StoredItems {
  snapshot?: Uint8Array;
  entries: Array<{ index: number; sealed: Uint8Array }>;
}

export interface VerifiedLog {
  snapshot?: { index: number; head: Uint8Array; state: Uint8Array };
  entries: Array<{ index: number; entry: Uint8Array }>;
  head: ChainPoint;
  anchor?: ChainPoint;
}

const packr = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: false });
const enc = new TextEncoder();

export function chainHash(prev: Uint8Array, index: number, entry: Uint8Array): Uint8Array {
  const idx = new Uint8Array(8);
  new DataView(idx.buffer).setBigUint64(0, BigInt(index));
  return new Uint8Array(createHash('sha256').update('bkv chain v1').update(prev).update(idx).update(entry).digest());
}

export class SealedStorage {
  constructor(
    private readonly token: Token,
    readonly replicaId: string,
  ) {}

  private aad(kind: 'entry' | 'snapshot' | 'anchor', index: number): Uint8Array {
    return enc.encode(`bkv ${kind} v${STORAGE_VERSION}\0${this.replicaId}\0${index}`);
  }

  sealEntry(index: number, prev: Uint8Array, entry: Uint8Array): { sealed: Uint8Array; hash: Uint8Array } {
    const sealed = this.token.seal(KeyLabels.recordKey, packr.pack({ index, prev, entry }), this.aad('entry', index));
    return { sealed, hash: chainHash(prev, index, entry) };
  }

  sealSnapshot(index: number, head: Uint8Array, state: Uint8Array): Uint8Array {
    // The snapshot's index is inside the plaintext (it names the slot the agent keeps it in).
    return this.token.seal(KeyLabels.recordKey, packr.pack({ index, head, state }), this.aad('snapshot', 0));
  }

  /** Whether `raw` (an anchor as a token holds it) opens in this storage's domain. */
  opensAnchor(raw: Uint8Array): boolean {
    try {
      this.openAnchor(raw);
      return true;
    } catch {
      return false;
    }
  }

  /** The rollback anchor, or undefined on a token that never had one. Throws TAMPERED if it does not open. */
  readAnchor(): ChainPoint | undefined {
    const raw = this.readAnchorSealed();
    return raw && this.openAnchor(raw);
  }

  /** The anchor as the token holds it, sealed (undefined: none): compared byte for byte, it need not be opened. */
  readAnchorSealed(): Uint8Array | undefined {
    try {
      return this.token.readData(KeyLabels.logAnchor);
    } catch (e) {
      if ((e as { code?: string }).code === 'KEY_NOT_FOUND') return undefined;
      throw e;
    }
  }

  openAnchor(raw: Uint8Array): ChainPoint {
    const p = this.openWith(raw, this.aad('anchor', 0), 'anchor') as Record<string, unknown>;
    if (!isIndex(p.index) || !isHash(p.hash) || (p.term !== undefined && !isIndex(p.term))) throw tampered('anchor has a bad shape');
    return p.term === undefined ? { index: p.index, hash: new Uint8Array(p.hash) } : { index: p.index, hash: new Uint8Array(p.hash), term: p.term as number };
  }

  /** Seals and writes the anchor; returns the sealed bytes the token now holds. */
  writeAnchor(p: ChainPoint): Uint8Array {
    const body = p.term === undefined ? { index: p.index, hash: p.hash } : { index: p.index, hash: p.hash, term: p.term };
    const sealed = this.token.seal(KeyLabels.recordKey, packr.pack(body), this.aad('anchor', 0));
    this.token.writeData(KeyLabels.logAnchor, sealed);
    return sealed;
  }

  /** Opens and checks everything the host returned; throws TAMPERED / ROLLBACK_DETECTED. */
  verify(items: StoredItems): VerifiedLog {
    let head: ChainPoint = { index: 0, hash: GENESIS_HASH };
    let snapshot: VerifiedLog['snapshot'];
    if (items.snapshot) {
      const s = this.openWith(items.snapshot, this.aad('snapshot', 0), 'snapshot') as Record<string, unknown>;
      if (!isIndex(s.index) || !isHash(s.head) || !(s.state instanceof Uint8Array)) throw tampered('snapshot has a bad shape');
      snapshot = { index: s.index, head: new Uint8Array(s.head), state: new Uint8Array(s.state) };
      head = { index: s.index, hash: snapshot.head };
    }
    const hashes = new Map<number, Uint8Array>([[head.index, head.hash]]);
    const entries: VerifiedLog['entries'] = [];
    const sorted = [...items.entries].sort((a, b) => a.index - b.index);
    for (const item of sorted) {
      if (item.index <= head.index && entries.length === 0) continue; // covered by the snapshot
      if (item.index !== head.index + 1) throw tampered(`log has a gap or repeat at ${item.index} (after ${head.index})`);
      const e = this.openWith(item.sealed, this.aad('entry', item.index), `entry ${item.index}`) as Record<string, unknown>;
      if (e.index !== item.index || !isHash(e.prev) || !(e.entry instanceof Uint8Array)) throw tampered(`entry ${item.index} has a bad shape`);
      if (!sameBytes(e.prev, head.hash)) throw tampered(`entry ${item.index} does not chain to its predecessor`);
      const entry = new Uint8Array(e.entry);
      head = { index: item.index, hash: chainHash(head.hash, item.index, entry) };
      hashes.set(head.index, head.hash);
      entries.push({ index: item.index, entry });
    }
    const anchor = this.readAnchor();
    if (anchor) {
      if (head.index < anchor.index) {
        throw new FirmwareError('ROLLBACK_DETECTED', `stored log ends at ${head.index} but the token anchor is at ${anchor.index}`);
      }
      const at = hashes.get(anchor.index);
      // A snapshot past the anchor is newer than it (snapshots only ever cover anchored entries or later).
      if (at ? !sameBytes(at, anchor.hash) : anchor.index > (snapshot?.index ?? 0)) {
        throw new FirmwareError('ROLLBACK_DETECTED', `stored log forks from the token anchor at ${anchor.index}`);
      }
    }
    return { snapshot, entries, head, anchor };
  }

  private openWith(sealed: Uint8Array, aad: Uint8Array, what: string): unknown {
    let plain: Uint8Array;
    try {
      plain = this.token.open(KeyLabels.recordKey, sealed, aad);
    } catch (e) {
      if ((e as { code?: string }).code === 'SEAL_OPEN_FAILED') throw tampered(`${what} does not open under this replica's seal`);
      throw e;
    }
    try {
      const v = packr.unpack(plain);
      if (typeof v !== 'object' || v === null) throw new Error('not a map');
      return v;
    } catch {
      throw tampered(`${what} does not decode`);
    }
  }
}

function tampered(why: string): FirmwareError {
  return new FirmwareError('TAMPERED', `stored data refused: ${why}`);
}

function isIndex(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function isHash(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array && v.length === 32;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Whose log a token's anchor belongs to: the single vault's (domain `<replica>`), the Raft fleet's
 * (`<replica>/raft`), neither (`none`: no anchor yet), or something else. They share the anchor object.
 */
export function anchorOwner(token: Token, replicaId: string): 'none' | 'solo' | 'fleet' | 'unknown' {
  const solo = new SealedStorage(token, replicaId);
  const raw = solo.readAnchorSealed();
  if (!raw) return 'none';
  if (solo.opensAnchor(raw)) return 'solo';
  return new SealedStorage(token, `${replicaId}/raft`).opensAnchor(raw) ? 'fleet' : 'unknown';
}
