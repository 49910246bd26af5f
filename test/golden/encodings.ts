// Every persisted and wire encoding of bkv, from fixed inputs, by name: what test/golden.test.ts
// compares against test/golden/encodings.json. Sealed items use a SimToken from a fixed seed, so
// their bytes are fixed too. Regenerate only on purpose (a format change that bumps its version):
// BKV_GOLDEN_UPDATE=1 npx vitest run test/golden.test.ts
import { encodeRelayReply, encodeRelayRequest } from '../../protocol/relay.ts';
import { encodeRefused } from '../../protocol/session.ts';
import { encodeDeviceMessage, encodeVaultReply, type DeviceMessage, type VaultReply } from '../../protocol/wire.ts';
import { SeededRng, encodeEntry as encodeRaftEntry, encodeHardState, encodeMessage, encodeSnapshot, type Message } from '../../vault/consensus/index.ts';
import { encodeEntry, type VaultEntry } from '../../vault/firmware/entries.ts';
import { VaultState } from '../../vault/firmware/state.ts';
import { GENESIS_HASH, SealedStorage } from '../../vault/firmware/storage.ts';
import { encodePeer, type PeerMessage } from '../../vault/replica/peer-wire.ts';
import { SimToken, simFleetSecrets } from '../../vault/sim/token.ts';

const b = (n: number, fill: number) => new Uint8Array(n).fill(fill);
const hex = (u: Uint8Array) => Buffer.from(u).toString('hex');

export const ENTRIES: VaultEntry[] = [
  { t: 'Register', id: b(16, 1), user: 'olga', suite: 'ristretto255-SHA512', oprfId: b(16, 2), record: b(192, 3), kSealed: b(60, 4), limit: 10, basis: 7, ksf: 'argon2id-m65536-t3-p1' },
  { t: 'ChangePassword', id: b(16, 5), user: 'olga', suite: 'P256-SHA256', oprfId: b(16, 6), record: b(128, 7), kSealed: b(60, 8), limit: 5, basis: 9, ksf: 'identity' },
  { t: 'Attempt', id: b(16, 9), user: 'olga' },
  { t: 'Outcome', id: b(16, 10), user: 'olga', oprfId: b(16, 2), ok: true, reset: true },
  { t: 'Outcome', id: b(16, 11), user: 'olga', oprfId: b(16, 2), ok: false, reset: false },
  { t: 'Reset', id: b(16, 12), user: 'olga', oprfId: b(16, 2) },
  { t: 'Lock', id: b(16, 13), user: 'olga', oprfId: b(16, 2) },
  { t: 'Delete', id: b(16, 14), user: 'olga' },
];

export const DEVICE_MESSAGES: DeviceMessage[] = [
  { t: 'RegisterStart', suite: 'ristretto255-SHA512', request: b(32, 1) },
  { t: 'RegisterStart', suite: 'P256-SHA256', request: b(33, 2), pin: b(16, 3) },
  { t: 'RegisterFinish', suite: 'ristretto255-SHA512', ticket: b(40, 4), record: b(192, 5), k: b(32, 6), ksf: 'argon2id-m65536-t3-p1', limit: 10 },
  { t: 'RecoverStart', suite: 'ristretto255-SHA512', ke1: b(96, 7), ksf: 'identity' },
  { t: 'RecoverStart', ke1: b(96, 8), pin: b(16, 9) },
  { t: 'RecoverFinish', session: b(16, 10), ke3: b(64, 11) },
  { t: 'Status' },
  { t: 'Disable' },
];

export const VAULT_REPLIES: VaultReply[] = [
  { t: 'RegisterResponse', response: b(64, 1), ticket: b(40, 2) },
  { t: 'Registered', limit: 10, confirm: b(32, 3) },
  { t: 'KsfMismatch', ksf: 'argon2id-m65536-t3-p1' },
  { t: 'KE2', session: b(16, 4), ke2: b(320, 5) },
  { t: 'Released', kEnc: b(60, 6) },
  { t: 'WrongPassword', attemptsLeft: 2 },
  { t: 'Locked' },
  { t: 'Status', state: 'registered', attemptsLeft: 3, limit: 10 },
  { t: 'Disabled' },
  { t: 'Error', code: 'NO_SESSION' },
];

const snapshot = { meta: { index: 40, term: 3, conf: { voters: ['r1', 'r2', 'r3'], learners: ['r4'] } }, data: b(8, 1) };

