// The vault process over HTTP: vault/main.ts started as a real child process on a provisioned state
// directory, spoken to through the relay envelope exactly as ChatD does; and the 503 of an unhealthy
// replica.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK, status, type Send } from '../../client/password.ts';
import { identityKsf } from '../../protocol/opaque/index.ts';
import { decodeSessionFrame } from '../../protocol/session.ts';
import { RELAY_PATH, decodeRelayReply, encodeRelayRequest } from '../../protocol/relay.ts';
import { bearer, hopSecret } from '../../protocol/hop-secret.ts';
import { Replica } from '../../vault/agent/replica.ts';
import { startVaultServer } from '../../vault/agent/server.ts';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';

const root = join(import.meta.dirname, '../..');
let fleet: TestFleet;
let child: ChildProcess | undefined;
let out = '';
let err = '';

beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 2 });
});
afterAll(async () => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  await fleet?.cleanup();
});

/** ChatD's side of the hop: the relay envelope, with the relay key of the state directory. */
function relaySend(url: string, user: string): Send {
  return async (body) => {
    const res = await fetch(url + RELAY_PATH, { method: 'POST', body: encodeRelayRequest({ user, body }), headers: { authorization: bearer(hopSecret(fleet.stateDir, 'relay')) } });
    const reply = decodeRelayReply(new Uint8Array(await res.arrayBuffer()));
    if (!reply.ok) throw Object.assign(new Error(reply.message), { code: reply.code, status: res.status });
    return reply.body;
  };
}

describe('vault/main.ts', () => {
  it('serves register and recover over the relay route, then shuts down cleanly on SIGTERM', async () => {
    child = spawn(process.execPath, ['bin/run.js', 'vault/main.ts', '--state', fleet.stateDir, '--port', '0'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    const url = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`vault did not start: ${err}`)), 60_000);
      child!.stdout!.on('data', () => {
        const m = /VAULT_URL=(\S+)/.exec(out);
        if (m && /VAULT_AKE_PUBLIC_KEY_ristretto255_SHA512=/.test(out) && /VAULT_AKE_PUBLIC_KEY_session=[0-9a-f]{64}\n/.test(out)) {
          clearTimeout(t);
          resolve(m[1]!);
        }
      });
      child!.once('exit', () => reject(new Error(`vault exited: ${err}`)));
    });
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const pinned = Buffer.from(/VAULT_AKE_PUBLIC_KEY_ristretto255_SHA512=([0-9a-f]+)/.exec(out)![1]!, 'hex');
    // The session key is printed with the AKE keys: both are what a device pins.
    const sessionHex = /VAULT_AKE_PUBLIC_KEY_session=([0-9a-f]{64})\b/.exec(out)?.[1];
    expect(sessionHex).toBeDefined();
    const opts = { user: 'ivy', ksf: identityKsf, serverPublicKey: new Uint8Array(pinned), sessionKey: new Uint8Array(Buffer.from(sessionHex!, 'hex')) };
    const k = new Uint8Array(randomBytes(32));
    const password = 'relay route password';
    await enablePassword(relaySend(url, 'ivy'), opts, password, k);
    expect(Buffer.from(await recoverK(relaySend(url, 'ivy'), opts, password)).equals(Buffer.from(k))).toBe(true);
    await expect(recoverK(relaySend(url, 'ivy'), opts, 'nope')).rejects.toMatchObject({ code: 'WRONG_PASSWORD', attemptsLeft: 9 });
    expect(await status(relaySend(url, 'ivy'), opts)).toMatchObject({ state: 'registered', attemptsLeft: 9 });

    const relayKey = { authorization: bearer(hopSecret(fleet.stateDir, 'relay')) };
    const bad = await fetch(url + RELAY_PATH, { method: 'POST', body: new Uint8Array([1, 2, 3]), headers: relayKey });
    expect(bad.status).toBe(400);
    expect(decodeRelayReply(new Uint8Array(await bad.arrayBuffer()))).toMatchObject({ ok: false, code: 'BAD_RELAY_MESSAGE' });
    // Without the relay key nothing reaches the replica, not even a well-formed envelope.
    const anon = await fetch(url + RELAY_PATH, { method: 'POST', body: encodeRelayRequest({ user: 'ivy', body: new Uint8Array(8) }) });
    expect(anon.status).toBe(401);
    expect(decodeRelayReply(new Uint8Array(await anon.arrayBuffer()))).toMatchObject({ ok: false, code: 'UNAUTHORIZED' });
    // Not a session frame: the vault answers with an unauthenticated refusal, never an outcome.
    const notFrame = await relaySend(url, 'ivy')(new Uint8Array([0x80]));
    expect(decodeSessionFrame(notFrame)).toEqual({ kind: 'refused', code: 'BAD_SESSION_FRAME' });
    // Only the health route is open without the relay key; with it, unknown routes are 404.
    expect((await fetch(url + '/nope')).status).toBe(401);
    expect((await fetch(url + '/nope', { headers: relayKey })).status).toBe(404);
    expect(await (await fetch(url + '/v1/health')).json()).toMatchObject({ healthy: true });

    const exit = new Promise<number | null>((resolve) => child!.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exit).toBe(0);
    for (const s of [Buffer.from(k).toString('hex'), password, Buffer.from(k).toString('base64')]) {
      expect(out + err).not.toContain(s);
    }
  });

  it('rejects bad flags with exit code 2', async () => {
    const c = spawn(process.execPath, ['bin/run.js', 'vault/main.ts', '--port', 'x'], { cwd: root, stdio: 'ignore' });
    expect(await new Promise((r) => c.once('exit', r))).toBe(2);
  });
});

