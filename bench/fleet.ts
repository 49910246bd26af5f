// `npm run bench:fleet`: what a password recovery costs the fleet, and how long it takes.
//
// 1. Throughput, WAN model off (`--wan none`): recoveries per second of the five-replica fleet, as
//    wall-clock throughput and per CPU-second the fleet process spent (all its threads, from
//    /proc/PID/stat, read when the load generator marks the start and end of its timed phase).
//    Baseline in the same run, under the same load: the single vault (vault/main.ts: one replica,
//    solo log, no consensus), so the figure says what Raft and five tokens cost.
// 2. Latency, default WAN model: devices in each data center recover concurrently; p50/p99 per data
//    center next to the protocol floor (vault/fleet/wan.ts protocolFloor: two device round trips plus
//    one leader-to-quorum round trip) for a device there and the leader where it is.
//
// The load comes from bench/fleet-load.ts in its own process (its CPU is reported, never counted as
// the fleet's). Devices use the identity KSF: key stretching runs on the device, not in the vault.
// Everything is on loopback; bounded to about a minute and a half. Env: BENCH_SECONDS (timed phase
// length, default 12), BENCH_CONCURRENCY (throughput devices, default 50), BENCH_LAT_CONCURRENCY
// (devices per data center in the latency phase, default 2).
import { hopSecret } from '../protocol/hop-secret.ts';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { provision } from '../softhsm/provision.ts';
import { finalizeModule } from '../hsm-adapter/module.ts';
import { processCpuMs, startFleetService, startVault, type FleetService, type VaultService } from '../scripts/services.ts';
import { defaultWanConfig, deviceRttMs, protocolFloor } from '../vault/fleet/wan.ts';
import type { WireSuite } from '../protocol/wire.ts';
import type { LoadJob, LoadResult } from './fleet-load.ts';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 12);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 50);
const LAT_CONCURRENCY = Number(process.env.BENCH_LAT_CONCURRENCY ?? 2);
const SUITE: WireSuite = 'ristretto255-SHA512';
const RUN_JS = fileURLToPath(new URL('../bin/run.js', import.meta.url));
const LOAD = fileURLToPath(new URL('./fleet-load.ts', import.meta.url));

const log = (m: string) => process.stderr.write(`bench:fleet: ${m}\n`);
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

interface Measured {
  load: LoadResult;
  /** CPU the measured process(es) spent during the timed phase, ms. */
  subjectCpuMs: number | null;
}

/** Runs the load generator in its own process; reads `pid`'s CPU at its start and end markers. */
function runLoad(job: LoadJob, pid: number): Promise<Measured> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [RUN_JS, LOAD, JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let cpu0: number | null = null;
    let cpu1: number | null = null;
    let result: LoadResult | undefined;
    const err: string[] = [];
    createInterface({ input: child.stderr! }).on('line', (l) => err.push(l));
    createInterface({ input: child.stdout! }).on('line', (l) => {
      if (l === 'MEASURE_START') cpu0 = processCpuMs(pid);
      else if (l === 'MEASURE_END') cpu1 = processCpuMs(pid);
      else if (l.startsWith('{')) result = JSON.parse(l) as LoadResult;
    });
    child.once('exit', (code) => {
      if (code !== 0 || !result) return reject(new Error(`load generator exited ${code}: ${err.slice(-15).join(' | ')}`));
      resolve({ load: result, subjectCpuMs: cpu0 !== null && cpu1 !== null ? cpu1 - cpu0 : null });
    });
  });
}

async function waitForLeader(fleet: FleetService, timeoutMs = 30_000): Promise<string> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const s = await fleet.status().catch(() => undefined);
    if (s?.leader && s.replicas.every((r) => r.healthy)) return s.leader;
    if (Date.now() > until) throw new Error('no leader elected in time');
    await new Promise((r) => setTimeout(r, 200));
  }
}

