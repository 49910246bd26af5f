// The secure channel over the MessagePort transport, as every fleet replica runs it: real tokens
// sign the handshakes against pinned identities. Altered frames, frames from an unpinned token and
// garbage are refused and counted; nothing refused is delivered; a restarted peer is re-keyed.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyLabels, type Token } from '../../hsm-adapter/token.ts';
import { SecureTransport } from '../../vault/fleet/secure-transport.ts';
import { PortTransport, createPortFleet } from '../../vault/fleet/transport-port.ts';
import type { MessageHandler, PeerTransport, TransportStats } from '../../vault/fleet/transport.ts';
import { noneWanConfig } from '../../vault/fleet/wan.ts';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';

let tf: TestFleet;
let tokens: Token[];
beforeAll(async () => {
  tf = await provisionTestFleet({ replicas: 3 });
  tokens = tf.replicas.map((r) => tf.openToken(r.tokenLabel));
});
afterAll(async () => { await tf?.cleanup(); });

/** Wraps a real transport and lets the test rewrite what it sends (the hostile network). */
class Tamper implements PeerTransport {
  rewrite?: (b: Uint8Array) => Uint8Array;
  constructor(readonly inner: PeerTransport) {}
  get self() { return this.inner.self; }
  send(to: string, b: Uint8Array): void { this.inner.send(to, this.rewrite ? this.rewrite(b) : b); }
  onMessage(cb: MessageHandler): void { this.inner.onMessage(cb); }
  close(): Promise<void> { return this.inner.close(); }
  stats(): TransportStats { return this.inner.stats(); }
}

const until = async (f: () => boolean, ms = 5000) => {
  const end = Date.now() + ms;
  while (!f()) { if (Date.now() > end) throw new Error('timed out'); await new Promise((r) => setTimeout(r, 10)); }
};

describe('SecureTransport over MessagePorts', () => {
  it('delivers authentic messages, refuses altered and forged ones, re-keys a restarted peer', async () => {
    const [a, b, c] = tf.replicas.map((r) => r.name) as [string, string, string];
    const pins = new Map([[a, tokens[0]!.publicKey(KeyLabels.replicaIdentity)], [b, tokens[1]!.publicKey(KeyLabels.replicaIdentity)]]);
    const pf = createPortFleet({ config: noneWanConfig(), nodes: [a, b, c].map((n) => ({ name: n, region: n })), seed: 1 });
    const ta = new Tamper(new PortTransport(pf.endpoints[a]!));
    const sa = new SecureTransport(ta, { fleetId: 'f', token: tokens[0]!, pins });
    const sb = new SecureTransport(new PortTransport(pf.endpoints[b]!), { fleetId: 'f', token: tokens[1]!, pins });
    // c holds a real token, but its identity is not pinned by a or b.
    const sc = new SecureTransport(new PortTransport(pf.endpoints[c]!), {
      fleetId: 'f', token: tokens[2]!, pins: new Map([...pins, [c, tokens[2]!.publicKey(KeyLabels.replicaIdentity)]]),
    });
    const got: string[] = [];
    sb.onMessage((from, m) => got.push(`${from}:${Buffer.from(m).toString()}`));
    try {
      sa.send(b, Buffer.from('one'));
      await until(() => got.length === 1);
      expect(got).toEqual([`${a}:one`]);

      // Flip one ciphertext bit of every data frame: refused, nothing delivered.
      ta.rewrite = (x) => { const y = new Uint8Array(x); if (y[0] === 0 && y[2] === 4) y[y.length - 20]! ^= 1; return y; };
      sa.send(b, Buffer.from('two'));
      await until(() => (sb.stats().dropped.CHANNEL_AUTH_FAILED ?? 0) >= 1);
      ta.rewrite = undefined;
      sa.send(b, Buffer.from('three'));
      await until(() => got.length === 2);
      expect(got).toEqual([`${a}:one`, `${a}:three`]);

      // An unpinned replica cannot open a channel to b, so nothing it sends is delivered.
      sc.send(b, Buffer.from('forged'));
      await until(() => (sb.stats().dropped.CHANNEL_UNKNOWN_PEER ?? 0) >= 1);
      // Garbage on the link.
      ta.rewrite = () => new Uint8Array([0, 1, 4, 9, 9]);
      sa.send(b, Buffer.from('x'));
      await until(() => Object.keys(sb.stats().dropped).some((k) => k === 'CHANNEL_MALFORMED' || k === 'CHANNEL_STATE'));
      ta.rewrite = undefined;
      expect(got).toEqual([`${a}:one`, `${a}:three`]);

      // b "restarts": a new transport with no sessions. a's old keys are useless to it; the
      // no-session hint makes a dial again and traffic flows.
      await sb.close();
      const pf2 = createPortFleet({ config: noneWanConfig(), nodes: [a, b].map((n) => ({ name: n, region: n })), seed: 2 });
      (ta.inner as PortTransport).replacePort(b, pf2.endpoints[a]!.ports[b]!);
      const sb2 = new SecureTransport(new PortTransport(pf2.endpoints[b]!), { fleetId: 'f', token: tokens[1]!, pins });
      const got2: string[] = [];
      sb2.onMessage((from, m) => got2.push(`${from}:${Buffer.from(m).toString()}`));
      await new Promise((r) => setTimeout(r, 350));
      const deadline = Date.now() + 5000;
      while (got2.length === 0 && Date.now() < deadline) { sa.send(b, Buffer.from('again')); await new Promise((r) => setTimeout(r, 50)); }
      expect(got2[0]).toBe(`${a}:again`);
      await sb2.close();
    } finally {
      await sa.close(); await sb.close(); await sc.close();
    }
  });
});
