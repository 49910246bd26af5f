// The one supervisor of `bkv serve` and `bkv fleet up`: refuse a state directory something already
// serves (or an orphaned vault still holds), provision it if needed, start the vault side and ChatD,
// pin the vault's keys, record the run in serve.json, then wait for Ctrl-C (stop ChatD, then the
// vault) or for either child to die (stop the other, exit with its code). The commands differ only
// in what they start and what they print.
import { createServer } from 'node:net';
import { finalizeModule } from '../hsm-adapter/module.ts';
import { ListenError, listenError } from '../protocol/errors.ts';
import { provision } from '../softhsm/provision.ts';
import {
  ServiceError, clearServeRecord, orphanedVault, pinVaultKeys, readServeRecord, writeServeRecord,
  type ExitInfo, type ServeRecord, type Services,
} from './services.ts';

export interface SuperviseOptions {
  /** 'bkv serve' or 'bkv fleet': the prefix of every line. */
  prog: string;
  /** What the vault side is called in messages ('the vault', 'the fleet'). */
  vaultName: string;
  stateDir: string;
  /** Replicas to provision when the directory is new. */
  replicas?: number;
  /** The ports asked for on the command line (0: any), checked free before anything starts. */
  ports?: { flag: string; port: number }[];
  /** Starts both; `signal` aborts the start (Ctrl-C): what started is stopped, the start rejects. */
  start(signal: AbortSignal): Promise<Services>;
  /** The serve.json record of this run. */
  record(s: Services): Promise<Omit<ServeRecord, 'version' | 'pid' | 'startedAt'>>;
  /** Lines on stdout once both serve. */
  announce(s: Services): void;
  /** Exit codes when a child dies on its own. */
  exits: { vaultDied: number; chatdDied: number };
}

export function describeExit(e: ExitInfo): string {
  return e.signal ? `signal ${e.signal}` : `code ${e.code}`;
}

export function refuseBusyState(stateDir: string): void {
  const running = readServeRecord(stateDir);
  if (running) {
    const what = running.mode === 'fleet' ? 'bkv fleet up' : 'bkv serve';
    throw new ServiceError('SERVE_RUNNING', `${what} (pid ${running.pid}) already runs on ${stateDir}, ChatD at ${running.chatdUrl}; two vaults on one state directory would fork its log`);
  }
  const orphan = orphanedVault(stateDir);
  if (orphan !== undefined) {
    throw new ServiceError(
      'SERVE_ORPHAN',
      `a vault (pid ${orphan}) started by an earlier bkv serve / fleet up that did not stop cleanly still runs on ${stateDir}; stop it (kill ${orphan}) first ` +
        '(if that pid is something else now, delete serve.json)',
    );
  }
}

/**
 * Each asked-for port must be free on 127.0.0.1, or the run stops here, before provisioning or
 * starting anything, with the typed EADDRINUSE naming the address and the flag (a child finding it
 * taken later, in a race, says the same in its own words).
 */
export async function refuseBusyPorts(ports: { flag: string; port: number }[]): Promise<void> {
  const asked = ports.filter((p) => p.port !== 0);
  for (const [i, p] of asked.entries()) {
    const twin = asked.slice(0, i).find((q) => q.port === p.port);
    if (twin) throw new ListenError('PORT_TWICE', `${twin.flag} and ${p.flag} are both ${p.port}: ChatD and ${p.flag === '--port' || twin.flag === '--port' ? 'the vault' : 'the other listener'} cannot share a port`);
  }
  for (const p of asked) {
    const s = createServer();
    try {
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen(p.port, '127.0.0.1', () => resolve());
      });
    } catch (e) {
      const err = listenError(e, '127.0.0.1', p.port);
      if (err instanceof ListenError) throw new ListenError(err.code, `${err.code} 127.0.0.1:${p.port}: ${p.flag} ${p.port} is ${err.code === 'EADDRINUSE' ? 'in use (another bkv, or any other program)' : 'not allowed (ports below 1024 need privileges)'}; choose another with ${p.flag}, or 0 for any free one`);
      throw err;
    } finally {
      await new Promise<void>((r) => s.close(() => r()));
    }
  }
}

export async function supervise(o: SuperviseOptions): Promise<number> {
  refuseBusyState(o.stateDir);
  await refuseBusyPorts(o.ports ?? []);
  // A signal while provisioning is honoured once the key ceremony is done (half a ceremony would
  // leave tokens without the fleet's secrets); while starting, it stops what started at once.
  let signalled: NodeJS.Signals | undefined;
  let wake: (() => void) | undefined;
  const abort = new AbortController();
  const onSignal = (s: NodeJS.Signals) => {
    signalled ??= s;
    abort.abort();
    wake?.();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    try {
      const report = await provision({ stateDir: o.stateDir, replicas: o.replicas, onProgress: (m) => console.error(`${o.prog}: ${m}`) });
      if (!report.unchanged) console.error(`${o.prog}: provisioned ${report.replicas.length} tokens in ${report.stateDir}`);
    } finally {
      finalizeModule(); // the vault side opens the tokens itself
    }
    if (signalled) {
      console.error(`${o.prog}: ${signalled}: stopped before starting anything`);
      return 0;
    }
    let services: Services;
    try {
      services = await o.start(abort.signal);
    } catch (e) {
      if (!signalled) throw e;
      console.error(`${o.prog}: ${signalled}: stopped while starting; nothing is left running`);
      return 0;
    }
    // Devices pin these keys. A change means a new fleet (provision --force): say so, loudly.
    if (pinVaultKeys(o.stateDir, services.vault.keys)) {
      console.error(`${o.prog}: WARNING: ${o.vaultName}'s public keys differ from the ones pinned in vault-keys.json (a new fleet?); devices now pin the new ones and records registered with the old fleet are gone`);
    }
    writeServeRecord(o.stateDir, { version: 1, pid: process.pid, ...(await o.record(services)), startedAt: new Date().toISOString() });
    o.announce(services);
    const outcome = await new Promise<{ kind: 'signal' } | { kind: 'died'; who: 'vault' | 'chatd'; exit: ExitInfo }>((resolve) => {
      wake = () => resolve({ kind: 'signal' });
      if (signalled) wake();
      void services.firstExit.then((e) => resolve({ kind: 'died', who: e.who, exit: e }));
    });
    try {
      if (outcome.kind === 'signal') {
        console.error(`${o.prog}: ${signalled}: stopping ChatD, then ${o.vaultName}`);
        const r = await services.stop();
        console.error(`${o.prog}: stopped (ChatD ${describeExit(r.chatd)}, ${o.vaultName.replace(/^the /, '')} ${describeExit(r.vault)})`);
        return r.chatd.code === 0 && r.vault.code === 0 ? 0 : 1;
      }
      const vaultDied = outcome.who === 'vault';
      console.error(`${o.prog}: ${vaultDied ? o.vaultName : 'ChatD'} exited unexpectedly (${describeExit(outcome.exit)}); stopping ${vaultDied ? 'ChatD' : o.vaultName}`);
      await (vaultDied ? services.chatd : services.vault).stop();
      return vaultDied ? o.exits.vaultDied : o.exits.chatdDied;
    } finally {
      clearServeRecord(o.stateDir);
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
