// ChatD never sees K, the password or the OPAQUE session key (design rule 6). Everything ChatD
// receives, sends and logs is captured: the device side of the device<->ChatD hop (HTTP and
// WebSocket), a stand-in proxy between ChatD and the vault process that records both directions
// byte for byte, and ChatD's own log through its injectable logger. No 16-byte window of any secret
// may appear in any of it: raw, hex, base64 at any alignment, printable latin1, or a list of numbers.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { provision } from '../../softhsm/provision.ts';
import { finalizeModule } from '../../hsm-adapter/module.ts';
import { startChatd, type Chatd } from '../../chatd/server.ts';
import type { ChatdLogEntry } from '../../chatd/log.ts';
import { AccountStore } from '../../chatd/accounts.ts';
import { ChatdClient } from '../../client/transport.ts';
import { changePassword, disable, enablePassword, PasswordError, recoverK, status, type PasswordOptions, type Send } from '../../client/password.ts';
import { identityKsf } from '../../protocol/opaque/index.ts';
import { hopSecret } from '../../protocol/hop-secret.ts';
import { FRAME_BYTES } from '../../protocol/session.ts';
import { startVault, type VaultService } from '../../scripts/services.ts';

interface Capture {
  /** Bytes ChatD received or sent, labelled by hop and direction. */
  bytes: { what: string; data: Uint8Array }[];
  log: ChatdLogEntry[];
}

let dir: string;
let vault: VaultService;
let proxy: http.Server;
let chatd: Chatd;
const cap: Capture = { bytes: [], log: [] };

