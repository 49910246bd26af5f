// Golden bytes for every stored and wire encoding (test/golden/encodings.ts): a change to any of
// them must be deliberate. Regenerate on purpose with BKV_GOLDEN_UPDATE=1 (then bump the format's
// version if old bytes no longer decode). Each golden value also decodes back to its input.
import { readFileSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { decodeDeviceMessage, decodeVaultReply } from '../protocol/wire.ts';
import { decodeMessage } from '../vault/consensus/index.ts';
import { decodeEntry } from '../vault/firmware/entries.ts';
import { decodePeer } from '../vault/replica/peer-wire.ts';
import { DEVICE_MESSAGES, ENTRIES, PEER_MESSAGES, RAFT_MESSAGES, VAULT_REPLIES, goldenEncodings } from './golden/encodings.ts';

const FILE = new URL('./golden/encodings.json', import.meta.url);
const now = goldenEncodings();
if (process.env.BKV_GOLDEN_UPDATE) writeFileSync(FILE, `${JSON.stringify(now, null, 1)}\n`);
const golden = JSON.parse(readFileSync(FILE, 'utf8')) as Record<string, string>;
const bytes = (name: string) => new Uint8Array(Buffer.from(golden[name]!, 'hex'));

describe('golden encodings', () => {
  it('every encoding is byte for byte what it was', () => {
    expect(Object.keys(now).sort()).toEqual(Object.keys(golden).sort());
    for (const [k, v] of Object.entries(now)) expect(v, k).toBe(golden[k]);
  });

  it('the golden bytes decode to their inputs', () => {
    ENTRIES.forEach((e, i) => expect(decodeEntry(bytes(`firmware-entry-${i}-${e.t}`))).toEqual(e));
    DEVICE_MESSAGES.forEach((m, i) => expect(decodeDeviceMessage(bytes(`device-message-${i}-${m.t}`))).toEqual(m));
    VAULT_REPLIES.forEach((r, i) => expect(decodeVaultReply(bytes(`vault-reply-${i}-${r.t}`))).toEqual(r));
    RAFT_MESSAGES.forEach((m, i) => expect(decodeMessage(bytes(`raft-message-${i}-${m.type}`))).toEqual(m));
    PEER_MESSAGES.forEach((m, i) => expect(decodePeer(bytes(`peer-message-${i}-${m.kind}`))).toEqual(m));
  });
});