describe('an unhealthy replica', () => {
  it('answers 503 with the typed code and serves nothing', async () => {
    const info = fleet.replicas[1]!;
    const token = fleet.openToken(info.tokenLabel);
    const dir = mkdtempSync(join(tmpdir(), 'bkv-vault-503-'));
    try {
      let r = await Replica.open({ replicaId: info.name, token, dbDir: join(dir, 'db'), tickMs: 0 });
      const pinned = r.firmware.serverPublicKey('ristretto255-SHA512');
      const o = { user: 'jo', ksf: identityKsf, serverPublicKey: pinned, sessionKey: r.firmware.sessionPublicKey() };
      await enablePassword((b) => r.handle('jo', b), o, 'pw', new Uint8Array(32).fill(1));
      await r.close();
      rmSync(join(dir, 'db'), { recursive: true, force: true }); // the host loses (or hides) its disk
      r = await Replica.open({ replicaId: info.name, token, dbDir: join(dir, 'db'), tickMs: 0 });
      const server = await startVaultServer(r);
      try {
        const e = await status(relaySend(server.url, 'jo'), o).catch((x) => x);
        expect(e).toMatchObject({ code: 'ROLLBACK_DETECTED', status: 503 });
        const h = await fetch(server.url + '/v1/health');
        expect(h.status).toBe(503);
        expect(await h.json()).toMatchObject({ healthy: false, code: 'ROLLBACK_DETECTED' });
      } finally {
        await server.close();
        await r.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

});

describe('the vault front\'s limits', () => {
  it('cuts a slow client with 408 at its request timeout and closes connections past its cap at once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bkv-front-limits-'));
    try {
      const info = fleet.replicas[1]!;
      const token = fleet.openToken(info.tokenLabel);
      const r = await Replica.open({ replicaId: info.name, token, dbDir: join(dir, 'db'), tickMs: 0 });
      const server = await startVaultServer(r, { relayKey: hopSecret(fleet.stateDir, 'relay'), limits: { requestTimeoutMs: 600, maxConnections: 3 } });
      const { port } = new URL(server.url);
      const open = (first: string) => {
        const t0 = performance.now();
        const sock = connect(Number(port), '127.0.0.1', () => sock.write(first));
        const chunks: Buffer[] = [];
        sock.on('data', (d: Buffer) => { chunks.push(d); });
        sock.on('error', () => undefined);
        return { sock, closed: new Promise<{ ms: number; got: string; body: Uint8Array }>((res) => sock.on('close', () => {
          const all = Buffer.concat(chunks);
          const at = all.indexOf('\r\n\r\n');
          res({ ms: performance.now() - t0, got: all.toString('latin1'), body: new Uint8Array(at < 0 ? [] : all.subarray(at + 4)) });
        })) };
      };
      try {
        // Three slow requests fill the cap; a fourth connection is closed at once, unanswered.
        const auth = bearer(hopSecret(fleet.stateDir, 'relay'));
        const slow = [0, 1, 2].map(() => open(`POST ${RELAY_PATH} HTTP/1.1\r\nhost: x\r\nauthorization: ${auth}\r\ncontent-length: 50\r\n\r\nab`));
        await new Promise((res) => setTimeout(res, 100));
        const extra = await open(`GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n`).closed;
        expect(extra.got).toBe('');
        expect(extra.ms).toBeLessThan(300);
        for (const s of await Promise.all(slow.map((x) => x.closed))) {
          expect(s.got.split('\r\n')[0]).toBe('HTTP/1.1 408 Request Timeout');
          expect(decodeRelayReply(s.body)).toMatchObject({ ok: false, code: 'REQUEST_TIMEOUT' });
          expect(s.ms).toBeGreaterThanOrEqual(590);
          expect(s.ms).toBeLessThan(1000);
        }
        // Freed: the front answers again (this replica's token anchor is ahead of its fresh disk: 503, typed).
        expect(await (await fetch(server.url + '/v1/health')).json()).toHaveProperty('healthy');
      } finally {
        await server.close();
        await r.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
