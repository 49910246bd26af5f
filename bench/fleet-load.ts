// The load generator of `npm run bench:fleet`, in its own process so that its CPU (it does as much
// elliptic-curve work as the vault: the device side of every OPAQUE login) is not counted as the
// fleet's. It plays ChatD and the devices at once: it POSTs relay requests (protocol/relay.ts) straight
// to the fleet's front, naming the device's data center in the region hint header, so the request
// enters the fleet at the replica in that data center (which forwards to the leader). ChatD is left out
// on purpose: it is not the vault, and its per-account rate limits would be what we measured.
//
// Devices stretch passwords with the identity KSF: key stretching runs on the device, never in the
// vault, so it is no part of the vault's cost and would only slow the generator down.
//
// A device's own network is simulated here: each request waits `deviceRttMs / 2` before it is sent
// and again after its reply arrives (the device <-> data center round trip). What happens inside the
// fleet (entry replica -> leader -> quorum) crosses the fleet's own WAN model.
//
// Input: one JSON argument (LoadJob). Output on stdout: `MEASURE_START` when the timed phase begins,
// `MEASURE_END` when it ends, then one line of JSON (LoadResult). The parent reads the fleet's CPU
// time at the two markers.
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { enablePassword, recoverK, type PasswordOptions, type Send } from '../client/password.ts';
import { identityKsf } from '../protocol/opaque/index.ts';
import { RELAY_PATH, decodeRelayReply, encodeRelayRequest } from '../protocol/relay.ts';
import type { WireSuite } from '../protocol/wire.ts';
import { REGION_HEADER } from '../vault/fleet/fleet-types.ts';
import { pathToFileURL } from 'node:url';


export interface LoadGroup {
  /** The devices' data center: the region hint sent with each request. */
  region: string;
  /** Devices recovering in parallel, each with its own user. */
  concurrency: number;
  /** The device <-> data-center round trip this generator adds per request, ms. */
  deviceRttMs: number;
}

export interface LoadJob {
  fleetUrl: string;
  /** The fleet's AKE public key for `suite`, hex (what devices pin). */
  serverPublicKey: string;
  /** The vault's session key (hex), pinned. */
  sessionKey: string;
  /** The relay key of the vault's state directory (the generator stands where ChatD stands). */
  relayKey: string;
  suite: WireSuite;
  /** A prefix that makes this job's user names unique in the fleet. */
  userPrefix: string;
  groups: LoadGroup[];
  /** Length of the timed phase. */
  seconds: number;
  /** Untimed recoveries per device before the timed phase (JIT, connections, caches). */
  warmup: number;
  /** Sent as the region hint, or left out (a front that ignores it picks for us). */
  regionHeader?: boolean;
}

export interface GroupResult {
  region: string;
  recoveries: number;
  errors: number;
  errorCodes: Record<string, number>;
  /** Recovery latencies (ms), sorted. */
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
  maxMs: number;
}

export interface LoadResult {
  wallMs: number;
  recoveries: number;
  errors: number;
  /** Over every device of the job. */
  p50Ms: number;
  p99Ms: number;
  groups: GroupResult[];
  /** This process's CPU during the timed phase (what the fleet's figures exclude), ms. */
  generatorCpuMs: number;
  registerMs: number;
}

const sleep = (ms: number) => (ms > 0 ? new Promise<void>((r) => setTimeout(r, ms)) : Promise.resolve());

class LoadError extends Error {
  constructor(readonly code: string) {
    super(code);
  }
}

function makeSend(fleetUrl: string, relayKey: string, agent: http.Agent, user: string, region: string | undefined, deviceRttMs: number): Send {
  const target = new URL(RELAY_PATH, fleetUrl);
  const post = (body: Uint8Array) =>
    new Promise<Uint8Array>((resolve, reject) => {
      const envelope = encodeRelayRequest({ user, body });
      const req = http.request(target, {
        method: 'POST',
        agent,
        headers: { 'content-type': 'application/msgpack', 'content-length': envelope.length, authorization: `Bearer ${relayKey}`, ...(region ? { [REGION_HEADER]: region } : {}) },
        timeout: 30_000,
      });
      req.on('timeout', () => req.destroy(new LoadError('TIMEOUT')));
      req.on('error', (e) => reject(e instanceof LoadError ? e : new LoadError('CONNECTION')));
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', () => reject(new LoadError('CONNECTION')));
        res.on('end', () => {
          try {
            const r = decodeRelayReply(new Uint8Array(Buffer.concat(chunks)));
            if (r.ok) resolve(r.body);
            else reject(new LoadError(r.code));
          } catch {
            reject(new LoadError(`HTTP_${res.statusCode}`));
          }
        });
      });
      req.end(envelope);
    });
  return async (body) => {
    await sleep(deviceRttMs / 2);
    const reply = await post(body);
    await sleep(deviceRttMs / 2);
    return reply;
  };
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

