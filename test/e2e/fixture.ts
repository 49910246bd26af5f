// One provisioned fleet, one vault process and one ChatD process per test file, started the way
// `bkv serve` starts them (scripts/services.ts). Devices talk to ChatD over real sockets; the vault
// works on its SoftHSM2 token and LMDB. The KSF is the identity (cheap): these tests exercise the
// vault and the flows, not key stretching.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash, randomBytes } from 'node:crypto';
import { vi } from 'vitest';
import { provision } from '../../softhsm/provision.ts';
import { finalizeModule } from '../../hsm-adapter/module.ts';
import { AccountStore } from '../../chatd/accounts.ts';
import { identityKsf } from '../../protocol/opaque/index.ts';
import type { VaultReply } from '../../protocol/wire.ts';
import type { PasswordOptions, Send } from '../../client/password.ts';
import { startChatdService, startVault, writeVaultKeys, type ChatdService, type VaultService } from '../../scripts/services.ts';
import { DEFAULT_SUITE, PasswordDevice, type DeviceIdentity } from '../../scripts/commands/backup-password.ts';
import { main as bkvMain } from '../../scripts/bkv.ts';

export const BKV = fileURLToPath(new URL('../../bin/bkv.js', import.meta.url));

export interface Rig {
  dir: string;
  stateDir: string;
  vault: VaultService;
  chatd: ChatdService;
  /** Everything the two children wrote to stderr. */
  lines: string[];
  /** A ChatD account; returns its token and a token file. */
  account(phone: string): Promise<{ phone: string; token: string; tokenFile: string }>;
  device(
    a: { phone: string; token: string },
    extra?: { wrapSend?: (s: Send) => Send; onSessionKey?: (k: Uint8Array) => void; onReply?: PasswordOptions['onReply'] },
  ): PasswordDevice;
  /** Stops (SIGTERM) or kills (SIGKILL) the vault and starts it again on the same port and disk. */
  restartVault(how: 'SIGTERM' | 'SIGKILL'): Promise<void>;
  stopVault(how: 'SIGTERM' | 'SIGKILL'): Promise<void>;
  startVaultAgain(): Promise<void>;
  cleanup(): Promise<void>;
}

export async function startRig(opts: { chatdArgs?: string[] } = {}): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'bkv-e2e-'));
  const stateDir = join(dir, 'state');
  try {
    await provision({ stateDir, replicas: 1 });
  } finally {
    finalizeModule(); // the vault process opens the token; this one lets go of the module
  }
  const lines: string[] = [];
  const onLine = (who: string, line: string) => lines.push(`${who} | ${line}`);
  let vault = await startVault({ stateDir, onLine });
  const port = vault.port;
  let chatd: ChatdService;
  try {
    chatd = await startChatdService({ stateDir, vaultUrl: vault.url, extraArgs: opts.chatdArgs, onLine });
  } catch (e) {
    await vault.stop();
    throw e;
  }
  writeVaultKeys(stateDir, vault.keys);
  const store = new AccountStore(stateDir);
  const rig: Rig = {
    dir,
    stateDir,
    get vault() {
      return vault;
    },
    chatd,
    lines,
    async account(phone) {
      const { token } = await store.create(phone);
      const tokenFile = join(dir, `token-${phone.slice(1)}`);
      writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
      return { phone, token, tokenFile };
    },
    device(a, extra = {}) {
      const id: DeviceIdentity = {
        chatdUrl: chatd.url,
        token: a.token,
        user: a.phone,
        serverPublicKey: new Uint8Array(Buffer.from(vault.keys[DEFAULT_SUITE], 'hex')),
        sessionKey: new Uint8Array(Buffer.from(vault.keys.session, 'hex')),
        suite: DEFAULT_SUITE,
        ksf: identityKsf,
      };
      return new PasswordDevice(id, extra);
    },
    async stopVault(how) {
      if (how === 'SIGKILL') {
        vault.kill('SIGKILL');
        await vault.exited;
      } else {
        await vault.stop();
      }
    },
    async startVaultAgain() {
      vault = await startVault({ stateDir, port, onLine });
    },
    async restartVault(how) {
      await rig.stopVault(how);
      await rig.startVaultAgain();
    },
    async cleanup() {
      await chatd.stop();
      await vault.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return rig;
}

/**
 * Counts the KE2 replies (each one OPRF evaluation: one password guess) a device receives. Replies
 * travel inside the device-vault session, so they are counted where the device opens them (pass
 * `onReply` to the device), not on the wire, where every Welcome looks alike.
 */
export function ke2Counter(): { count: () => number; onReply: (r: VaultReply) => void } {
  let n = 0;
  return {
    count: () => n,
    onReply: (r) => {
      if (r.t === 'KE2') n++;
    },
  };
}

/** Runs `bkv ARGS` in this process (the CLI's own code, not a copy) and captures what it prints. */
export async function cli(args: string[]): Promise<{ status: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const spies = [
    vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void (out += a.join(' ') + '\n')),
    vi.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void (err += a.join(' ') + '\n')),
    vi.spyOn(process.stdout, 'write').mockImplementation(((c: string | Uint8Array) => ((out += c.toString()), true)) as never),
    vi.spyOn(process.stderr, 'write').mockImplementation(((c: string | Uint8Array) => ((err += c.toString()), true)) as never),
  ];
  try {
    const status = await bkvMain(args);
    return { status, out, err };
  } finally {
    for (const s of spies) s.mockRestore();
  }
}

/** Runs `node bin/bkv.js ARGS` as a child process. */
export function cliProcess(args: string[], opts: { stdin?: string; env?: NodeJS.ProcessEnv } = {}): Promise<{ status: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BKV, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, out, err }));
    child.stdin.end(opts.stdin ?? '');
  });
}

export function makeChats(dir: string): void {
  mkdirSync(join(dir, 'media'), { recursive: true });
  writeFileSync(join(dir, 'messages.json'), JSON.stringify(Array.from({ length: 50 }, (_, i) => ({ i, text: `hello ${i}` }))));
  writeFileSync(join(dir, 'media', 'photo.jpg'), randomBytes(150_000));
}

export function treeDigest(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out[relative(dir, p)] = createHash('sha256').update(readFileSync(p)).digest('hex');
    }
  };
  walk(dir);
  return out;
}

export function writeSecret(dir: string, name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text + '\n', { mode: 0o600 });
  return p;
}

/** A port nothing listens on. */
export async function closedPort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as { port: number };
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}
