// Shared set-up for the firmware and agent suites: a real SoftHSM2 fleet, real LMDB in a temp dir,
// real OPAQUE with a cheap KSF (identity: the tests exercise the vault, not key stretching).
//
// Also the test-side tools for the device-vault session (protocol/session.ts), used by the agent,
// fleet, simulator and e2e suites:
// - handSession(): a device that speaks inner wire messages by hand (a Hello and its Welcome, then
//   at most one Next and its Final), for tests that craft RecoverStart / RecoverFinish themselves;
// - sessionTap(): lets a test read the inner replies of sessions client/password.ts runs, by
//   remembering the device's ephemeral keys (from the rng it is given) and opening the vault's
//   replies with them. Only a test can: it holds the device's randomness and the vault's token.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { identityKsf, tokenServerSecrets } from '../../protocol/opaque/index.ts';
import { fastX25519 } from '../../protocol/opaque/group.ts';
import { tokenSessionKey } from '../../protocol/opaque/secrets.ts';
import { DeviceSession, acceptHello, decodeSessionFrame, type SessionFrame, type VaultSessionKey } from '../../protocol/session.ts';
import { decodeVaultReply, encodeDeviceMessage, type DeviceMessage, type VaultReply, type WireSuite } from '../../protocol/wire.ts';
import { Replica, type ReplicaOptions } from '../../vault/agent/replica.ts';
import type { PasswordOptions, Send } from '../../client/password.ts';

export interface VaultFixture {
  fleet: TestFleet;
  token: Token;
  replicaId: string;
  dbDir: string;
  tmp: string;
  logLines: string[];
  /** The vault's session public key, as devices pin it. */
  sessionKey: Uint8Array;
  /** The vault's session key pair (a test can open what it seals with a tap). */
  vaultSessionKey: VaultSessionKey;
  open(extra?: Partial<ReplicaOptions>): Promise<Replica>;
  client(user: string, suite?: WireSuite): PasswordOptions;
  sendVia(replica: Replica, user: string): Send;
  cleanup(): Promise<void>;
}

