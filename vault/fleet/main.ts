// The fleet process: every replica of a provisioned state directory in its own worker thread, Raft
// between them through the WAN model, an HTTP front on loopback. Run:
//   node bin/run.js vault/fleet/main.ts --state .bkv [--replicas N] [--wan none|default|FILE] [--port 0] [--seed 1] [--election-ms 1000]
// Prints, once a leader is elected:
//   FLEET_URL=http://127.0.0.1:PORT            (POST /v1/relay like a vault, with the relay key)
//   OPERATOR_URL=http://127.0.0.1:PORT         (GET /v1/fleet/status; with --faults POST /v1/fleet/fault; the operator key)
//   VAULT_AKE_PUBLIC_KEY_<suite>=<hex>         (the key devices pin; same on every replica)
// Exits 0 on SIGTERM/SIGINT after a clean shutdown; 2 on bad flags; 1 when it cannot start.
import { closeSync, fchmodSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { hopSecret } from '../../protocol/hop-secret.ts';
import { parseArgs } from 'node:util';
import { isBkvError } from '../../protocol/errors.ts';
import { loadState } from '../../softhsm/state.ts';
import { startFleet, type Fleet } from './fleet.ts';
import { startProcessFleet } from './process-fleet.ts';

const USAGE = 'usage: vault/fleet/main.ts [--state DIR] [--replicas N] [--wan none|default|FILE] [--port N] [--seed N] [--election-ms MS] [--transport ports|tcp] [--faults]';

export async function main(argv: string[]): Promise<number> {
  let flags;
  try {
    flags = parseArgs({
      args: argv, strict: true,
      options: {
        state: { type: 'string', default: process.env.BKV_STATE ?? '.bkv' },
        replicas: { type: 'string' },
        wan: { type: 'string' },
        // ports: replicas are worker threads of this process (MessagePorts through the WAN model);
        // tcp: each replica its own process (replica-process.ts), TcpTransport on loopback, no WAN model.
        transport: { type: 'string', default: 'ports' },
        port: { type: 'string', default: process.env.BKV_FLEET_PORT ?? '0' },
        seed: { type: 'string', default: '1' },
        'election-ms': { type: 'string' },
        quiet: { type: 'boolean', default: false },
        faults: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
      },
    }).values;
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (flags.help) { process.stdout.write(`${USAGE}\n`); return 0; }
  const tcp = flags.transport === 'tcp';
  if (!tcp && flags.transport !== 'ports') { process.stderr.write(`--transport must be ports or tcp\n${USAGE}\n`); return 2; }
  if (tcp && flags.wan !== undefined && flags.wan !== 'none') { process.stderr.write(`--transport tcp runs on the real network: --wan must be none\n${USAGE}\n`); return 2; }
  const wan = flags.wan ?? (tcp ? 'none' : 'default');
  const int = (v: string | undefined, name: string, lo: number, hi: number): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < lo || n > hi) throw new RangeError(`--${name} must be an integer ${lo}..${hi}`);
    return n;
  };
  let port: number, count: number | undefined, seed: number, electionMs: number | undefined;
  try {
    port = int(flags.port, 'port', 0, 65535)!;
    count = int(flags.replicas, 'replicas', 1, 64);
    seed = int(flags.seed, 'seed', 0, 2 ** 31)!;
    electionMs = int(flags['election-ms'], 'election-ms', 50, 60_000);
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const log = (line: string) => { if (!flags.quiet) process.stderr.write(`[fleet] ${line}\n`); };

  let fleet: Fleet | undefined;
  let auditFd: number | undefined;
  try {
    const state = loadState(flags.state!);
    // The audit trail: every fault request (who asked, what, done or refused) and every role change,
    // one JSON line each, on stderr (even with --quiet) and appended to <state>/fleet-audit.jsonl.
    auditFd = openSync(join(state.stateDir, AUDIT_FILE), 'a', 0o600);
    fchmodSync(auditFd, 0o600);
    const fd = auditFd;
    const audit = (line: Record<string, unknown>) => {
      const text = JSON.stringify({ at: new Date().toISOString(), ...line }).slice(0, 4000);
      process.stderr.write(`${text}\n`);
      try { writeSync(fd, `${text}\n`); } catch { /* a full disk must not stop the fleet; stderr has it */ }
    };
    let replicas: string[] | undefined;
    if (count !== undefined) {
      if (count > state.replicas.length) {
        process.stderr.write(`--replicas ${count}: ${state.stateDir} has only ${state.replicas.length} tokens (bkv provision --replicas ${count})\n`);
        return 2;
      }
      replicas = state.replicas.slice(0, count).map((r) => r.name);
    }
    fleet = await (tcp ? startProcessFleet : startFleet)({
      stateDir: flags.state!, replicas, wan, seed, electionTimeoutMs: electionMs, port, faultEndpoint: flags.faults === true,
      relayKey: hopSecret(state.stateDir, 'relay'), operatorKey: hopSecret(state.stateDir, 'operator'), metricsKey: hopSecret(state.stateDir, 'metrics'),
      onEvent: (e) => {
        if (e.kind === 'role') audit({ event: 'role', replica: e.replica, role: e.role, term: e.term, leader: e.leader, by: 'raft' });
        else if (e.kind === 'fault') audit({ event: 'fault', op: e.fault.op, fault: e.fault, ok: e.ok, ...(e.code ? { code: e.code } : {}), by: e.by });
        else if (e.kind === 'crashed') audit({ event: 'crashed', replica: e.replica });
        else if (e.kind === 'member') audit({ event: 'member', op: e.request.op, request: e.request, ...(e.step ? { step: e.step } : {}), ...(e.ok !== undefined ? { ok: e.ok } : {}), ...(e.code ? { code: e.code } : {}), by: e.by });
        else if (e.kind === 'log') log(`${e.replica}: ${e.line}`);
        else if (e.kind === 'leader') log(`${e.replica} leads term ${e.term}`);
        else if (e.kind === 'health') log(`${e.replica} ${e.healthy ? 'healthy' : `UNHEALTHY ${e.code}`}`);
        else log(`${e.replica} ${e.kind}`);
      },
    });
    const f = fleet;
    const end = Date.now() + 30_000;
    while (!(await f.leader())) {
      if (Date.now() > end) throw Object.assign(new Error('no leader elected within 30 s'), { code: 'NO_LEADER' });
      await new Promise((r) => setTimeout(r, 50));
    }
    process.stdout.write(`FLEET_URL=${f.url}\n`);
    process.stdout.write(`OPERATOR_URL=${f.operatorUrl}\n`);
    for (const [s, hex] of Object.entries(f.akePublicKeys())) process.stdout.write(`VAULT_AKE_PUBLIC_KEY_${s.replace(/[^A-Za-z0-9]/g, '_')}=${hex}\n`);
    await new Promise<void>((resolve) => {
      process.once('SIGTERM', resolve);
      process.once('SIGINT', resolve);
    });
    log('shutting down');
    await f.close();
    return 0;
  } catch (e) {
    process.stderr.write(`fleet: ${isBkvError(e) ? (e.message.startsWith(e.code) ? e.message : `${e.code}: ${e.message}`) : (e as { code?: string }).code === 'NO_LEADER' ? 'NO_LEADER: no leader elected within 30 s' : 'failed to start'}\n`);
    await fleet?.close().catch(() => undefined);
    return 1;
  } finally {
    if (auditFd !== undefined) closeSync(auditFd);
  }
}

/** The fleet's audit trail in the state directory (JSON lines; docs/fleet.md, "Status and audit"). */
export const AUDIT_FILE = 'fleet-audit.jsonl';

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await main(process.argv.slice(2));
}
