// Replicas as separate OS processes: three `replica-process.ts` processes on loopback, each with its
// own SoftHSM2 token and LMDB directory, Raft between them over TcpTransport (the channel
// handshake on the token identity keys). A device registers and recovers K through a follower's
// relay endpoint; the leader process is SIGKILLed; the two others elect and keep serving with the
// attempt counter intact; the killed replica restarts on its intact disk and catches up.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { enablePassword, recoverK, status, PasswordError, type PasswordOptions } from '../../client/password.ts';
import { identityKsf } from '../../protocol/opaque/index.ts';
import { KeyLabels } from '../../hsm-adapter/token.ts';
import { REPLICA_CONTROL_PATH, parseHostPort, parsePeerFlag, parsePeersFile, resolvePeers } from '../../vault/fleet/process-config.ts';
import { hopSecret } from '../../protocol/hop-secret.ts';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { ReplicaProc, freePorts, stableLeader, waitFor } from './fleet-process-harness.ts';

const ELECTION_MS = '400';
let tf: TestFleet;
let names: string[];
let peerPort: Record<string, number>;
let relayPort: Record<string, number>;
const procs = new Map<string, ReplicaProc>();

function args(name: string, extra: string[] = [], peersFile?: string): string[] {
  const peers = peersFile ? ['--peers', peersFile] : names.filter((n) => n !== name).flatMap((n) => ['--peer', `${n}=127.0.0.1:${peerPort[n]}`]);
  return [
    '--state', tf.stateDir, '--replica', name, '--listen', `127.0.0.1:${peerPort[name]}`, ...peers,
    '--relay-port', String(relayPort[name]), '--election-ms', ELECTION_MS, '--request-ttl-ms', '4000', ...(process.env.BKV_DEBUG ? [] : ['--quiet']), ...extra,
  ];
}

async function start(name: string, extra: string[] = [], peersFile?: string): Promise<ReplicaProc> {
  const p = await ReplicaProc.start(name, args(name, extra, peersFile));
  procs.set(name, p);
  return p;
}

beforeAll(async () => {
  tf = await provisionTestFleet({ replicas: 3 });
  names = tf.replicas.map((r) => r.name);
  const ports = await freePorts(6);
  peerPort = Object.fromEntries(names.map((n, i) => [n, ports[i]!]));
  relayPort = Object.fromEntries(names.map((n, i) => [n, ports[3 + i]!]));
});

afterAll(async () => {
  await ReplicaProc.killAll();
  await tf?.cleanup();
});

