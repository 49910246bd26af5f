// A malicious ChatD (tests and `bkv chaos live --malicious-chatd`): it sits where ChatD sits (it holds the relay key and forwards through
// ChatD's own VaultForwarder to a real vault over loopback HTTP) and does to the device's traffic
// whatever a test tells it: record, flip, truncate, drop, delay, replay, reflect, swap users, forge.
import { VaultForwarder } from '../../chatd/forward.ts';
import type { Send } from '../../client/password.ts';

export interface Relayed {
  /** Which way: device -> vault ('up') or vault -> device ('down'). */
  dir: 'up' | 'down';
  /** The account the device speaks for (the one ChatD authenticated). */
  user: string;
  bytes: Uint8Array;
}

/** What the attacker does with one request on its way up: the bytes to forward (and as whom), or a reply of its own. */
export type UpAction = { forward: Uint8Array; as?: string } | { answer: Uint8Array } | { drop: true };

export interface Hooks {
  /** n: the index of this request among the device's requests in the current case (0 = its Hello). */
  up?(bytes: Uint8Array, user: string, n: number): UpAction | Promise<UpAction>;
  /** The vault's reply on its way down: what the device gets instead. */
  down?(bytes: Uint8Array, user: string, n: number): Uint8Array | Promise<Uint8Array>;
}

export class DroppedByChatd extends Error {
  readonly code = 'DROPPED';
  constructor() {
    super('the relay dropped the request');
  }
}

export class MaliciousChatd {
  readonly recorded: Relayed[] = [];
  hooks: Hooks = {};
  private n = 0;
  private readonly forwarder: VaultForwarder;

  constructor(vaultUrl: string, relayKey: string) {
    this.forwarder = new VaultForwarder({ vaultUrl, timeoutMs: 20_000, relayKey });
  }

  /** Starts a new case: fresh hooks, request counter at 0. */
  attack(hooks: Hooks = {}): void {
    this.hooks = hooks;
    this.n = 0;
  }

  /** ChatD's own hop to the vault, untouched (for the attacker's replays and probes). */
  forward(user: string, bytes: Uint8Array): Promise<Uint8Array> {
    return this.forwarder.forward(user, bytes);
  }

  /** The device's transport, as if ChatD had authenticated `user`; `pick` chooses each request's hooks (default: the case's). */
  deviceSend(user: string, pick?: () => Hooks): Send {
    return async (body) => {
      const n = this.n++;
      const hooks = pick ? pick() : this.hooks;
      this.recorded.push({ dir: 'up', user, bytes: body.slice() });
      const act = hooks.up ? await hooks.up(body, user, n) : { forward: body };
      if ('drop' in act) throw new DroppedByChatd();
      let reply: Uint8Array;
      if ('answer' in act) reply = act.answer;
      else {
        // The vault's refusals travel as relay errors; a device sees ChatD's error then, not bytes.
        reply = await this.forwarder.forward(act.as ?? user, act.forward);
      }
      this.recorded.push({ dir: 'down', user, bytes: reply.slice() });
      return hooks.down ? hooks.down(reply, user, n) : reply;
    };
  }

  close(): void {
    this.forwarder.close();
  }
}

/** Whether any 16-byte window of `secret` occurs in `hay`. */
export function containsWindow(hay: Uint8Array, secret: Uint8Array, w = 16): boolean {
  if (secret.length < w) return Buffer.from(hay).includes(Buffer.from(secret));
  const h = Buffer.from(hay);
  for (let i = 0; i + w <= secret.length; i++) if (h.includes(Buffer.from(secret.subarray(i, i + w)))) return true;
  return false;
}

export function flip(b: Uint8Array, i: number, mask = 0x01): Uint8Array {
  const out = b.slice();
  out[i % out.length]! ^= mask;
  return out;
}
