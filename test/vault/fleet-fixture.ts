// Shared set-up for the threaded fleet tests: a provisioned SoftHSM2 fleet, startFleet on it (real
// worker threads, real tokens, real LMDB), and a device-side `send` through the fleet's HTTP front
// exactly as ChatD relays (optionally entering at a chosen replica).
import { decodeRelayReply, encodeRelayRequest, RELAY_PATH } from '../../protocol/relay.ts';
import { identityKsf } from '../../protocol/opaque/index.ts';
import type { PasswordOptions, Send } from '../../client/password.ts';
import { startFleet, REGION_HEADER, type Fleet, type StartFleetOptions } from '../../vault/fleet/fleet.ts';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';

export interface FleetFixture {
  tf: TestFleet;
  fleet: Fleet;
  send(user: string, at?: string): Send;
  opts(user: string): PasswordOptions;
  /** opts() as a real device runs: it resends a frame the fleet could not place yet (5xx). */
  deviceOpts(user: string): PasswordOptions;
  waitFor<T>(what: string, f: () => Promise<T | undefined | false>, timeoutMs?: number): Promise<T>;
  /** The leader once one is elected and every listed replica agrees on it. */
  stableLeader(among?: string[]): Promise<string>;
  /**
   * The whole fleet killed at once (every replica crashed, as kill -9 of the fleet process tree) and
   * started again on the same state: all its replicas, or only `replicas` (the rest stay dark).
   */
  wholeFleetRestart(replicas?: string[]): Promise<void>;
  close(): Promise<void>;
}

export class RelayFailure extends Error {
  constructor(readonly code: string, readonly status: number) { super(`relay failed: ${code} (${status})`); }
}

export async function startFleetFixture(replicas: number, o: Partial<StartFleetOptions> = {}, f: { spares?: number } = {}): Promise<FleetFixture> {
  const tf = await provisionTestFleet({ replicas, spares: f.spares });
  let fleet: Fleet;
  const start = (names?: string[]) => startFleet({
    stateDir: tf.stateDir, wan: 'none', electionTimeoutMs: 300,
    policy: { requestTtlMs: 4000 },
    onEvent: process.env.BKV_DEBUG ? (e) => console.error(`[${Date.now() % 100000}] ${JSON.stringify(e)}`) : undefined,
    ...o,
    ...(names ? { replicas: names } : {}),
  });
  try {
    fleet = await start();
  } catch (e) {
    await tf.cleanup();
    throw e;
  }
  const waitFor = async <T>(what: string, f: () => Promise<T | undefined | false>, timeoutMs = 15_000): Promise<T> => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const v = await f();
      if (v !== undefined && v !== false) return v as T;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };
  const opts = (user: string): PasswordOptions => ({
    user, ksf: identityKsf,
    serverPublicKey: new Uint8Array(Buffer.from(fleet.akePublicKeys()['ristretto255-SHA512']!, 'hex')),
    sessionKey: new Uint8Array(Buffer.from(fleet.akePublicKeys().session!, 'hex')),
  });
  return {
    tf,
    get fleet() { return fleet; },
    async wholeFleetRestart(names) {
      for (const s of await fleet.status()) if (s.role !== 'down') await fleet.crash(s.name);
      await fleet.close();
      fleet = await start(names);
    },
    send: (user, at) => async (body) => {
      const res = await fetch(fleet.url + RELAY_PATH, {
        method: 'POST', body: encodeRelayRequest({ user, body }), headers: at ? { [REGION_HEADER]: at } : {},
      });
      const reply = decodeRelayReply(new Uint8Array(await res.arrayBuffer()));
      if (!reply.ok) throw new RelayFailure(reply.code, res.status);
      return reply.body;
    },
    opts,
    deviceOpts(user) {
      return { ...opts(user), retry: { attempts: 6, delayMs: 200, retryable: (e) => e instanceof RelayFailure && e.status >= 500 } };
    },
    waitFor,
    stableLeader: (among) => waitFor('a stable leader', async () => {
      const st = await fleet.status();
      const live = st.filter((s) => (among ? among.includes(s.name) : s.role !== 'down'));
      const leaders = live.filter((s) => s.role === 'leader');
      if (leaders.length !== 1) return undefined;
      const l = leaders[0]!;
      return live.every((s) => s.leader === l.name && s.term === l.term) && l.commitIndex > 1 ? l.name : undefined;
    }),
    async close() {
      await fleet.close();
      await tf.cleanup();
    },
  };
}
