// Password recovery end to end through ChatD against the Raft fleet (real processes: the fleet with
// its replica threads on their own SoftHSM2 tokens, ChatD; devices over real sockets), with replicas
// crashed: a follower, then the leader between KE2 and KE3. The guess budget is counted from outside
// (KE2 replies reaching the devices) and by the fleet's own status after the failover.
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { provision } from '../../softhsm/provision.ts';
import { finalizeModule } from '../../hsm-adapter/module.ts';
import { AccountStore } from '../../chatd/accounts.ts';
import { identityKsf } from '../../protocol/opaque/index.ts';
import type { PasswordOptions } from '../../client/password.ts';
import { startServices, writeVaultKeys, type FleetService, type FleetStatus, type Services } from '../../scripts/services.ts';
import { DEFAULT_SUITE, PasswordBackupError, PasswordDevice } from '../../scripts/commands/backup-password.ts';
import { ke2Counter } from './fixture.ts';

const REPLICAS = 3;

let dir: string;
let services: Services;
let fleet: FleetService;
const lines: string[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'bkv-e2e-fleet-'));
  const stateDir = join(dir, 'state');
  try {
    await provision({ stateDir, replicas: REPLICAS });
  } finally {
    finalizeModule();
  }
  // Faults on: the test crashes and restarts replicas through the operator listener.
  services = await startServices({ stateDir, fleet: { wan: 'none', faults: true }, onLine: (who, l) => lines.push(`${who} | ${l}`) });
  fleet = services.fleet!;
  writeVaultKeys(stateDir, fleet.keys);
  await waitFor((s) => !!s.leader && s.replicas.every((r) => r.healthy));
}, 120_000);