export const RAFT_MESSAGES: Message[] = [
  { type: 'preVote', from: 'r1', to: 'r2', term: 4, lastIndex: 10, lastTerm: 3 },
  { type: 'preVoteResp', from: 'r2', to: 'r1', term: 4, reject: false },
  { type: 'vote', from: 'r1', to: 'r2', term: 4, lastIndex: 10, lastTerm: 3, transfer: true },
  { type: 'voteResp', from: 'r2', to: 'r1', term: 4, reject: true },
  { type: 'append', from: 'r1', to: 'r3', term: 4, prevIndex: 10, prevTerm: 3, commit: 9, entries: [{ index: 11, term: 4, type: 'normal', data: b(4, 1) }, { index: 12, term: 4, type: 'noop', data: new Uint8Array(0) }] },
  { type: 'appendResp', from: 'r3', to: 'r1', term: 4, index: 12, reject: false, hint: 0 },
  { type: 'heartbeat', from: 'r1', to: 'r2', term: 4, commit: 12, readSeq: 7 },
  { type: 'heartbeatResp', from: 'r2', to: 'r1', term: 4, readSeq: 7 },
  { type: 'snapshot', from: 'r1', to: 'r2', term: 4, snapshot },
  { type: 'timeoutNow', from: 'r1', to: 'r2', term: 4 },
  { type: 'propose', from: 'r2', to: 'r1', term: 4, data: [b(3, 9)] },
];

export const PEER_MESSAGES: PeerMessage[] = [
  { kind: 'raft', bytes: b(5, 1) },
  { kind: 'forward', id: 77, user: 'olga', body: b(10, 2) },
  { kind: 'forwardReply', id: 77, ok: true, body: b(10, 3) },
  { kind: 'forwardReply', id: 78, ok: false, code: 'NOT_LEADER' },
  { kind: 'rejoin', lastIndex: 123 },
];

/** name -> hex of every encoding. */
export function goldenEncodings(): Record<string, string> {
  const out: Record<string, string> = {};
  ENTRIES.forEach((e, i) => { out[`firmware-entry-${i}-${e.t}`] = hex(encodeEntry(e)); });
  const state = new VaultState();
  ENTRIES.slice(0, 4).forEach((e, i) => state.apply(i + 1, e));
  out['firmware-state-snapshot'] = hex(state.encode());
  DEVICE_MESSAGES.forEach((m, i) => { out[`device-message-${i}-${m.t}`] = hex(encodeDeviceMessage(m)); });
  VAULT_REPLIES.forEach((r, i) => { out[`vault-reply-${i}-${r.t}`] = hex(encodeVaultReply(r)); });
  out['session-refused'] = hex(encodeRefused('NOT_LEADER'));
  out['relay-request'] = hex(encodeRelayRequest({ user: 'olga', body: b(12, 1) }));
  out['relay-reply-ok'] = hex(encodeRelayReply({ ok: true, body: b(12, 2) }));
  out['relay-reply-error'] = hex(encodeRelayReply({ ok: false, code: 'NO_LEADER', message: 'no leader' }));
  RAFT_MESSAGES.forEach((m, i) => { out[`raft-message-${i}-${m.type}`] = hex(encodeMessage(m)); });
  out['raft-entry'] = hex(encodeRaftEntry({ index: 11, term: 4, type: 'normal', data: b(4, 1) }));
  out['raft-hard-state'] = hex(encodeHardState({ term: 4, vote: 'r2', commit: 12 }));
  out['raft-snapshot'] = hex(encodeSnapshot(snapshot));
  PEER_MESSAGES.forEach((m, i) => { out[`peer-message-${i}-${m.kind}`] = hex(encodePeer(m)); });
  // Sealed storage: a seeded SimToken makes every seal's IV, and so every byte, fixed.
  const rng = new SeededRng(2026);
  const token = new SimToken('golden', simFleetSecrets(rng), rng.fork());
  const sealed = new SealedStorage(token, 'r1/raft');
  out['sealed-entry'] = hex(sealed.sealEntry(1, GENESIS_HASH, b(6, 1)).sealed);
  out['sealed-snapshot'] = hex(sealed.sealSnapshot(40, b(32, 2), b(6, 3)));
  sealed.writeAnchor({ index: 12, hash: b(32, 4), term: 4 });
  out['sealed-anchor'] = hex(token.readData('log-anchor'));
  return out;
}