describe('replicas as processes over TCP', () => {
  it('refuses bad flags and a peer the manifest does not know, with a typed code and exit 2', async () => {
    const r1 = await ReplicaProc.run(['--state', tf.stateDir, '--replica', names[0]!, '--peer', 'nowhere']);
    expect(r1.code).toBe(2);
    expect(r1.stderr).toContain('BAD_PEER');
    const r2 = await ReplicaProc.run(['--state', tf.stateDir, '--replica', names[0]!, '--peer', 'mallory=127.0.0.1:9']);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toContain('UNKNOWN_REPLICA');
    expect(r1.stdout + r2.stdout).not.toContain('READY');
  });

  it('checks addresses, peers files and pinned keys against the manifest', () => {
    const code = (f: () => unknown) => { try { f(); } catch (e) { return (e as { code?: string }).code; } return 'no error'; };
    expect(parseHostPort('[::1]:7000', 'x')).toEqual({ host: '::1', port: 7000 });
    for (const bad of ['127.0.0.1', '127.0.0.1:0', ':80', 'a b:80', '127.0.0.1:65536', '127.0.0.1:8x']) expect(code(() => parseHostPort(bad, 'x'))).toBe('BAD_ADDRESS');
    expect(parseHostPort('127.0.0.1:0', 'x', true).port).toBe(0);
    expect(code(() => parsePeerFlag('=127.0.0.1:1'))).toBe('BAD_PEER');
    const file = join(tf.stateDir, 'peers-bad.json');
    const write = (o: unknown) => { writeFileSync(file, typeof o === 'string' ? o : JSON.stringify(o)); return file; };
    expect(code(() => parsePeersFile(write('{not json')))).toBe('BAD_PEERS_FILE');
    expect(code(() => parsePeersFile(write({ version: 2, peers: {} })))).toBe('BAD_PEERS_FILE');
    expect(code(() => parsePeersFile(write({ version: 1, peers: { [names[1]!]: { host: '127.0.0.1', port: 1, extra: 1 } } })))).toBe('BAD_PEERS_FILE');
    expect(code(() => parsePeersFile(write({ version: 1, peers: { [names[1]!]: { host: '127.0.0.1', port: 1, identityKey: 'abcd' } } })))).toBe('BAD_PEERS_FILE');
    // A key that is a real replica's, but not the one the manifest pins for that name.
    const otherKey = Buffer.from(tf.openToken(tf.replicas[2]!.tokenLabel).publicKey(KeyLabels.replicaIdentity)).toString('hex');
    const swapped = parsePeersFile(write({ version: 1, peers: { [names[1]!]: { host: '127.0.0.1', port: 1, identityKey: otherKey } } }));
    expect(code(() => resolvePeers(tf.state, names[0]!, swapped))).toBe('IDENTITY_MISMATCH');
    const ok = resolvePeers(tf.state, names[2]!, parsePeersFile(write({ version: 1, peers: { [names[0]!]: { host: '127.0.0.1', port: 1 }, [names[1]!]: { host: 'localhost', port: 2 } } })));
    expect(ok.voters).toEqual(names);
    expect(Buffer.from(ok.pins.get(names[2]!)!).toString('hex')).toBe(otherKey);
    expect(code(() => resolvePeers(tf.state, names[0]!, [parsePeerFlag(`${names[0]}=127.0.0.1:1`)]))).toBe('DUPLICATE_REPLICA');
  });

  it('elects, serves through a follower, survives a SIGKILLed leader, and the restarted replica catches up', async () => {
    // Started only now: the tests above open tokens in this process, which must not race the replicas' own use.
    await Promise.all(names.map((n) => start(n)));
    // Every process serves the same fleet AKE key, printed at READY: that is what the device pins.
    const ake = new Set(names.map((n) => procs.get(n)!.values.get('VAULT_AKE_PUBLIC_KEY_ristretto255_SHA512')));
    expect(ake.size).toBe(1);
    const sessionKeys = new Set(names.map((n) => procs.get(n)!.values.get('VAULT_AKE_PUBLIC_KEY_session')));
    expect(sessionKeys.size).toBe(1);
    const opts = (user: string): PasswordOptions => ({
      user, ksf: identityKsf, serverPublicKey: new Uint8Array(Buffer.from([...ake][0]!, 'hex')), sessionKey: new Uint8Array(Buffer.from([...sessionKeys][0]!, 'hex')),
    });

    const first = await stableLeader([...procs.values()]);
    const follower = [...procs.values()].find((p) => p !== first.leader)!;
    const k = new Uint8Array(randomBytes(32));
    await enablePassword(follower.send('alice'), opts('alice'), 'correct horse', k, 5);
    expect(Buffer.from(await recoverK(follower.send('alice'), opts('alice'), 'correct horse')).equals(Buffer.from(k))).toBe(true);
    for (const left of [4, 3]) {
      const e = await recoverK(follower.send('alice'), opts('alice'), 'wrong').catch((x: unknown) => x);
      expect(e).toBeInstanceOf(PasswordError);
      expect((e as PasswordError).code).toBe('WRONG_PASSWORD');
      expect((e as PasswordError).attemptsLeft).toBe(left);
    }
    // Started without --faults: no door for token or clock faults, whatever key is shown.
    const noFaults = await fetch(follower.relayUrl + REPLICA_CONTROL_PATH, { method: 'POST', body: '{"v":1,"t":"clock","rate":1,"offsetMs":0}', headers: { authorization: `Bearer ${hopSecret(tf.stateDir, 'operator')}` } });
    expect(noFaults.status).toBe(404);
    expect(await noFaults.json()).toMatchObject({ code: 'FAULTS_OFF' });
    // The follower did not serve on its own: it forwarded to the leader, over authenticated TCP.
    const fs = (await follower.status())!;
    expect(fs.role).toBe('follower');
    expect(fs.stats!.forwardedOut).toBeGreaterThanOrEqual(7);
    expect(fs.stats!.handshakes).toBeGreaterThanOrEqual(4);
    expect(await status(follower.send('alice'), opts('alice'))).toEqual({ state: 'registered', attemptsLeft: 3, limit: 5 });

    // Power cut at the leader: no flush, no goodbye.
    const dead = first.leader;
    const killedAt = Date.now();
    expect((await dead.kill('SIGKILL')).signal).toBe('SIGKILL');
    const survivors = [...procs.values()].filter((p) => p !== dead);
    const second = await stableLeader(survivors);
    expect(second.term).toBeGreaterThan(first.term);
    expect(second.leader).not.toBe(dead);
    const electedMs = Date.now() - killedAt;
    for (const p of survivors) {
      expect(await status(p.send('alice'), opts('alice'))).toEqual({ state: 'registered', attemptsLeft: 3, limit: 5 });
    }
    const e = await recoverK(survivors[0]!.send('alice'), opts('alice'), 'still wrong').catch((x: unknown) => x);
    expect((e as PasswordError).attemptsLeft).toBe(2);

    // The killed replica comes back on its disk, as a non-voter until it has caught up. This time its
    // peers come from a peers file carrying the identity keys they printed (as across hosts, where
    // the other tokens are not at hand).
    const peersFile = join(tf.stateDir, 'peers.json');
    writeFileSync(peersFile, JSON.stringify({
      version: 1,
      peers: Object.fromEntries(survivors.map((p) => [p.name, { host: '127.0.0.1', port: peerPort[p.name], identityKey: p.values.get('REPLICA_IDENTITY_KEY') }])),
    }));
    const startedAt = Date.now();
    const back = await start(dead.name, ['--faults'], peersFile);
    const readyMs = Date.now() - startedAt;
    // With --faults it takes control bodies, with the operator key only, and checks them.
    const control = (body: string, key: string) => fetch(back.relayUrl + REPLICA_CONTROL_PATH, { method: 'POST', body, headers: { authorization: `Bearer ${key}` } });
    const operator = hopSecret(tf.stateDir, 'operator');
    expect((await control('{"v":1,"t":"clock","rate":1,"offsetMs":0}', back.relayKey)).status).toBe(401);
    for (const bad of ['{"v":1,"t":"clock","rate":0,"offsetMs":0}', '{"v":2,"t":"clock","rate":1,"offsetMs":0}', '{"v":1,"t":"token","failureRate":0.5}', 'nope']) {
      const r = await control(bad, operator);
      expect(r.status, bad).toBe(400);
      expect(await r.json()).toMatchObject({ code: 'BAD_PROCESS_MESSAGE' });
    }
    expect((await control('{"v":1,"t":"token","failureRate":0,"latencyRate":0,"latencyMs":[1,2]}', operator)).status).toBe(200);
    const leaderNow = second.leader;
    const caught = await waitFor('the restarted replica to catch up', async () => {
      const [b, l] = await Promise.all([back.status(), leaderNow.status()]);
      if (!b || !l || l.role !== 'leader') return undefined;
      return b.role === 'follower' && b.leader === l.name && b.appliedIndex === l.appliedIndex && b.digest === l.digest ? b : undefined;
    }, 30_000);
    expect(caught.healthy).toBe(true);
    if (process.env.BKV_DEBUG) console.log(JSON.stringify({ electedMs, restartReadyMs: readyMs, caughtUpMs: Date.now() - startedAt }));
    // It serves again, with the charge made while it was dead, then a correct password resets the counter everywhere.
    expect(await status(back.send('alice'), opts('alice'))).toEqual({ state: 'registered', attemptsLeft: 2, limit: 5 });
    expect(Buffer.from(await recoverK(back.send('alice'), opts('alice'), 'correct horse')).equals(Buffer.from(k))).toBe(true);
    for (const p of procs.values()) {
      expect(await status(p.send('alice'), opts('alice'))).toEqual({ state: 'registered', attemptsLeft: 5, limit: 5 });
    }
    const digests = await waitFor('the three replicas to converge', async () => {
      const st = await Promise.all([...procs.values()].map((p) => p.status()));
      if (st.some((s) => !s) || new Set(st.map((s) => s!.appliedIndex)).size !== 1) return undefined;
      return new Set(st.map((s) => s!.digest));
    });
    expect(digests.size).toBe(1);
  });

  it('shuts down cleanly on SIGTERM (exit 0), and with --exit-with-stdin when its supervisor goes away', async () => {
    const codes = await Promise.all([...procs.values()].map((p) => p.stop()));
    for (const c of codes) expect(c).toEqual({ code: 0, signal: null });
    const alone = await ReplicaProc.start(names[0]!, args(names[0]!, ['--exit-with-stdin']), { stdin: 'pipe' });
    alone.proc.stdin!.end();
    expect(await alone.exited).toEqual({ code: 0, signal: null });
  });
});