const round = (x: number) => Math.round(x * 10) / 10;

export async function runLoad(job: LoadJob, mark: (m: string) => void = () => {}): Promise<LoadResult> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1024 });
  const password = `bench password ${randomBytes(4).toString('hex')}`;
  interface Device { group: number; user: string; send: Send; opts: PasswordOptions }
  const devices: Device[] = [];
  job.groups.forEach((g, gi) => {
    for (let i = 0; i < g.concurrency; i++) {
      const user = `${job.userPrefix}-${g.region}-${i}`;
      const opts: PasswordOptions = { user, serverPublicKey: new Uint8Array(Buffer.from(job.serverPublicKey, 'hex')), sessionKey: new Uint8Array(Buffer.from(job.sessionKey, 'hex')), suite: job.suite, ksf: identityKsf };
      devices.push({ group: gi, user, opts, send: makeSend(job.fleetUrl, job.relayKey, agent, user, job.regionHeader === false ? undefined : g.region, g.deviceRttMs) });
    }
  });

  // Registration (and warm-up) are not timed; they run without the simulated device delay's effect
  // on the figures, but through the same path.
  const r0 = performance.now();
  await Promise.all(
    devices.map(async (d) => {
      const k = new Uint8Array(randomBytes(32));
      await retry(() => enablePassword(d.send, d.opts, password, k));
      for (let i = 0; i < job.warmup; i++) (await retry(() => recoverK(d.send, d.opts, password))).fill(0);
    }),
  );
  const registerMs = performance.now() - r0;

  const lat: number[][] = job.groups.map(() => []);
  const errs: Record<string, number>[] = job.groups.map(() => ({}));
  mark('MEASURE_START');
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const until = t0 + job.seconds * 1000;
  await Promise.all(
    devices.map(async (d) => {
      while (performance.now() < until) {
        const s = performance.now();
        try {
          const k = await recoverK(d.send, d.opts, password);
          k.fill(0);
          lat[d.group]!.push(performance.now() - s);
        } catch (e) {
          const code = e instanceof LoadError ? e.code : ((e as { code?: string }).code ?? 'ERROR');
          errs[d.group]![code] = (errs[d.group]![code] ?? 0) + 1;
          await sleep(50);
        }
      }
    }),
  );
  const wallMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  mark('MEASURE_END');
  agent.destroy();
  const groups = job.groups.map((g, gi): GroupResult => {
    const l = lat[gi]!.sort((a, b) => a - b);
    const errors = Object.values(errs[gi]!).reduce((a, b) => a + b, 0);
    return {
      region: g.region,
      recoveries: l.length,
      errors,
      errorCodes: errs[gi]!,
      p50Ms: round(percentile(l, 50)),
      p99Ms: round(percentile(l, 99)),
      meanMs: round(l.reduce((a, b) => a + b, 0) / Math.max(1, l.length)),
      maxMs: round(l[l.length - 1] ?? NaN),
    };
  });
  const all = lat.flat().sort((a, b) => a - b);
  return {
    wallMs: round(wallMs),
    recoveries: groups.reduce((a, g) => a + g.recoveries, 0),
    p50Ms: round(percentile(all, 50)),
    p99Ms: round(percentile(all, 99)),
    errors: groups.reduce((a, g) => a + g.errors, 0),
    groups,
    generatorCpuMs: round((cpu.user + cpu.system) / 1000),
    registerMs: round(registerMs),
  };
}

/** Set-up requests may meet an election: retry unavailability for a while, nothing else. */
async function retry<T>(f: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await f();
    } catch (e) {
      const code = (e as { code?: string; vaultCode?: string }).vaultCode ?? (e as { code?: string }).code ?? '';
      if (i >= 50 || !/UNAVAILABLE|NOT_LEADER|TIMEOUT|CONNECTION|NO_LEADER|HTTP_5/.test(code)) throw e;
      await sleep(200);
    }
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const job = JSON.parse(process.argv[2] ?? '{}') as LoadJob;
  const result = await runLoad(job, (m) => process.stdout.write(`${m}\n`));
  process.stdout.write(JSON.stringify(result) + '\n');
}