/** replicas > 1: the fixture drives replica `use`; others are there for cross-replica tests. */
export async function vaultFixture(opts: { replicas?: number; use?: number } = {}): Promise<VaultFixture> {
  const fleet = await provisionTestFleet({ replicas: opts.replicas ?? 1 });
  const info = fleet.replicas[opts.use ?? 0]!;
  const replicaId = info.name;
  const token = fleet.openToken(info.tokenLabel);
  const tmp = mkdtempSync(join(tmpdir(), 'bkv-vault-test-'));
  const dbDir = join(tmp, 'replicas', replicaId, 'db');
  const logLines: string[] = [];
  const opened: Replica[] = [];
  const vaultSessionKey = tokenSessionKey(token, fastX25519());
  return {
    fleet,
    token,
    replicaId,
    dbDir,
    tmp,
    logLines,
    sessionKey: vaultSessionKey.publicKey,
    vaultSessionKey,
    async open(extra = {}) {
      const r = await Replica.open({ replicaId, token, dbDir, tickMs: 0, log: (l) => logLines.push(l), ...extra });
      opened.push(r);
      return r;
    },
    client(user, suite = 'ristretto255-SHA512') {
      // The pinned keys, as a device would carry them in its config.
      return { user, suite, ksf: identityKsf, serverPublicKey: tokenServerSecrets(token, suite).akeKeyPair.publicKey, sessionKey: vaultSessionKey.publicKey };
    },
    sendVia(replica, user) {
      return (body) => replica.handle(user, body);
    },
    async cleanup() {
      for (const r of opened) await r.close();
      await fleet.cleanup();
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

const defaultRng = (n: number): Uint8Array => new Uint8Array(randomBytes(n));

/** What one position of a hand-driven session got back: the outer frame, and the inner reply if it opened. */
export interface HandReply {
  /** The frame as the relay saw it. */
  frame: Uint8Array;
  kind: SessionFrame['kind'];
  /** The inner reply bytes (opened and unpadded), absent for a Refused frame. */
  inner?: Uint8Array;
  /** The inner reply decoded, absent for a Refused frame. */
  reply?: VaultReply;
  /** For a Refused frame: its (unauthenticated) code. */
  refused?: string;
}

/**
 * One device-vault session driven by hand. `first` sends a Hello, `second` a Next of the same session;
 * each returns the inner reply (or the refusal). A message may be a typed DeviceMessage or raw inner
 * bytes (to test what the firmware does with malformed messages inside a session).
 */
export interface HandSession {
  first(m: DeviceMessage | Uint8Array): Promise<HandReply>;
  second(m: DeviceMessage | Uint8Array): Promise<HandReply>;
  /** The frames sent so far (Hello, then Next). */
  readonly sent: Uint8Array[];
}

export function handSession(send: Send, user: string, sessionKey: Uint8Array, rng: (n: number) => Uint8Array = defaultRng): HandSession {
  const s = new DeviceSession(fastX25519(), user, sessionKey, rng);
  const sent: Uint8Array[] = [];
  const inner = (m: DeviceMessage | Uint8Array) => (m instanceof Uint8Array ? m : encodeDeviceMessage(m));
  const exchange = async (frame: Uint8Array, open: (b: Uint8Array) => Uint8Array): Promise<HandReply> => {
    sent.push(frame);
    const back = await send(frame);
    const f = decodeSessionFrame(back);
    if (f.kind === 'refused') return { frame: back, kind: f.kind, refused: f.code };
    const bytes = open(back);
    return { frame: back, kind: f.kind, inner: bytes, reply: decodeVaultReply(bytes) };
  };
  return {
    sent,
    first: (m) => exchange(s.hello(inner(m)), (b) => s.openWelcome(b)),
    second: (m) => exchange(s.next(inner(m)), (b) => s.openFinal(b)),
  };
}

/** The inner reply of a hand-driven position, or { refused: code }. */
export function innerOf(r: HandReply): VaultReply | { t: 'Refused'; code: string } {
  return r.reply ?? { t: 'Refused', code: r.refused ?? '?' };
}

/** One reply the tap saw: the outer frame, and what it carried inside. */
export interface Tapped {
  user: string;
  /** The request frame and the reply frame, as the relay saw them. */
  request: Uint8Array;
  frame: Uint8Array;
  kind: SessionFrame['kind'];
  /** Inner reply (opened with the device's ephemeral key); absent for a Refused frame. */
  inner?: Uint8Array;
  reply?: VaultReply;
  refused?: string;
  /** The reply did not open under the rebuilt session (altered on the way?). */
  error?: string;
}

export interface SessionTap {
  /** Pass as PasswordOptions.rng: fresh randomness, and the tap remembers the device's ephemeral keys. */
  rng: (n: number) => Uint8Array;
  /** Wraps a send for `user`: every reply is recorded, and opened when it is a Welcome or Final. */
  wrap(send: Send, user: string): Send;
  readonly seen: Tapped[];
  /** Inner replies in the order they came back (Refused frames left out). */
  replies(): VaultReply[];
}

/**
 * Reads the inner replies of sessions run by client/password.ts. It needs the vault's session key
 * pair (to open each Hello and so rebuild the device's handshake) and the device's ephemeral private
 * keys, which it learns by being the device's rng: each 32-byte draw whose X25519 public key is the
 * Hello's ephemeral is that session's. Nothing here is available to a relay.
 */
export function sessionTap(vault: VaultSessionKey, base: (n: number) => Uint8Array = defaultRng): SessionTap {
  const dh = fastX25519();
  const ephemerals = new Map<string, Uint8Array>();
  const sessions = new Map<string, DeviceSession>();
  const seen: Tapped[] = [];
  const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
  return {
    seen,
    rng(n) {
      const out = base(n);
      if (n === 32) ephemerals.set(hex(dh.publicKey(out)), out.slice());
      return out;
    },
    replies: () => seen.flatMap((t) => (t.reply ? [t.reply] : [])),
    wrap(send, user) {
      return async (body) => {
        let req: SessionFrame | { kind: 'not a frame' };
        try {
          req = decodeSessionFrame(body);
        } catch {
          req = { kind: 'not a frame' }; // a test sending garbage: only its reply is recorded
        }
        let s: DeviceSession | undefined;
        if (req.kind === 'hello') {
          // Rebuild the device's end: same ephemeral, same first message, so the same Hello.
          const e = ephemerals.get(hex(req.ephemeral));
          const opened = acceptHello(dh, vault, user, req);
          if (e && opened) {
            s = new DeviceSession(dh, user, vault.publicKey, () => e.slice());
            const again = s.hello(opened.message);
            if (Buffer.compare(Buffer.from(again), Buffer.from(body)) !== 0) throw new Error('session tap: the rebuilt Hello differs');
          }
        } else if (req.kind === 'next') {
          s = sessions.get(hex(req.sid));
          sessions.delete(hex(req.sid));
          s?.next(new Uint8Array(0)); // only moves the copy on: the Final is opened with the transport keys
        }
        const back = await send(body);
        const f = decodeSessionFrame(back);
        const t: Tapped = { user, request: body, frame: back, kind: f.kind };
        if (f.kind === 'refused') t.refused = f.code;
        else if (s) {
          try {
            if (f.kind === 'welcome') {
              t.inner = s.openWelcome(back);
              if (req.kind === 'hello') sessions.set(hex(req.ephemeral), s);
            } else if (f.kind === 'final') {
              t.inner = s.openFinal(back);
            }
          } catch (e) {
            t.error = (e as Error).message;
          }
        }
        if (t.inner) t.reply = decodeVaultReply(t.inner);
        seen.push(t);
        return back;
      };
    },
  };
}