/** Stands between ChatD and the vault: forwards each request unchanged and records both bodies. */
function startProxy(target: string): Promise<{ server: http.Server; url: string }> {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      cap.bytes.push({ what: `chatd->vault ${req.url}`, data: new Uint8Array(body) });
      const up = http.request(new URL(req.url ?? '/', target), { method: req.method, headers: { ...req.headers, host: new URL(target).host } }, (r) => {
        const back: Buffer[] = [];
        r.on('data', (c: Buffer) => back.push(c));
        r.on('end', () => {
          const reply = Buffer.concat(back);
          cap.bytes.push({ what: `vault->chatd ${r.statusCode}`, data: new Uint8Array(reply) });
          res.writeHead(r.statusCode ?? 502, r.headers);
          res.end(reply);
        });
      });
      up.on('error', () => {
        res.writeHead(502);
        res.end();
      });
      up.end(body);
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}` })));
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'bkv-e2e-blind-'));
  try {
    await provision({ stateDir: dir, replicas: 1 });
  } finally {
    finalizeModule();
  }
  vault = await startVault({ stateDir: dir });
  const p = await startProxy(vault.url);
  proxy = p.server;
  // With the relay key of the state, as chatd/main.ts starts it: the vault serves no relay without it.
  chatd = await startChatd({ port: 0, host: '127.0.0.1', vaultUrl: p.url, stateDir: dir, relayKey: hopSecret(dir, 'relay'), log: (e) => cap.log.push(e) });
});

afterAll(async () => {
  await chatd?.close();
  await new Promise<void>((r) => (proxy ? proxy.close(() => r()) : r()));
  await vault?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Every way a 16-byte window of a secret could show up in captured bytes or text. */
function leaks(secrets: { name: string; bytes: Uint8Array }[], captured: { what: string; data: Uint8Array }[], texts: string[]): string[] {
  const found: string[] = [];
  const hex = new Map<string, string>();
  const b64 = new Map<string, string>();
  const latin1 = new Map<string, string>();
  for (const s of secrets) {
    expect(s.bytes.length, `${s.name} must be at least 16 bytes to be checked`).toBeGreaterThanOrEqual(16);
    const buf = Buffer.from(s.bytes);
    for (let i = 0; i + 16 <= buf.length; i++) {
      const w = buf.subarray(i, i + 16);
      for (const c of captured) if (Buffer.from(c.data).indexOf(w) >= 0) found.push(`${s.name}[${i}..] raw in ${c.what}`);
      hex.set(w.toString('hex'), s.name);
      // 12 aligned bytes -> 16 base64 characters; every base64 rendering of the window contains one.
      for (let k = 0; k < 3; k++) b64.set(w.subarray(k, k + 12).toString('base64'), s.name);
      const l = w.toString('latin1');
      if (/^[\x20-\x7e]+$/.test(l)) latin1.set(l, s.name);
    }
  }
  const allText = [...texts, ...captured.map((c) => Buffer.from(c.data).toString('latin1'))];
  for (const text of allText) {
    const lower = text.toLowerCase();
    for (let i = 0; i + 16 <= text.length; i++) {
      const h = hex.get(lower.slice(i, i + 32));
      if (h && i + 32 <= text.length) found.push(`${h} as hex`);
      const b = b64.get(text.slice(i, i + 16));
      if (b) found.push(`${b} as base64`);
      const t = latin1.get(text.slice(i, i + 16));
      if (t) found.push(`${t} as text`);
    }
    for (const m of text.matchAll(/\d{1,3}(?:,\s*\d{1,3}){15,}/g)) {
      const nums = m[0].split(',').map((x) => Number(x.trim()));
      if (nums.some((n) => n > 255)) continue;
      for (let i = 0; i + 16 <= nums.length; i++) {
        const h = hex.get(Buffer.from(nums.slice(i, i + 16)).toString('hex'));
        if (h) found.push(`${h} as numbers`);
      }
    }
  }
  return found;
}

describe('what ChatD sees', () => {
  it('the leak check finds a planted secret (it can fail)', () => {
    const secret = { name: 'planted', bytes: new Uint8Array(randomBytes(40)) };
    const raw = new Uint8Array([1, 2, ...secret.bytes.subarray(3, 25), 9]);
    expect(leaks([secret], [{ what: 'raw', data: raw }], [])).not.toEqual([]);
    expect(leaks([secret], [], [`{"x":"${Buffer.from(secret.bytes.subarray(5, 30)).toString('base64')}"}`])).not.toEqual([]);
    expect(leaks([secret], [], [`{"x":"${Buffer.from(secret.bytes.subarray(2, 20)).toString('hex')}"}`])).not.toEqual([]);
    expect(leaks([secret], [], [JSON.stringify({ x: [...secret.bytes.subarray(1, 19)] })])).not.toEqual([]);
    expect(leaks([secret], [{ what: 'other', data: new Uint8Array(randomBytes(400)) }], ['nothing here'])).toEqual([]);
  });

  it('sees neither K, the passwords nor the session keys during enable, recover, wrong guesses, change, status, disable', async () => {
    const phone = '+15553330001';
    const { token } = await new AccountStore(dir).create(phone);
    const client = new ChatdClient({ url: chatd.url, token });
    const session = await client.openSession();
    const recordHop = (via: string, s: Send): Send => async (b) => {
      cap.bytes.push({ what: `device->chatd ${via}`, data: b });
      const r = await s(b);
      cap.bytes.push({ what: `chatd->device ${via}`, data: r });
      return r;
    };
    const http1 = recordHop('http', (b) => client.request(b));
    const ws = recordHop('ws', (b) => session.request(b));
    const sessionKeys: Uint8Array[] = [];
    const o: PasswordOptions = {
      user: phone,
      serverPublicKey: new Uint8Array(Buffer.from(vault.keys['ristretto255-SHA512'], 'hex')),
      sessionKey: new Uint8Array(Buffer.from(vault.keys.session, 'hex')),
      ksf: identityKsf,
      onSessionKey: (k) => sessionKeys.push(k),
    };
    const k = new Uint8Array(randomBytes(32));
    const pw1 = `first-${randomBytes(18).toString('base64url')}`;
    const pw2 = `second-${randomBytes(18).toString('base64url')}`;
    const wrong = `wrong-${randomBytes(18).toString('base64url')}`;

    await enablePassword(http1, o, pw1, k);
    expect(await recoverK(http1, o, pw1)).toEqual(k);
    expect(await recoverK(ws, o, pw1)).toEqual(k);
    await expect(recoverK(ws, o, wrong)).rejects.toBeInstanceOf(PasswordError);
    await changePassword(ws, o, pw2, await recoverK(http1, o, pw1));
    await expect(recoverK(http1, o, pw1)).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    expect(await recoverK(ws, o, pw2)).toEqual(k);
    expect((await status(http1, o)).state).toBe('registered');
    await disable(ws, o);
    await session.close();
    client.close();

    // The capture really holds the traffic (both hops, both directions, both transports) and the log.
    for (const w of ['device->chatd http', 'device->chatd ws', 'chatd->device http', 'chatd->device ws', 'chatd->vault /v1/relay', 'vault->chatd 200']) {
      expect(cap.bytes.some((c) => c.what === w)).toBe(true);
    }
    // One log entry per device request (19 here: two per session, but one for the lone Status), plus
    // the WebSocket's own events.
    const sent = cap.bytes.filter((c) => c.what.startsWith('device->chatd')).length;
    expect(sent).toBe(19);
    expect(cap.log.filter((e) => e.event === 'request' && e.route !== 'ws:auth').length).toBe(sent);
    // What ChatD relays for the device is session frames only, each of its position's one size.
    const sizes = new Set(Object.values(FRAME_BYTES));
    for (const c of cap.bytes.filter((x) => x.what.startsWith('device->chatd') || x.what.startsWith('chatd->device'))) {
      expect(sizes.has(c.data.length), `${c.what}: ${c.data.length} bytes`).toBe(true);
    }
    // Four logins succeeded (the wrong and the stale password got no session key).
    expect(sessionKeys.length).toBe(4);

    const secrets = [
      { name: 'K', bytes: k },
      ...[pw1, pw2, wrong].map((p, i) => ({ name: `password${i + 1}`, bytes: new TextEncoder().encode(p) })),
      ...sessionKeys.map((s, i) => ({ name: `sessionKey${i + 1}`, bytes: s })),
    ];
    const logText = cap.log.map((e) => JSON.stringify(e));
    expect(leaks(secrets, cap.bytes, logText)).toEqual([]);
  });
});
