// The vault's work for one whole password recovery (RecoverStart, the Attempt's commit, RecoverFinish,
// the Outcome's commit, K released), on one real token: the bare firmware speaking the inner protocol
// next to the same firmware behind the device-vault session gate (Noise NK, padding, sealing). Only
// the vault's step() calls are timed; the device's side runs between them, untimed. Subjects alternate
// in short slices so machine noise hits both alike.
import { randomBytes } from 'node:crypto';
import type { Token } from '../hsm-adapter/token.ts';
import { fleetIdentity, DeviceSession } from '../protocol/session.ts';
import { createOpaque, identityKsf, tokenServerSecrets, type Opaque } from '../protocol/opaque/index.ts';
import { fastX25519 } from '../protocol/opaque/group.ts';
import { decodeVaultReply, encodeDeviceMessage, pinOf, type VaultReply } from '../protocol/wire.ts';
import { Firmware, type FirmwareInput, type FirmwareOutput } from '../vault/firmware/firmware.ts';
import { SessionGate } from '../vault/firmware/gate.ts';

const SUITE = 'ristretto255-SHA512' as const;
const USER = 'bench-user';
const PASSWORD = new TextEncoder().encode('bench password');
const rng = (n: number) => new Uint8Array(randomBytes(n));

interface Vault {
  step(i: FirmwareInput): FirmwareOutput[];
}

/** Steps the vault, committing every proposal at once (a log that always succeeds), timing the vault only. */
class Driver {
  index = 0;
  nextId = 1;
  vaultMs = 0;
  constructor(readonly v: Vault) {}
  private run(i: FirmwareInput): FirmwareOutput[] {
    const t0 = performance.now();
    let out = this.v.step(i);
    for (let k = 0; k < out.length; k++) {
      const o = out[k]!;
      if (o.kind === 'propose') out = out.concat(this.v.step({ kind: 'committed', index: ++this.index, entry: o.entry }));
    }
    this.vaultMs += performance.now() - t0;
    return out;
  }
  request(user: string, body: Uint8Array): Uint8Array {
    const id = this.nextId++;
    const out = this.run({ kind: 'request', requestId: id, user, body });
    const r = out.find((o) => o.kind === 'reply' && o.requestId === id);
    if (!r || r.kind !== 'reply') throw new Error('no reply');
    return r.body;
  }
}

export interface RecoveryCost {
  /** Vault milliseconds per recovery, bare firmware / behind the session gate. */
  msPerRecovery: { plain: number; session: number };
  recoveries: { plain: number; session: number };
  /** (session - plain) / plain: what the channel adds to the vault's work per recovery. */
  channelOverhead: number;
}