function throughput(m: Measured) {
  const perSec = m.load.recoveries / (m.load.wallMs / 1000);
  return {
    recoveries: m.load.recoveries,
    errors: m.load.errors,
    errorCodes: Object.assign({}, ...m.load.groups.map((g) => g.errorCodes)),
    wallSeconds: round(m.load.wallMs / 1000, 2),
    recoveriesPerSecond: round(perSec),
    cpuSeconds: m.subjectCpuMs === null ? null : round(m.subjectCpuMs / 1000, 2),
    recoveriesPerCpuSecond: m.subjectCpuMs ? round(m.load.recoveries / (m.subjectCpuMs / 1000)) : null,
    p50Ms: m.load.p50Ms,
    p99Ms: m.load.p99Ms,
    generatorCpuSeconds: round(m.load.generatorCpuMs / 1000, 2),
  };
}

const stateDir = mkdtempSync(join(tmpdir(), 'bkv-bench-fleet-'));
const t0 = performance.now();
let fleet: FleetService | undefined;
let vault: VaultService | undefined;
try {
  log('provisioning five SoftHSM2 tokens');
  try {
    await provision({ stateDir, replicas: 5 });
  } finally {
    finalizeModule();
  }
  const sink = () => {};

  // ---- 1. throughput, WAN off: the fleet, then the single vault under the same load ----
  log('starting the fleet, WAN model off');
  fleet = await startFleetService({ stateDir, wan: 'none', onLine: sink });
  await waitForLeader(fleet);
  const statusNone = await fleet.status();
  const akeKey = fleet.keys[SUITE];
  const sessionKey = fleet.keys.session;
  const regions = statusNone.replicas.map((r) => r.region);
  const perRegion = Math.max(1, Math.round(CONCURRENCY / regions.length));
  const job = (fleetUrl: string, prefix: string, groups: LoadJob['groups'], regionHeader = true): LoadJob => ({
    fleetUrl,
    serverPublicKey: akeKey,
    sessionKey,
    relayKey: hopSecret(stateDir, 'relay'),
    suite: SUITE,
    userPrefix: prefix,
    groups,
    seconds: SECONDS,
    warmup: 2,
    regionHeader,
  });
  log(`throughput: ${perRegion * regions.length} devices spread over ${regions.length} data centers for ${SECONDS} s (leader ${statusNone.leader})`);
  const fleetTp = await runLoad(job(fleet.url, 'tp', regions.map((region) => ({ region, concurrency: perRegion, deviceRttMs: 0 }))), fleet.pid);
  const afterTp = await fleet.status();
  await fleet.stop();
  fleet = undefined;

  log('baseline: the single vault (one replica, solo log) under the same load');
  // Its own token: a replica's token anchors its log, so it cannot be shared with the fleet's us-east.
  const soloDir = join(stateDir, 'single');
  try {
    await provision({ stateDir: soloDir, replicas: 1 });
  } finally {
    finalizeModule();
  }
  vault = await startVault({ stateDir: soloDir, onLine: sink });
  const soloTp = await runLoad({ ...job(vault.url, 'solo', [{ region: regions[0]!, concurrency: perRegion * regions.length, deviceRttMs: 0 }], false), serverPublicKey: vault.keys[SUITE], sessionKey: vault.keys.session, relayKey: hopSecret(soloDir, 'relay') }, vault.pid);
  await vault.stop();
  vault = undefined;

  // ---- 2. latency, default WAN: devices in every data center at once ----
  log('starting the fleet, default WAN model');
  const wan = defaultWanConfig();
  fleet = await startFleetService({ stateDir, wan: 'default', onLine: sink });
  const leader = await waitForLeader(fleet);
  const statusWan = await fleet.status();
  const leaderRegion = statusWan.replicas.find((r) => r.name === leader)!.region;
  const wanRegions = statusWan.replicas.map((r) => r.region);
  log(`latency: ${LAT_CONCURRENCY} devices in each of ${wanRegions.length} data centers for ${SECONDS} s; leader ${leader}`);
  // Each device reaches the replica in its own data center (region hint) over its access network
  // (the generator adds that round trip); the entry replica forwards to the leader over the WAN model.
  const latGroups = wanRegions.map((region) => ({ region, concurrency: LAT_CONCURRENCY, deviceRttMs: deviceRttMs(wan, region, region) }));
  const lat = await runLoad(job(fleet.url, 'lat', latGroups), fleet.pid);
  const afterLat = await fleet.status();
  const leaderChanged = afterLat.leader !== leader;
  await fleet.stop();
  fleet = undefined;

  const ft = throughput(fleetTp);
  const st = throughput(soloTp);
  const out = {
    bench: 'fleet',
    machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version },
    method: {
      load: 'bench/fleet-load.ts in its own process plays ChatD and the devices: relay requests straight to the fleet front, region hint header = the device\'s data center; its CPU is reported but not counted',
      ksf: 'identity (key stretching is device-side work, not the vault\'s)',
      baseline: 'vault/main.ts: one replica on a solo log (its own one-token state: a token anchors exactly one log), same load, same generator',
      suite: SUITE,
      fleetCpu: 'utime+stime of the fleet process (all worker threads) from /proc/PID/stat, read at the generator\'s start/end markers (10 ms resolution)',
      deviceRtt: 'the generator waits deviceRtt/2 before each request and after its reply: device <-> its data center (intra-region RTT + deviceAccessRttMs of the WAN config); entry replica -> leader -> quorum crosses the fleet\'s WAN model',
      timedSeconds: SECONDS,
      floor: 'protocolFloor (vault/fleet/wan.ts): 2 x device<->leader RTT + 1 leader->quorum RTT (the attempt commits before KE2). floorWithResetCommit adds the second quorum round trip the default policy needs: a correct KE3 commits the counter reset before K is released',
    },
    throughputWanNone: {
      fleet: { replicas: regions.length, leader: statusNone.leader, devices: perRegion * regions.length, ...ft, leaderAfter: afterTp.leader },
      baselineSingleVault: { replicas: 1, devices: perRegion * regions.length, ...st },
      fleetVsSingleVault: {
        wallClock: st.recoveriesPerSecond ? round(ft.recoveriesPerSecond / st.recoveriesPerSecond, 2) : null,
        perCpuSecond: ft.recoveriesPerCpuSecond && st.recoveriesPerCpuSecond ? round(ft.recoveriesPerCpuSecond / st.recoveriesPerCpuSecond, 2) : null,
      },
    },
    latencyWanDefault: {
      leader,
      leaderRegion,
      leaderChangedDuringRun: leaderChanged,
      devicesPerDataCenter: LAT_CONCURRENCY,
      byDeviceDataCenter: lat.load.groups.map((g) => {
        const floor = protocolFloor(wan, g.region, leaderRegion, wanRegions);
        return {
          device: g.region,
          recoveries: g.recoveries,
          errors: g.errors,
          p50Ms: g.p50Ms,
          p99Ms: g.p99Ms,
          floorMs: round(floor.floorMs),
          floor: { deviceRttMs: floor.deviceRttMs, quorumRttMs: floor.quorumRttMs },
          floorWithResetCommitMs: round(floor.floorMs + floor.quorumRttMs),
          p50OverFloorMs: round(g.p50Ms - floor.floorMs),
          p50OverFloor: round(g.p50Ms / floor.floorMs, 2),
        };
      }),
      generatorCpuSeconds: round(lat.load.generatorCpuMs / 1000, 2),
    },
    totalSeconds: round((performance.now() - t0) / 1000),
  };
  process.stdout.write(JSON.stringify(out, null, 2) + '\n');
} finally {
  await fleet?.stop();
  await vault?.stop();
  rmSync(stateDir, { recursive: true, force: true });
}
