// Test side of replica processes (vault/fleet/replica-process.ts): spawn one with real flags, read
// its READY block, talk to its relay and status endpoints as a device / an operator would, kill it.
import { hopSecret } from '../../protocol/hop-secret.ts';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Send } from '../../client/password.ts';
import { decodeRelayReply, encodeRelayRequest, RELAY_PATH } from '../../protocol/relay.ts';
import { REPLICA_STATUS_PATH } from '../../vault/fleet/process-config.ts';
import type { ReplicaProcessStatus } from '../../vault/fleet/replica-process.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const ENTRY = 'vault/fleet/replica-process.ts';

export class RelayFailure extends Error {
  constructor(readonly code: string, readonly status: number) { super(`relay failed: ${code} (${status})`); }
}

/** Free loopback ports (bound then released; the kernel does not hand them out again at once). */
export async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(Array.from({ length: n }, () => new Promise<import('node:net').Server>((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => resolve(s));
  })));
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  return ports;
}

export class ReplicaProc {
  /** Every process spawned, ready or not: killAll() in afterAll leaves none behind, even after a failed start. */
  static readonly spawned = new Set<ReplicaProc>();
  static async killAll(): Promise<void> {
    await Promise.all([...ReplicaProc.spawned].map((p) => p.kill('SIGKILL')));
  }
  readonly values = new Map<string, string>();
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private constructor(readonly name: string, readonly proc: ChildProcess) {
    this.exited = new Promise((r) => proc.once('exit', (code, signal) => { ReplicaProc.spawned.delete(this); r({ code, signal }); }));
    proc.stderr!.on('data', (b: Buffer) => {
      if (process.env.BKV_DEBUG) process.stderr.write(b);
      this.stderr = (this.stderr + b.toString('utf8')).slice(-20_000);
    });
  }

  /** Starts the process and resolves at READY (rejects with its stderr if it exits or stalls first). */
  static async start(name: string, args: string[], o: { stdin?: 'pipe'; timeoutMs?: number } = {}): Promise<ReplicaProc> {
    const timeoutMs = o.timeoutMs ?? 60_000;
    const proc = spawn(process.execPath, ['bin/run.js', ENTRY, ...args], { cwd: ROOT, stdio: [o.stdin ?? 'ignore', 'pipe', 'pipe'] });
    const p = new ReplicaProc(name, proc);
    ReplicaProc.spawned.add(p);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`${name}: no READY within ${timeoutMs} ms\n${p.stderr}`)); }, timeoutMs);
      createInterface({ input: proc.stdout! }).on('line', (line) => {
        const eq = line.indexOf('=');
        if (eq > 0) p.values.set(line.slice(0, eq), line.slice(eq + 1));
        if (line.startsWith('READY=')) { clearTimeout(timer); resolve(); }
      });
      void p.exited.then(({ code }) => { clearTimeout(timer); reject(new Error(`${name} exited (${code}) before READY\n${p.stderr}`)); });
    });
    const st = args.indexOf('--state');
    if (st >= 0) p.relayKey = hopSecret(args[st + 1]!, 'relay');
    return p;
  }

  /** Runs the entry to completion (for flag errors): exit code, stdout, stderr. */
  static run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const proc = spawn(process.execPath, ['bin/run.js', ENTRY, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    proc.stdout!.on('data', (b: Buffer) => { stdout += b.toString('utf8'); });
    proc.stderr!.on('data', (b: Buffer) => { stderr += b.toString('utf8'); });
    return new Promise((resolve) => proc.once('exit', (code) => resolve({ code, stdout, stderr })));
  }

  get relayUrl(): string { return this.values.get('REPLICA_RELAY_URL')!; }
  /** The relay key of the state directory it was started on (`--state`): its relay listener demands it. */
  relayKey = '';
  get running(): boolean { return this.proc.exitCode === null && this.proc.signalCode === null; }

  send(user: string): Send {
    return async (body) => {
      const res = await fetch(this.relayUrl + RELAY_PATH, { method: 'POST', body: encodeRelayRequest({ user, body }), headers: { authorization: `Bearer ${this.relayKey}` } });
      const reply = decodeRelayReply(new Uint8Array(await res.arrayBuffer()));
      if (!reply.ok) throw new RelayFailure(reply.code, res.status);
      return reply.body;
    };
  }

  async status(): Promise<ReplicaProcessStatus | undefined> {
    if (!this.running) return undefined;
    try {
      const res = await fetch(this.relayUrl + REPLICA_STATUS_PATH, { headers: { authorization: `Bearer ${this.relayKey}` }, signal: AbortSignal.timeout(2_000) });
      return (await res.json()) as ReplicaProcessStatus;
    } catch {
      return undefined;
    }
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.running) this.proc.kill(signal);
    return this.exited;
  }

  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
  async stop(graceMs = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.running) return this.exited;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }
}

export async function waitFor<T>(what: string, f: () => Promise<T | undefined | false>, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The leader once exactly one live replica leads and every listed one follows it in its term. */
export function stableLeader(procs: readonly ReplicaProc[], timeoutMs = 30_000): Promise<{ leader: ReplicaProc; term: number; statuses: ReplicaProcessStatus[] }> {
  return waitFor('a stable leader', async () => {
    const statuses = await Promise.all(procs.map((p) => p.status()));
    if (statuses.some((s) => !s)) return undefined;
    const st = statuses as ReplicaProcessStatus[];
    const leaders = st.filter((s) => s.role === 'leader');
    if (leaders.length !== 1) return undefined;
    const l = leaders[0]!;
    if (!st.every((s) => s.leader === l.name && s.term === l.term) || l.commitIndex <= 1) return undefined;
    return { leader: procs.find((p) => p.name === l.name)!, term: l.term, statuses: st };
  }, timeoutMs);
}