export async function measureRecoveryCost(token: Token, durationMs: number): Promise<RecoveryCost> {
  const opaque = { [SUITE]: await createOpaque({ suite: SUITE }) };
  const client: Opaque = await createOpaque({ suite: SUITE, ksf: identityKsf });
  const akePk = tokenServerSecrets(token, SUITE).akeKeyPair.publicKey;
  const plainFw = new Firmware({ replicaId: 'bench-a', token, opaque, rng, policy: { defaultLimit: 10, maxLimit: 100 } });
  const gate = new SessionGate({ replicaId: 'bench-b', token, opaque, rng, policy: { defaultLimit: 10, maxLimit: 100 } });
  const plain = new Driver(plainFw);
  const sessioned = new Driver(gate);
  const dh = fastX25519();
  const sessionKey = gate.sessionPublicKey();
  const ids = { clientIdentity: new TextEncoder().encode(USER), serverIdentity: fleetIdentity(sessionKey) };
  const k = rng(32);

  // Register the same user on both (untimed).
  const register = (d: Driver, wrap: boolean) => {
    const reg = client.clientStartRegistration(PASSWORD);
    const s = wrap ? new DeviceSession(dh, USER, sessionKey, rng) : null;
    const send = (m: Uint8Array, second: boolean): VaultReply => {
      if (!s) return decodeVaultReply(d.request(USER, m));
      return decodeVaultReply(second ? s.openFinal(d.request(USER, s.next(m))) : s.openWelcome(d.request(USER, s.hello(m))));
    };
    const r1 = send(encodeDeviceMessage({ t: 'RegisterStart', suite: SUITE, request: reg.request, pin: pinOf(akePk) }), false);
    if (r1.t !== 'RegisterResponse') throw new Error(`registration: ${r1.t}`);
    const { record } = client.clientFinishRegistration(reg.state, r1.response, wrap ? ids : {});
    const r2 = send(encodeDeviceMessage({ t: 'RegisterFinish', suite: SUITE, ticket: r1.ticket, record, k, ksf: identityKsf.name }), true);
    if (r2.t !== 'Registered') throw new Error(`registration: ${r2.t}`);
  };
  register(plain, false);
  register(sessioned, true);

  const recover = (d: Driver, wrap: boolean) => {
    const start = client.clientStartLogin(PASSWORD);
    const m1 = encodeDeviceMessage({ t: 'RecoverStart', suite: SUITE, ke1: start.ke1, pin: pinOf(akePk), ksf: identityKsf.name });
    const s = wrap ? new DeviceSession(dh, USER, sessionKey, rng) : null;
    const r1 = decodeVaultReply(s ? s.openWelcome(d.request(USER, s.hello(m1))) : d.request(USER, m1));
    if (r1.t !== 'KE2') throw new Error(`recovery: ${r1.t}`);
    const fin = client.clientFinishLogin(start.state, r1.ke2, wrap ? ids : {});
    const m2 = encodeDeviceMessage({ t: 'RecoverFinish', session: r1.session, ke3: fin.ke3 });
    const r2 = decodeVaultReply(s ? s.openFinal(d.request(USER, s.next(m2))) : d.request(USER, m2));
    if (r2.t !== 'Released') throw new Error(`recovery: ${r2.t}`);
  };

  const counts = { plain: 0, session: 0 };
  // Warm-up, then alternate slices.
  for (let i = 0; i < 30; i++) {
    recover(plain, false);
    recover(sessioned, true);
  }
  plain.vaultMs = 0;
  sessioned.vaultMs = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < durationMs) {
    for (let i = 0; i < 20; i++) recover(plain, false);
    counts.plain += 20;
    for (let i = 0; i < 20; i++) recover(sessioned, true);
    counts.session += 20;
  }
  const msPlain = plain.vaultMs / counts.plain;
  const msSession = sessioned.vaultMs / counts.session;
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  return {
    msPerRecovery: { plain: r3(msPlain), session: r3(msSession) },
    recoveries: counts,
    channelOverhead: Number(((msSession - msPlain) / msPlain).toFixed(3)),
  };
}

export interface ProcessCost {
  /** CPU ms the vault process (vault/main.ts: firmware, gate, token, sealed LMDB log, anchor, HTTP) spent per recovery. */
  cpuMsPerRecovery: number;
  recoveries: number;
}

/**
 * The whole vault's work per recovery: a real vault process on its own token and disk, driven by
 * sequential recoveries over its relay route (this process stands where ChatD stands); its CPU time
 * from /proc. Registration and warm-up are not counted.
 */
export async function measureVaultProcess(stateDir: string, durationMs: number): Promise<ProcessCost> {
  const { startVault, processCpuMs } = await import('../scripts/services.ts');
  const { hopSecret } = await import('../protocol/hop-secret.ts');
  const { VaultForwarder } = await import('../chatd/forward.ts');
  const { enablePassword, recoverK } = await import('../client/password.ts');
  const vault = await startVault({ stateDir });
  const fwd = new VaultForwarder({ vaultUrl: vault.url, timeoutMs: 20_000, relayKey: hopSecret(stateDir, 'relay') });
  try {
    const o = {
      user: USER,
      suite: SUITE,
      ksf: identityKsf,
      serverPublicKey: new Uint8Array(Buffer.from(vault.keys[SUITE], 'hex')),
      sessionKey: new Uint8Array(Buffer.from(vault.keys.session, 'hex')),
    };
    const send = (b: Uint8Array) => fwd.forward(USER, b);
    await enablePassword(send, o, PASSWORD, rng(32), 10);
    for (let i = 0; i < 20; i++) await recoverK(send, o, PASSWORD);
    const c0 = processCpuMs(vault.pid);
    const t0 = performance.now();
    let n = 0;
    while (performance.now() - t0 < durationMs) {
      await recoverK(send, o, PASSWORD);
      n++;
    }
    const c1 = processCpuMs(vault.pid);
    if (c0 === null || c1 === null) throw new Error('no /proc: cannot read the vault process CPU time');
    return { cpuMsPerRecovery: Math.round(((c1 - c0) / n) * 1000) / 1000, recoveries: n };
  } finally {
    fwd.close();
    await vault.stop();
  }
}
