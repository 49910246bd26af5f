// `bkv fleet up | status | fault | down`: the Raft fleet of vault replicas behind ChatD, and a window
// onto it. `up` is `bkv serve` with the fleet in place of the single vault (same serve.json and
// vault-keys.json, so every `bkv backup ...` command works against it unchanged); `status` reads the
// fleet's own report; `fault` drives its fault injector for attack demos.
import { parseFlags, UsageError, wantsHelp, type Command } from '../cli.ts';
import { refuseBusyState, supervise } from '../supervisor.ts';
import { readManifest, replicaNames, statePaths } from '../../softhsm/state.ts';
import { resolveWanConfig } from '../../vault/fleet/wan.ts';
import { hopSecret } from '../../protocol/hop-secret.ts';
import {
  ServiceError,
  fetchFleetStatus,
  pidAlive,
  postFleetFault,
  postFleetMember,
  readServeRecord,
  servePaths,
  startServices,
  type OperatorEndpoint,
  type FleetFault,
  type FleetStatus,
  type MemberRequest,
  type ServeRecord,
} from '../services.ts';

/** Exit codes beyond cli.ts's 0/1/2, as `bkv serve`: which child died on its own. */
export const FLEET_EXIT = { fleetDied: 3, chatdDied: 4 } as const;

const upHelp = `usage: bkv fleet up [--replicas N] [--wan default|none|FILE] [--transport ports|tcp] [--faults] [--state DIR] [--port N] [--fleet-port N] [--quiet] [--json]

Starts the vault as a fleet of replicas, one per data center, each a worker thread on its own
SoftHSM2 token, agreeing by Raft on every record change (above all the attempt counter), plus ChatD
in front of it: two processes on loopback, supervised like \`bkv serve\` (which runs one replica).
Provisions DIR first if it holds no fleet.

Writes DIR/serve.json (ChatD's URL, the fleet's URL) and DIR/vault-keys.json (the fleet's AKE public
keys, computed from the tokens), so \`bkv backup ... --state DIR\` works against the fleet unchanged.

  --replicas N      replicas (data centers) to provision on a fresh DIR (default 5: us-east, us-west,
                    eu-west, ap-southeast, sa-east); on a provisioned DIR, at most the fleet's size
  --wan MODEL       the WAN between data centers: default (round-trip matrix from public inter-region
                    measurements, docs/fleet-network.md), none (zero delay), or a JSON FILE in that format
  --transport T     ports (default): replicas are worker threads of one process, joined through the WAN
                    model; tcp: every replica its own process, joined by the mutually authenticated TCP
                    transport on loopback (the real network: --wan none; crash/restart faults only)
  --faults          enable fault injection (\`bkv fleet fault\`) on the operator listener; off by default
  --state DIR       state directory (default .bkv)
  --port N          ChatD's port (default 0: any free port)
  --fleet-port N    the fleet front's port, where ChatD sends relayed requests (default 0)
  --json            once ready, one JSON line on stdout instead of the lines for people: {"event":
                    "ready", "chatdUrl", "fleetUrl", "operatorUrl", "replicas", "leader", ...}; a
                    failure as {"error": {"code", "message", "hint"}} on stderr
  --quiet           do not pass the children's logs through to stderr (the fleet's audit lines, JSON
                    with "event": fault requests and role changes, still pass; also in DIR/fleet-audit.jsonl)

A port asked for that is taken: EADDRINUSE 127.0.0.1:N, exit 1, before anything is provisioned or
started. Ctrl-C or SIGTERM at any stage exits 0 with nothing left running: while provisioning, once
the key ceremony is done; while starting, at once; once serving (or \`bkv fleet down\`), ChatD is
stopped, then the fleet. If either dies on
its own the other is stopped: exit ${FLEET_EXIT.fleetDied} when the fleet died, ${FLEET_EXIT.chatdDied} when ChatD died; 1 when they could not start.`;

