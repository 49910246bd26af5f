// From ChatD's position, with the real CLI: a proxy between `bkv backup ... --chatd URL` and the real
// ChatD (itself in front of the real vault process) records every body both ways, and can flip a byte
// of any reply. Nothing it records decodes as a device message or a vault reply; every flipped reply
// makes the CLI fail (non-zero exit) and restore nothing.
import { existsSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHATD_HTTP_PATH } from '../../protocol/device-frames.ts';
import { decodeDeviceMessage, decodeVaultReply } from '../../protocol/wire.ts';
import { cli, makeChats, startRig, treeDigest, writeSecret, type Rig } from './fixture.ts';

interface Exchange {
  request: Uint8Array;
  reply: Uint8Array;
  status: number;
}

/** An HTTP proxy standing where ChatD's address is: records, and flips byte `at` of reply number `reply`. */
class Proxy {
  readonly seen: Exchange[] = [];
  flip: { reply: number; at: number } | null = null;
  private n = 0;
  private server!: http.Server;
  url = '';
  constructor(private readonly target: string) {}
  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', async () => {
        const body = Buffer.concat(chunks);
        const up = await fetch(new URL(req.url ?? '/', this.target), {
          method: req.method,
          headers: { authorization: req.headers.authorization ?? '', 'content-type': 'application/octet-stream' },
          body: req.method === 'POST' ? body : undefined,
        });
        let reply = new Uint8Array(await up.arrayBuffer());
        const n = this.n++;
        if (req.url === CHATD_HTTP_PATH) this.seen.push({ request: new Uint8Array(body), reply: reply.slice(), status: up.status });
        if (this.flip && this.flip.reply === n && up.status === 200) {
          reply = reply.slice();
          reply[this.flip.at % reply.length]! ^= 0x01;
        }
        res.writeHead(up.status, { 'content-type': up.headers.get('content-type') ?? 'application/octet-stream', 'content-length': reply.length });
        res.end(reply);
      });
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
  }
  reset(flip: Proxy['flip'] = null): void {
    this.flip = flip;
    this.n = 0;
    this.seen.length = 0;
  }
  close(): Promise<void> {
    return new Promise((r) => {
      this.server.close(() => r());
      this.server.closeAllConnections();
    });
  }
}

let rig: Rig;
let proxy: Proxy;
let dev: (extra?: string[]) => string[];
let pw: string;
let chats: string;

beforeAll(async () => {
  // Dozens of restores in a row from one account: ChatD's per-account rate limit is not under test.
  rig = await startRig({ chatdArgs: ['--account-burst', '10000', '--account-rate', '10000', '--address-burst', '10000', '--address-rate', '10000'] });
  proxy = new Proxy(rig.chatd.url);
  await proxy.start();
  const a = await rig.account('+15557770001');
  pw = writeSecret(rig.dir, 'pw', 'a proxy cannot read this');
  chats = join(rig.dir, 'chats');
  makeChats(chats);
  dev = (extra = []) => ['--token-file', a.tokenFile, '--state', rig.stateDir, '--chatd', proxy.url, '--ksf', 'identity', ...extra];
}, 120_000);

afterAll(async () => {
  await proxy?.close();
  await rig?.cleanup();
});

describe('bkv backup through a recording, flipping proxy in front of ChatD', () => {
  it('what the proxy records never decodes as a device message or a vault reply', async () => {
    proxy.reset();
    expect((await cli(['backup', 'enable-password', '--password-file', pw, ...dev()])).status).toBe(0);
    expect((await cli(['backup', 'create', '--in', chats, '--password-file', pw, ...dev()])).status).toBe(0);
    const out = join(rig.dir, 'restored-ok');
    expect((await cli(['backup', 'restore', '--out', out, '--password-file', pw, ...dev()])).status).toBe(0);
    expect(treeDigest(out)).toEqual(treeDigest(chats));
    expect(proxy.seen.length).toBeGreaterThanOrEqual(8);
    for (const x of proxy.seen) {
      expect(() => decodeDeviceMessage(x.request)).toThrow();
      expect(() => decodeVaultReply(x.reply)).toThrow();
    }
  });

  it('a flipped byte in any reply of a restore: non-zero exit, nothing restored', async () => {
    // How many replies a restore takes (Status, then RecoverStart / RecoverFinish).
    proxy.reset();
    const probe = join(rig.dir, 'restored-probe');
    expect((await cli(['backup', 'restore', '--out', probe, '--password-file', pw, ...dev()])).status).toBe(0);
    const replies = proxy.seen.map((x) => x.reply.length);
    expect(replies.length).toBeGreaterThanOrEqual(3);
    mkdirSync(join(rig.dir, 'flips'), { recursive: true });
    let runs = 0;
    for (let r = 0; r < replies.length; r++) {
      for (const at of [0, 1, 2, 33, Math.floor(replies[r]! / 2), replies[r]! - 1]) {
        proxy.reset({ reply: r, at });
        const out = join(rig.dir, 'flips', `r${r}-b${at}`);
        const res = await cli(['backup', 'restore', '--out', out, '--password-file', pw, ...dev()]);
        expect(res.status, `reply ${r} byte ${at}: ${res.err.trim().split('\n').pop()}`).not.toBe(0);
        expect(existsSync(out), `reply ${r} byte ${at} restored something`).toBe(false);
        runs++;
      }
    }
    expect(runs).toBeGreaterThanOrEqual(18);
    // The vault was never fooled either: the right password still restores afterwards.
    proxy.reset();
    const after = join(rig.dir, 'restored-after');
    const last = await cli(['backup', 'restore', '--out', after, '--password-file', pw, ...dev()]);
    expect(last.status, last.err).toBe(0);
    expect(treeDigest(after)).toEqual(treeDigest(chats));
  }, 240_000);
});