afterAll(async () => {
  await services?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function waitFor(ok: (s: FleetStatus) => boolean, ms = 20_000): Promise<FleetStatus> {
  const end = Date.now() + ms;
  for (;;) {
    const s = await fleet.status().catch(() => undefined);
    if (s && ok(s)) return s;
    if (Date.now() > end) throw new Error(`fleet never reached the state; last: ${JSON.stringify(s?.replicas)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function device(token: string, user: string, onReply?: PasswordOptions['onReply']): PasswordDevice {
  return new PasswordDevice(
    {
      chatdUrl: services.chatd.url, token, user, suite: DEFAULT_SUITE, ksf: identityKsf,
      serverPublicKey: new Uint8Array(Buffer.from(fleet.keys[DEFAULT_SUITE], 'hex')),
      sessionKey: new Uint8Array(Buffer.from(fleet.keys.session, 'hex')),
    },
    { onReply },
  );
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (e) {
    if (e instanceof PasswordBackupError) return e.code === 'VAULT_REFUSED' ? `VAULT_REFUSED:${e.message}` : e.code;
    throw e;
  }
}

/** What an app does after an outage: try again, a bounded number of times. */
async function withRetries<T>(f: () => Promise<T>, tries = 40): Promise<{ value: T; failures: string[] }> {
  const failures: string[] = [];
  for (;;) {
    try {
      return { value: await f(), failures };
    } catch (e) {
      if (!(e instanceof PasswordBackupError) || failures.length >= tries) throw e;
      if (e.code === 'WRONG_PASSWORD' || e.code === 'LOCKED') throw e;
      failures.push(e.code === 'VAULT_REFUSED' ? e.message : e.code);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

describe('password recovery through ChatD against the fleet', () => {
  it('a device in a data center enters the fleet there: ChatD carries its region hint to the front', async () => {
    const s = await waitFor((x) => !!x.leader && x.replicas.every((r) => r.healthy));
    const follower = s.replicas.find((r) => r.name !== s.leader)!.name;
    const forwarded = (st: FleetStatus, n: string) => Number(st.replicas.find((r) => r.name === n)!.stats?.forwardedOut ?? 0);
    const before = forwarded(s, follower);
    const phone = '+15556660009';
    const { token } = await new AccountStore(join(dir, 'state')).create(phone);
    const id = {
      chatdUrl: services.chatd.url, token, user: phone, suite: DEFAULT_SUITE, ksf: identityKsf,
      serverPublicKey: new Uint8Array(Buffer.from(fleet.keys[DEFAULT_SUITE], 'hex')), sessionKey: new Uint8Array(Buffer.from(fleet.keys.session, 'hex')),
    };
    const there = new PasswordDevice(id, { region: follower });
    // Reads are served where they enter (a read barrier); a registration must reach the leader.
    expect((await there.enable('the password of a device in that data center')).state).toBe('registered');
    there.close();
    // The follower took the registration's requests and passed them to the leader: it was the entry.
    expect(forwarded(await fleet.status(), follower) - before).toBeGreaterThanOrEqual(1);
    // A hint that is not a replica name is refused by ChatD (400), and by the device before sending.
    const res = await fetch(new URL('/v1/vault', services.chatd.url), { method: 'POST', headers: { authorization: `Bearer ${token}`, 'x-bkv-region': '../etc', 'content-type': 'application/octet-stream' }, body: new Uint8Array(8) });
    expect(res.status).toBe(400);
    expect(() => new PasswordDevice(id, { region: 'a b' })).toThrow(/region must be a replica name/);
  });

  it('recovers K with a follower crashed, then with the leader crashed between KE2 and KE3; the attempt count stays exact', async () => {
    // The children's logs (codes and names only, never secrets) say what the fleet did when this fails.
    onTestFailed(() => void process.stderr.write(`fleet ${fleet.running ? 'running' : 'EXITED'}; fleet/ChatD log tail:\n${lines.slice(-40).join('\n')}\n`));
    const phone = '+15556660001';
    const { token } = await new AccountStore(join(dir, 'state')).create(phone);
    const password = 'the password, and only this one';
    const owner = device(token, phone);
    await owner.enable(password);
    const k1 = await owner.recover(password);
    expect(k1).toHaveLength(32);

    // 1. A follower crashes. The two left are a majority: recovery works, nothing to retry.
    const s0 = await fleet.status();
    const follower = s0.replicas.find((r) => r.name !== s0.leader)!.name;
    await fleet.fault({ op: 'crash', replica: follower });
    await waitFor((s) => s.replicas.find((r) => r.name === follower)!.role === 'down');
    const ke2 = ke2Counter();
    const guesser = device(token, phone, ke2.onReply);
    expect(await code(guesser.recover('wrong 1'))).toBe('WRONG_PASSWORD');
    expect(await code(guesser.recover('wrong 2'))).toBe('WRONG_PASSWORD');
    expect(await owner.status()).toMatchObject({ state: 'registered', attemptsLeft: 8 });
    expect(Buffer.from(await owner.recover(password)).equals(Buffer.from(k1))).toBe(true);
    expect(await owner.status()).toMatchObject({ attemptsLeft: 10 });
    // Back on its disk, it rejoins and catches up.
    await fleet.fault({ op: 'restart', replica: follower });
    await waitFor((s) => s.replicas.every((r) => r.healthy && r.role !== 'down' && r.role !== 'rejoining' && r.lag === 0));

    // 2. Two wrong guesses, then the leader dies right after handing out a third KE2.
    expect(await code(guesser.recover('wrong 3'))).toBe('WRONG_PASSWORD');
    expect(await code(guesser.recover('wrong 4'))).toBe('WRONG_PASSWORD');
    let crashed: string | undefined;
    // The device's own view of the replies (opened inside its session), awaited before it goes on.
    const dying = device(token, phone, async (reply) => {
      if (!crashed && reply.t === 'KE2') {
        crashed = (await fleet.status()).leader!;
        await fleet.fault({ op: 'crash', replica: crashed });
      }
    });
    // The KE3 meets a fleet without that leader (or session): it cannot succeed on the first go.
    const first = await code(dying.recover(password));
    expect(first).not.toBe('OK');
    expect(['VAULT_UNAVAILABLE', 'CHATD_TIMEOUT'].includes(first) || first.startsWith('VAULT_REFUSED')).toBe(true);
    const after = await waitFor((s) => !!s.leader && s.leader !== crashed);
    expect(after.replicas.find((r) => r.name === crashed)!.role).toBe('down');
    // The attempt charged before that KE2 left was committed on the majority: it is still counted.
    const { value: st } = await withRetries(() => owner.status());
    expect(st).toMatchObject({ state: 'registered', attemptsLeft: 7 });
    // The user tries again; the surviving majority releases the same K and resets the counter.
    const { value: k2 } = await withRetries(() => dying.recover(password));
    expect(Buffer.from(k2).equals(Buffer.from(k1))).toBe(true);
    expect(await owner.status()).toMatchObject({ attemptsLeft: 10 });
    // The guesser's four KE2s: four wrong guesses, each charged, none lost in the failovers.
    expect(ke2.count()).toBe(4);
    for (const d of [owner, guesser, dying]) d.close();
    writeFileSync(join(dir, 'fleet.log'), lines.join('\n'));
  }, 120_000);
});