const statusHelp = `usage: bkv fleet status [--state DIR] [--json] [--watch]

Each replica's data center, role (leader, follower, candidate, down...), Raft term, commit index,
applied index, lag behind the leader's commit index (entries) and health (its own disk and token),
then the fleet's view of it: whether it is in two-way contact with the leader (leader?), how many
running replicas it has links with against the quorum (quorum?; threads only, '-' over TCP), and
whether a device request entering there is served now; for each replica that does not serve, why
(CRASHED, NO_QUORUM, NO_LEADER, CANNOT_REACH_LEADER, STALE_LEADER, ROLLED_BACK...). Then the
faults in force (partitions, isolation, one-way blocks, slow links, token and clock faults,
crashes: since when and who asked) and the leader, as the running fleet (\`bkv fleet up --state
DIR\`) reports them. Every fault request and role change is also a JSON line in
DIR/fleet-audit.jsonl.

  --state DIR   state directory of the running fleet (default .bkv)
  --json        machine-readable: one JSON object (with --watch: one per line, every second)
  --watch       refresh in place every second until Ctrl-C

Exit 1 with FLEET_NOT_RUNNING when no fleet runs on DIR.`;

const faultHelp = `usage: bkv fleet fault ACTION [--state DIR]

Injects a fault into the running fleet, for attack demos. The fleet must keep every promise anyway:
no more guesses than the limit, no committed attempt lost. Fault injection is off unless the fleet
was started with \`bkv fleet up --faults\` (FAULTS_OFF otherwise); requests go to the fleet's operator
listener with the operator key (DIR/operator.key), never to the relay front.

  partition A,B C,D,E   cut the network between groups of replicas (comma-separated names)
  isolate R             cut every link to and from replica R (its data center goes dark)
  block A B             cut the link from A to B only (one-way: B still reaches A)
  heal                  restore every link
  crash R               stop replica R at once (what Raft did not flush is lost, like a power cut);
                        a replica already down is left as it is, and bkv says so
  snapshot-disk R       copy replica R's disk aside (for a later restart --rollback); prints where
  restart R [--rollback]
                        start a crashed replica again on its disk, or on the copy snapshot-disk
                        took (the host rolled its disk back: the replica must not vote or serve on
                        stale state; it rejoins as a non-voter and catches up from its peers)

  --state DIR           state directory of the running fleet (default .bkv)

Replica names are data centers: \`bkv fleet status\` lists them.`;

const memberHelp = `usage: bkv fleet member add NAME | remove NAME | replace OLD NEW [--state DIR] [--json]

Changes the running fleet's membership, one Raft configuration change at a time, while it serves:

  add NAME          start the standby replica NAME on its token (a spare made in the key ceremony with
                    \`bkv provision --spares N\`, or a replica removed earlier), add it as a learner (it
                    receives the log and counts for no quorum), wait until it caught up, promote it
                    to voter
  remove NAME       if NAME leads, move the leadership to another voter first; remove NAME from the
                    configuration, stop it. Its token and disk stay (fleet.json: standby, removed)
                    until you delete them; \`member add NAME\` can bring it back
  replace OLD NEW   add NEW, then remove OLD (moving a data center is a replace)

A new replica's token must already hold the fleet secrets, which never leave a token: only tokens
that took part in the key ceremony can join (NO_SPARE_TOKEN otherwise). Another change in flight
is refused (CHANGE_IN_FLIGHT), as are a non-member (NOT_MEMBER), a member (ALREADY_MEMBER), and a
removal that would leave fewer healthy voters than a quorum (REMOVE_LOSES_QUORUM); nothing changes
then. fleet.json is rewritten (atomically) once each change committed; devices' pinned keys stay
valid (every token holds the same fleet AKE seed). Threaded fleets only (\`bkv fleet up\`, not
--transport tcp: MEMBER_UNSUPPORTED).

  --state DIR   state directory of the running fleet (default .bkv)
  --json        one JSON document on stdout at the end ({"ok": true, "op", "voters", "learners",
                "leader", "steps"}); a failure as {"error": {"code", "message", "hint"}} on stderr

Prints each step as it happens. \`bkv fleet status\` shows voters, learners and the change in flight.`;

const help = `usage: bkv fleet up|status|fault|member|down [options]

The vault as a fleet of HSM replicas agreeing by Raft, behind ChatD.

  bkv fleet up [--replicas 5] [--wan default|none|FILE] [--faults] [--state DIR] [--port N]
                              start the fleet and ChatD (Ctrl-C stops both)
  bkv fleet status [--state DIR] [--json] [--watch]
                              roles, terms, commit indexes, lag, health, leader
  bkv fleet fault partition|isolate|block|heal|crash|snapshot-disk|restart ... [--state DIR]
                              inject a fault (attack demos)
  bkv fleet member add NAME | remove NAME | replace OLD NEW [--state DIR] [--json]
                              change the membership (one change at a time, under load)
  bkv fleet down [--state DIR]
                              stop the fleet and ChatD that \`bkv fleet up\` started

\`bkv fleet SUBCOMMAND --help\` tells each one's options. Password backups against the fleet: the usual
\`bkv backup ... --state DIR\` commands.`;

function port(name: string, v: string | undefined): number {
  if (v === undefined) return 0;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > 65535) throw new UsageError(`--${name} must be a port number 0..65535 (got '${v.slice(0, 20)}')`);
  return n;
}

/** The running fleet on stateDir, or a clear error saying what runs there instead. */
export function runningFleet(stateDir: string): ServeRecord & { operator: OperatorEndpoint } {
  const r = readServeRecord(stateDir);
  if (!r) {
    throw new ServiceError('FLEET_NOT_RUNNING', `no fleet is running on ${stateDir}: start one with \`bkv fleet up --state ${stateDir}\``);
  }
  if (r.mode !== 'fleet') {
    throw new ServiceError('FLEET_NOT_RUNNING', `${stateDir} is served by \`bkv serve\` (pid ${r.pid}), a single vault replica, not a fleet; stop it and run \`bkv fleet up --state ${stateDir}\``);
  }
  if (!r.operatorUrl) throw new ServiceError('STATE_CORRUPT', `${stateDir}/serve.json names no operator listener (written by an older bkv?); restart the fleet`);
  return { ...r, operator: { url: r.operatorUrl, key: hopSecret(stateDir, 'operator') } };
}

// ---- up --------------------------------------------------------------------------------------

async function up(argv: string[]): Promise<number> {
  if (wantsHelp(argv)) {
    console.log(upHelp);
    return 0;
  }
  const { values } = parseFlags(argv, {
    state: { type: 'string' },
    replicas: { type: 'string' },
    wan: { type: 'string' },
    transport: { type: 'string' },
    port: { type: 'string' },
    'fleet-port': { type: 'string' },
    quiet: { type: 'boolean' },
    faults: { type: 'boolean' },
    json: { type: 'boolean' },
  });
  const stateDir = values.state ?? '.bkv';
  const chatdPort = port('port', values.port);
  const fleetPort = port('fleet-port', values['fleet-port']);
  let replicas: number | undefined;
  if (values.replicas !== undefined) {
    replicas = Number(values.replicas);
    if (!/^\d+$/.test(values.replicas) || replicas < 1 || replicas > 13) throw new UsageError(`--replicas must be an integer from 1 to 13 (got '${values.replicas.slice(0, 20)}')`);
  }
  const transport = values.transport ?? 'ports';
  if (transport !== 'ports' && transport !== 'tcp') throw new UsageError(`--transport must be ports or tcp (got '${transport.slice(0, 20)}')`);
  if (transport === 'tcp' && values.wan !== undefined && values.wan !== 'none') throw new UsageError('--transport tcp runs on the real network: --wan must be none');
  const wan = values.wan ?? (transport === 'tcp' ? 'none' : 'default');
  // Refuse a bad WAN file here, with the field at fault, before anything starts.
  const wanConfig = resolveWanConfig(wan);

  refuseBusyState(stateDir);
  // A provisioned directory keeps its fleet (its tokens hold secrets no new token can get): run
  // the first N of its replicas when fewer are asked for, refuse more.
  const manifest = readManifest(statePaths(stateDir).manifest);
  const provisioned = manifest?.replicas.length;
  if (provisioned !== undefined && replicas !== undefined && replicas > provisioned) {
    throw new ServiceError('FLEET_MISMATCH', `${stateDir} holds a fleet of ${provisioned} replicas; cannot run ${replicas} (provision another directory, or \`bkv provision --force\` to start over)`);
  }

  // Each replica is placed in the WAN model's data center of the same name.
  const names = manifest ? manifest.replicas.slice(0, replicas ?? provisioned).map((r) => r.name) : replicaNames(replicas ?? 5);
  // Standby replicas too: they are in the WAN model from the start, so that \`fleet member add\` can start one.
  const unplaced = wanConfig.none ? [] : [...names, ...(manifest?.standby ?? []).map((r) => r.name)].filter((n) => !wanConfig.regions.includes(n));
  if (unplaced.length) {
    throw new ServiceError('WAN_UNKNOWN_REGION', `the WAN model ${wan} has no data center for replica(s) ${unplaced.join(', ')} (it knows ${wanConfig.regions.join(', ')}); use --wan FILE with those regions, or --wan none`);
  }

  let running: string[] = [];
  let status: FleetStatus | undefined;
  return supervise({
    prog: 'bkv fleet', vaultName: 'the fleet', stateDir, replicas: provisioned ?? replicas, exits: { vaultDied: FLEET_EXIT.fleetDied, chatdDied: FLEET_EXIT.chatdDied },
    ports: [{ flag: '--port', port: chatdPort }, { flag: '--fleet-port', port: fleetPort }],
    start: (signal) => startServices({
      stateDir,
      signal,
      chatdPort,
      vaultPort: fleetPort,
      fleet: { replicas, wan, faults: values.faults === true, ...(transport === 'tcp' ? { transport } : {}) },
      // The fleet's audit lines (JSON: fault requests, role changes) pass even with --quiet.
      onLine: (who, line) => { if (!values.quiet || (who === 'vault' && line.startsWith('{"at":'))) process.stderr.write(`${who === 'vault' ? 'fleet' : who} | ${line}\n`); },
    }),
    async record(services) {
      const fleet = services.fleet!;
      try {
        const st = await fleet.status();
        status = st;
        running = st.replicas.map((r) => r.name);
      } catch {
        // The status is shown when available; the fleet serves either way.
      }
      return { mode: 'fleet', chatdUrl: services.chatd.url, vaultUrl: fleet.url, operatorUrl: fleet.operator.url, replicas: running, wan, vaultPid: fleet.pid, chatdPid: services.chatd.pid };
    },
    announce(services) {
      const fleet = services.fleet!;
      const paths = servePaths(stateDir);
      if (values.json) {
        console.log(JSON.stringify({
          event: 'ready', mode: 'fleet', chatdUrl: services.chatd.url, fleetUrl: fleet.url, operatorUrl: fleet.operator.url, replicas: running, leader: status?.leader ?? null,
          transport, wan, pid: process.pid, fleetPid: fleet.pid, chatdPid: services.chatd.pid, serveRecord: paths.serve, vaultKeys: paths.vaultKeys,
        }));
        return;
      }
      console.log(`bkv fleet: ${running.length || replicas || provisioned || 5} replicas${running.length ? ` (${running.join(', ')})` : ''} ${transport === 'tcp' ? `as processes over TCP (supervisor pid ${fleet.pid})` : `in one process (pid ${fleet.pid}), WAN model ${wan}`}, at ${fleet.url}`);
      console.log(`bkv fleet: ChatD (pid ${services.chatd.pid}) at ${services.chatd.url}`);
      console.log(`CHATD_URL=${services.chatd.url}`);
      console.log(`FLEET_URL=${fleet.url}`);
      console.log(`bkv fleet: recorded in ${paths.serve}; pinned vault keys in ${paths.vaultKeys}. \`bkv fleet status --state ${stateDir} --watch\` to watch it; Ctrl-C stops both.`);
      if (status) for (const l of formatStatus(status)) console.log(`  ${l}`);
    },
  });
}

// ---- status ----------------------------------------------------------------------------------

const dash = (n: number) => (Number.isFinite(n) ? String(n) : '-');

/** A table: the header, then the rows, columns padded (numeric ones to the right). */
function table(head: string[], rows: string[][], right: ReadonlySet<number> = new Set()): string[] {
  const widths = head.map((h, c) => Math.max(h.length, ...rows.map((row) => row[c]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (right.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(head), ...rows.map(line)];
}

/**
 * The status: a line per replica (its own view: role, indexes, health; and the fleet's: whether it
 * reaches the leader and a quorum, whether it serves), why each one that does not serve does not,
 * the faults in force, and the leader.
 */
export function formatStatus(s: FleetStatus): string[] {
  const n = s.replicas.length;
  // Learners count for no quorum: the leader's voters decide it where the fleet reports them.
  const majority = Math.floor((s.members?.voters.length || n) / 2) + 1;
  const yes = (b: boolean | null | undefined) => (b === true ? 'yes' : b === false ? 'NO' : '-');
  // A fleet that reports its configuration gets a column for it (voter, learner: receives the log, votes for nothing).
  const withMember = s.replicas.some((r) => r.member !== undefined);
  const rows = s.replicas.map((r) => [
    `${r.name === s.leader ? '*' : ' '} ${r.name}`,
    r.region,
    r.role,
    dash(r.term),
    dash(r.commitIndex),
    dash(r.appliedIndex),
    r.lag < 0 ? '?' : dash(r.lag),
    // A re-replicating replica is up but holds less than it promised: its reason says why, first.
    !r.healthy ? 'DOWN' : r.role === 'rejoining' ? 'ROLLED_BACK' : 'ok',
    yes(r.reachesLeader),
    r.reachable === null || r.reachable === undefined ? '-' : `${r.reachable}/${n}${r.reachable < majority ? ' NO' : ''}`,
    r.serves === undefined ? '?' : r.serves ? 'yes' : 'NO',
    ...(withMember ? [r.member ?? '-'] : []),
  ]);
  const head = ['  replica', 'region', 'role', 'term', 'commit', 'applied', 'lag', 'health', 'leader?', 'quorum?', 'serves', ...(withMember ? ['member'] : [])];
  const out = table(head, rows, new Set([3, 4, 5, 6]));
  const why = s.replicas.filter((r) => r.serves !== true).map((r) => `  ${r.name}: ${r.servesNot || r.reason || (r.healthy ? 'unknown' : 'DOWN')}`);
  if (why.length) out.push('', 'not serving:', ...why);
  const notes = s.replicas.filter((r) => r.serves === true && r.reason).map((r) => `  ${r.name}: ${r.reason}`);
  if (notes.length) out.push('', 'notes:', ...notes);
  if (s.faults.length) {
    out.push('', 'faults in force:');
    const since = (iso: string) => (iso.length >= 19 ? `${iso.slice(11, 19)} UTC` : iso || '?');
    out.push(...table(['  fault', 'what', 'since', 'by'], s.faults.map((f) => [`  ${f.op}`, f.what, since(f.since), f.by])));
  }
  if (s.members) {
    out.push('', `configuration: voters ${s.members.voters.join(', ')}; learners ${s.members.learners.join(', ') || 'none'}${s.members.committed ? '' : ' (its last change is not committed yet)'}`);
  }
  if (s.change) out.push(`membership change in flight: ${s.change.op} ${s.change.replicas.join(' -> ')} (by ${s.change.by}, since ${s.change.since.slice(11, 19)} UTC): ${s.change.step}`);
  if (s.standby?.length) out.push(`standby tokens: ${s.standby.map((x) => `${x.name} (${x.standby})`).join(', ')}`);
  const serving = s.replicas.filter((r) => r.serves === true).length;
  const leader = s.replicas.find((r) => r.name === s.leader);
  out.push(
    '',
    `leader: ${leader ? `${leader.name} (term ${leader.term})` : 'none'}; ${serving} of ${n} replicas serve, quorum ${majority}${serving === 0 ? ': the fleet serves nothing' : ''}`,
  );
  return out;
}

function statusJson(s: FleetStatus, r: ServeRecord): unknown {
  return {
    at: new Date().toISOString(),
    leader: s.leader,
    replicas: s.replicas,
    faults: s.faults,
    ...(s.members !== undefined ? { members: s.members } : {}),
    ...(s.change !== undefined ? { change: s.change } : {}),
    ...(s.standby !== undefined ? { standby: s.standby } : {}),
    fleet: { url: r.vaultUrl, pid: s.pid, cpuMs: s.cpuMs, wan: r.wan ?? null },
    chatdUrl: r.chatdUrl,
  };
}

async function status(argv: string[]): Promise<number> {
  if (wantsHelp(argv)) {
    console.log(statusHelp);
    return 0;
  }
  const { values } = parseFlags(argv, { state: { type: 'string' }, json: { type: 'boolean' }, watch: { type: 'boolean' } });
  const stateDir = values.state ?? '.bkv';
  const rec = runningFleet(stateDir);
  const pid = rec.vaultPid;
  if (!values.watch) {
    const s = await fetchFleetStatus(rec.operator, pid);
    if (values.json) console.log(JSON.stringify(statusJson(s, rec), null, 2));
    else for (const l of formatStatus(s)) console.log(l);
    return 0;
  }

  // --watch: redraw in place (cursor home + clear below) on a terminal; plain repeats otherwise.
  const tty = process.stdout.isTTY && !values.json;
  let stop = false;
  let wake: (() => void) | undefined;
  const onSignal = () => {
    stop = true;
    wake?.();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    if (tty) process.stdout.write('\x1b[?25l'); // hide the cursor while redrawing
    while (!stop) {
      if (!pidAlive(rec.pid)) {
        if (tty) process.stdout.write('\x1b[?25h');
        throw new ServiceError('FLEET_NOT_RUNNING', `the fleet on ${stateDir} (bkv fleet up, pid ${rec.pid}) has stopped`);
      }
      let lines: string[];
      let s: FleetStatus | undefined;
      try {
        s = await fetchFleetStatus(rec.operator, pid);
        lines = formatStatus(s);
      } catch (e) {
        lines = [`fleet status unavailable: ${(e as Error).message}`];
      }
      if (values.json) {
        if (s) console.log(JSON.stringify(statusJson(s, rec)));
      } else {
        const header = `bkv fleet status  ${stateDir}  ${new Date().toISOString().slice(11, 19)} UTC  (Ctrl-C to stop)`;
        const text = [header, '', ...lines].join('\n');
        if (tty) process.stdout.write(`\x1b[H\x1b[J${text}\n`);
        else console.log(text + '\n');
      }
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 1000);
      });
    }
    return 0;
  } finally {
    if (tty) process.stdout.write('\x1b[?25h');
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

// ---- fault -----------------------------------------------------------------------------------

async function fault(argv: string[]): Promise<number> {
  if (wantsHelp(argv) || argv.length === 0) {
    console.log(faultHelp);
    return argv.length === 0 ? 2 : 0;
  }
  const { values, positionals } = parseFlags(argv, { state: { type: 'string' }, rollback: { type: 'boolean' } }, true);
  const stateDir = values.state ?? '.bkv';
  const [action, ...args] = positionals;
  const rec = runningFleet(stateDir);
  const s = await fetchFleetStatus(rec.operator, rec.vaultPid);
  const known = s.replicas.map((r) => r.name);
  const replica = (v: string | undefined): string => {
    if (v === undefined) throw new UsageError(`fleet fault ${action} needs a replica name (one of ${known.join(', ')})`);
    if (!known.includes(v)) throw new UsageError(`no replica '${v.slice(0, 40)}' in this fleet (have ${known.join(', ')})`);
    return v;
  };
  const one = (n: number) => {
    if (args.length > n) throw new UsageError(`fleet fault ${action}: unexpected '${args[n]!.slice(0, 40)}'`);
  };
  let f: FleetFault;
  switch (action) {
    case 'partition': {
      if (args.length < 2) throw new UsageError('fleet fault partition needs at least two groups, e.g. `partition us-east,us-west eu-west,ap-southeast,sa-east`');
      const groups = args.map((g) => g.split(',').filter(Boolean).map(replica));
      const all = groups.flat();
      const dup = all.find((n, i) => all.indexOf(n) !== i);
      if (dup) throw new UsageError(`replica ${dup} is in two partition groups`);
      f = { op: 'partition', groups };
      break;
    }
    case 'heal':
      one(0);
      f = { op: 'heal' };
      break;
    case 'isolate':
    case 'crash':
      one(1);
      f = { op: action, replica: replica(args[0]) };
      break;
    case 'block':
      one(2);
      f = { op: 'block', from: replica(args[0]), to: replica(args[1]) };
      if (f.from === f.to) throw new UsageError('fleet fault block needs two different replicas');
      break;
    case 'snapshot-disk':
      one(1);
      f = { op: 'snapshotDisk', replica: replica(args[0]) };
      break;
    case 'restart':
      one(1);
      f = { op: 'restart', replica: replica(args[0]), disk: values.rollback ? 'rollback' : 'keep' };
      break;
    default:
      throw new UsageError(`unknown fault '${(action ?? '').slice(0, 40)}' (partition, isolate, block, heal, crash, snapshot-disk, restart)`);
  }
  if (values.rollback && f.op !== 'restart') throw new UsageError('--rollback goes with `restart` only');
  const answer = (await postFleetFault(rec.operator, f)) as { alreadyDown?: unknown; path?: unknown } | undefined;
  const what =
    f.op === 'partition' ? `partitioned ${f.groups.map((g) => `{${g.join(', ')}}`).join(' | ')}` :
    f.op === 'heal' ? 'healed every link' :
    f.op === 'isolate' ? `isolated ${f.replica} (its data center is dark)` :
    f.op === 'block' ? `cut the link ${f.from} -> ${f.to} (one way)` :
    f.op === 'crash' ? (answer?.alreadyDown === true ? `${f.replica} was already down; nothing crashed` : `crashed ${f.replica}`) :
    f.op === 'snapshotDisk' ? `copied ${f.replica}'s disk aside to ${typeof answer?.path === 'string' ? answer.path : '(path not reported)'}` :
    f.op === 'restart' ? `restarted ${f.replica}${f.disk === 'rollback' ? ' on its rolled-back disk' : ''}` :
    `${f.op} ${f.replica}`;
  console.log(`bkv fleet: ${what}; \`bkv fleet status --state ${stateDir}\` shows the effect`);
  return 0;
}

// ---- member ----------------------------------------------------------------------------------

async function member(argv: string[]): Promise<number> {
  if (wantsHelp(argv) || argv.length === 0) {
    console.log(memberHelp);
    return argv.length === 0 ? 2 : 0;
  }
  const { values, positionals } = parseFlags(argv, { state: { type: 'string' }, json: { type: 'boolean' } }, true);
  const stateDir = values.state ?? '.bkv';
  const [action, ...args] = positionals;
  const need = (n: number, what: string) => {
    if (args.length !== n) throw new UsageError(`fleet member ${action} takes ${what} (got ${args.length} argument${args.length === 1 ? '' : 's'})`);
  };
  let req: MemberRequest;
  switch (action) {
    case 'add': need(1, 'NAME'); req = { op: 'add', name: args[0]! }; break;
    case 'remove': need(1, 'NAME'); req = { op: 'remove', name: args[0]! }; break;
    case 'replace': need(2, 'OLD NEW'); req = { op: 'replace', old: args[0]!, name: args[1]! }; break;
    default: throw new UsageError(`unknown member action '${(action ?? '').slice(0, 40)}' (add, remove, replace)`);
  }
  const rec = runningFleet(stateDir);
  const t0 = Date.now();
  const res = await postFleetMember(rec.operator, req, (line) => {
    if (!values.json) console.log(`bkv fleet member: ${line}`);
  });
  if (values.json) {
    console.log(JSON.stringify({ ok: true, ...res, seconds: Math.round((Date.now() - t0) / 100) / 10 }));
    return 0;
  }
  console.log(`bkv fleet member: done in ${((Date.now() - t0) / 1000).toFixed(1)} s; voters ${res.voters.join(', ')}${res.learners.length ? `; learners ${res.learners.join(', ')}` : ''}; leader ${res.leader ?? 'none'}`);
  return 0;
}

// ---- down ------------------------------------------------------------------------------------

async function down(argv: string[]): Promise<number> {
  if (wantsHelp(argv)) {
    console.log('usage: bkv fleet down [--state DIR]\n\nStops the `bkv fleet up` running on DIR (as Ctrl-C in its terminal would): ChatD, then the fleet.');
    return 0;
  }
  const { values } = parseFlags(argv, { state: { type: 'string' } });
  const stateDir = values.state ?? '.bkv';
  const rec = runningFleet(stateDir);
  process.kill(rec.pid, 'SIGTERM');
  for (let i = 0; i < 300 && pidAlive(rec.pid); i++) await new Promise((r) => setTimeout(r, 100));
  if (pidAlive(rec.pid)) throw new ServiceError('FLEET_STOP_TIMEOUT', `bkv fleet up (pid ${rec.pid}) did not stop within 30 s`);
  console.log(`bkv fleet: stopped the fleet and ChatD on ${stateDir}`);
  return 0;
}

export const command: Command = {
  name: 'fleet',
  summary: 'the vault as a Raft fleet of HSM replicas: up, status (--watch), fault injection, membership changes, down',
  help,
  async run(argv) {
    const [sub, ...rest] = argv;
    switch (sub) {
      case 'up':
        return up(rest);
      case 'status':
        return status(rest);
      case 'fault':
        return fault(rest);
      case 'member':
        return member(rest);
      case 'down':
        return down(rest);
      case undefined:
        console.error(help);
        return 2;
      default:
        throw new UsageError(`unknown fleet subcommand '${sub.slice(0, 40)}' (up, status, fault, member, down)`);
    }
  },
};
