// The WAN between data centers, as a pure model: given who sends to whom and when, it says when the
// message arrives or why it is lost. No timers and no clock of its own (the caller passes `now`), and
// its only randomness is a seeded PRNG, so a simulator replays a run exactly from its seed, while the
// threaded transports apply the same decisions with real timers.
//
// Link state (partitions, one-way blocks, degraded nodes) lives in an Int32Array that may sit on a
// SharedArrayBuffer: the main thread flips links while worker threads decide, without messages.
import { readFileSync } from 'node:fs';
import { InputError } from '../../protocol/errors.ts';

export const WAN_CONFIG_VERSION = 1;

export interface WanJitter {
  /** Each one-way delay is stretched by a uniform factor in [0, proportional) of itself. */
  proportional: number;
  /** Probability that a message also takes a lognormal tail delay (queueing, retransmits). */
  tailProbability: number;
  /** Median of that tail, ms. */
  tailMedianMs: number;
  /** Sigma of the tail's underlying normal. */
  tailSigma: number;
}

export interface WanConfig {
  version: typeof WAN_CONFIG_VERSION;
  /** Where the figures come from (free text, kept so reports can cite it). */
  source?: string;
  /** Data centers. Empty together with `none: true`: every region is allowed and all delays are 0. */
  regions: string[];
  /** Symmetric round-trip times between distinct regions, ms; each pair given in one or both directions. */
  rttMs: Record<string, Record<string, number>>;
  /** Round trip between two nodes in the same region, ms. */
  intraRegionRttMs: number;
  /** Extra round trip between a device and any replica (its access network), ms. */
  deviceAccessRttMs: number;
  jitter: WanJitter;
  /** Independent loss probability per message. */
  lossRate: number;
  /** Links keep FIFO order (like a TCP stream): jitter never lets a later message overtake. */
  fifo: boolean;
  /** The zero-delay model (`--wan none`). */
  none?: boolean;
}

/** A WAN file or object that does not validate. `field` names the offending path, e.g. `rttMs.eu-west.sa-east`. */
export class WanConfigError extends InputError {
  readonly field: string;
  constructor(origin: string, field: string, problem: string) {
    super(`${origin}: ${field}: ${problem}`, 'WAN_CONFIG_INVALID');
    this.field = field;
  }
}

/** Misuse of the model at run time: an unknown node or region. */
export class WanError extends InputError {
  constructor(message: string, code = 'WAN_UNKNOWN_NODE') {
    super(message, code);
  }
}

const NO_JITTER: WanJitter = { proportional: 0, tailProbability: 0, tailMedianMs: 0, tailSigma: 0 };

/** Zero delay, no loss; partitions still work. */
export function noneWanConfig(): WanConfig {
  return {
    version: WAN_CONFIG_VERSION, source: 'none: zero delay', regions: [], rttMs: {},
    intraRegionRttMs: 0, deviceAccessRttMs: 0, jitter: { ...NO_JITTER }, lossRate: 0, fifo: true, none: true,
  };
}

/** The five-data-center default (vault/fleet/wan-default.json). */
export function defaultWanConfig(): WanConfig {
  return readWanConfigFile(new URL('./wan-default.json', import.meta.url).pathname);
}

/** `--wan` argument: `none`, `default`, or a JSON file path. */
export function resolveWanConfig(arg: string | undefined): WanConfig {
  if (arg === undefined || arg === 'default') return defaultWanConfig();
  if (arg === 'none') return noneWanConfig();
  return readWanConfigFile(arg);
}

export function readWanConfigFile(path: string): WanConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new WanConfigError(path, '(file)', `cannot read: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  return parseWanConfigText(text, path);
}

/** A WAN config file's text, as `--wan FILE` holds it. */
export function parseWanConfigText(text: string, origin: string): WanConfig {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new WanConfigError(origin, '(file)', `not JSON: ${(e as Error).message}`);
  }
  return parseWanConfig(json, origin);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Validates an untrusted value (parsed JSON) into a WanConfig; the first problem wins. */
export function parseWanConfig(input: unknown, origin = 'wan config'): WanConfig {
  const fail = (field: string, problem: string): never => { throw new WanConfigError(origin, field, problem); };
  if (!isObject(input)) fail('(root)', 'must be an object');
  const o = input as Record<string, unknown>;
  const known = new Set(['version', 'source', 'regions', 'rttMs', 'intraRegionRttMs', 'deviceAccessRttMs', 'jitter', 'lossRate', 'fifo', 'none']);
  for (const k of Object.keys(o)) if (!known.has(k)) fail(k, 'unknown field');
  if (o.version !== WAN_CONFIG_VERSION) fail('version', `must be ${WAN_CONFIG_VERSION}`);
  if (o.source !== undefined && typeof o.source !== 'string') fail('source', 'must be a string');
  if (o.none !== undefined && typeof o.none !== 'boolean') fail('none', 'must be a boolean');
  const none = o.none === true;

  const ms = (field: string, v: unknown, max = 60_000): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > max) fail(field, `must be a number of ms in [0, ${max}]`);
    return v as number;
  };
  const prob = (field: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 1) fail(field, 'must be a probability in [0, 1]');
    return v as number;
  };

  if (!Array.isArray(o.regions)) fail('regions', 'must be an array of region names');
  const regions = o.regions as unknown[];
  if (!none && regions.length === 0) fail('regions', 'must name at least one region');
  const seen = new Set<string>();
  regions.forEach((r, i) => {
    if (typeof r !== 'string' || !/^[a-z0-9][a-z0-9-]{0,62}$/.test(r)) fail(`regions[${i}]`, 'must match [a-z0-9][a-z0-9-]*');
    if (seen.has(r as string)) fail(`regions[${i}]`, `duplicate region ${r as string}`);
    seen.add(r as string);
  });

  if (!isObject(o.rttMs)) fail('rttMs', 'must be an object of objects');
  const rttIn = o.rttMs as Record<string, unknown>;
  const rttMs: Record<string, Record<string, number>> = {};
  for (const [a, row] of Object.entries(rttIn)) {
    if (!seen.has(a)) fail(`rttMs.${a}`, 'is not in regions');
    if (!isObject(row)) fail(`rttMs.${a}`, 'must be an object');
    for (const [b, v] of Object.entries(row as Record<string, unknown>)) {
      if (!seen.has(b)) fail(`rttMs.${a}.${b}`, 'is not in regions');
      if (a === b) fail(`rttMs.${a}.${b}`, 'same region: use intraRegionRttMs');
      const val = ms(`rttMs.${a}.${b}`, v);
      const back = (rttIn[b] as Record<string, unknown> | undefined)?.[a];
      if (typeof back === 'number' && back !== val) fail(`rttMs.${a}.${b}`, `disagrees with rttMs.${b}.${a} (round trips are symmetric)`);
      (rttMs[a] ??= {})[b] = val;
    }
  }
  const list = regions as string[];
  for (let i = 0; i < list.length; i++) {
    for (let j = i + 1; j < list.length; j++) {
      const a = list[i]!, b = list[j]!;
      if (rttMs[a]?.[b] === undefined && rttMs[b]?.[a] === undefined) fail(`rttMs.${a}.${b}`, 'missing (give each pair in one direction)');
    }
  }

  const intraRegionRttMs = ms('intraRegionRttMs', o.intraRegionRttMs);
  const deviceAccessRttMs = o.deviceAccessRttMs === undefined ? 0 : ms('deviceAccessRttMs', o.deviceAccessRttMs);
  let jitter: WanJitter = { ...NO_JITTER };
  if (o.jitter !== undefined) {
    if (!isObject(o.jitter)) fail('jitter', 'must be an object');
    const j = o.jitter as Record<string, unknown>;
    for (const k of Object.keys(j)) if (!(k in NO_JITTER)) fail(`jitter.${k}`, 'unknown field');
    const p = j.proportional ?? 0;
    if (typeof p !== 'number' || !Number.isFinite(p) || p < 0 || p > 10) fail('jitter.proportional', 'must be a number in [0, 10]');
    const sigma = j.tailSigma ?? 0;
    if (typeof sigma !== 'number' || !Number.isFinite(sigma) || sigma < 0 || sigma > 5) fail('jitter.tailSigma', 'must be a number in [0, 5]');
    jitter = {
      proportional: p as number,
      tailProbability: prob('jitter.tailProbability', j.tailProbability ?? 0),
      tailMedianMs: ms('jitter.tailMedianMs', j.tailMedianMs ?? 0),
      tailSigma: sigma as number,
    };
  }
  const lossRate = o.lossRate === undefined ? 0 : prob('lossRate', o.lossRate);
  if (o.fifo !== undefined && typeof o.fifo !== 'boolean') fail('fifo', 'must be a boolean');
  const cfg: WanConfig = {
    version: WAN_CONFIG_VERSION, regions: [...list], rttMs, intraRegionRttMs, deviceAccessRttMs, jitter, lossRate,
    fifo: o.fifo !== false,
  };
  if (typeof o.source === 'string') cfg.source = o.source;
  if (none) cfg.none = true;
  return cfg;
}

/** Round trip between two regions per the matrix (no jitter), ms. */
export function regionRttMs(cfg: WanConfig, a: string, b: string): number {
  if (cfg.none) return 0;
  if (!cfg.regions.includes(a)) throw new WanError(`unknown region ${a}`, 'WAN_UNKNOWN_REGION');
  if (!cfg.regions.includes(b)) throw new WanError(`unknown region ${b}`, 'WAN_UNKNOWN_REGION');
  if (a === b) return cfg.intraRegionRttMs;
  return cfg.rttMs[a]?.[b] ?? cfg.rttMs[b]![a]!;
}

/** Round trip between a device in `deviceRegion` and a replica in `replicaRegion`, ms. */
export function deviceRttMs(cfg: WanConfig, deviceRegion: string, replicaRegion: string): number {
  return regionRttMs(cfg, deviceRegion, replicaRegion) + (cfg.none ? 0 : cfg.deviceAccessRttMs);
}

export interface ProtocolFloor {
  /** Device <-> leader round trip, ms (taken twice: KE1/KE2, then KE3/reply). */
  deviceRttMs: number;
  /** Leader -> quorum round trip: the RTT to the (majority-1)-th nearest other replica, ms. */
  quorumRttMs: number;
  /** 2 * deviceRttMs + quorumRttMs. */
  floorMs: number;
}

/**
 * The least latency any protocol in this design can achieve for one password recovery: two device
 * round trips plus one leader-to-quorum round trip (the attempt must commit before KE2 leaves).
 * `replicaRegions` lists every replica's region, the leader's included (once per replica).
 */
export function protocolFloor(cfg: WanConfig, deviceRegion: string, leaderRegion: string, replicaRegions: readonly string[]): ProtocolFloor {
  const others = [...replicaRegions];
  const self = others.indexOf(leaderRegion);
  if (self < 0) throw new WanError(`leader region ${leaderRegion} is not among the replicas`, 'WAN_UNKNOWN_REGION');
  others.splice(self, 1);
  const majority = Math.floor(replicaRegions.length / 2) + 1;
  const rtts = others.map((r) => regionRttMs(cfg, leaderRegion, r)).sort((x, y) => x - y);
  const need = majority - 1;
  const quorumRttMs = need === 0 ? 0 : rtts[need - 1]!;
  const d = deviceRttMs(cfg, deviceRegion, leaderRegion);
  return { deviceRttMs: d, quorumRttMs, floorMs: 2 * d + quorumRttMs };
}

/** xoshiro128** seeded through splitmix32; identical on every platform, so a seed replays. */
export class WanRng {
  private s = new Uint32Array(4);
  constructor(seed: number | string) {
    let x = typeof seed === 'number' ? seed >>> 0 : hashString(seed);
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }
  u32(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1]!, 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1]! << 9) >>> 0;
    s[2]! ^= s[0]!; s[3]! ^= s[1]!; s[1]! ^= s[2]!; s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return r;
  }
  /** Uniform in [0, 1). */
  float(): number { return this.u32() / 4294967296; }
  /** Standard normal (Box-Muller; one draw per call keeps the stream simple to reason about). */
  normal(): number {
    const u1 = (this.u32() + 1) / 4294967297;
    const u2 = this.float();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** FNV-1a, so string seeds (e.g. `${fleetSeed}/${replica}`) give independent streams. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

export type NodeKind = 'replica' | 'device';
export interface WanNode {
  name: string;
  region: string;
  kind?: NodeKind;
}

export type WanDecision =
  | { deliverAt: number; delayMs: number }
  | { dropped: 'partition' | 'loss' };

/** How a link table is laid out in its Int32Array (n nodes): n*n block flags, then per node loss (ppm) and extra delay (us). */
export function linkTableLength(nodes: number): number {
  return nodes * nodes + nodes * 2;
}

/**
 * Which directed links are cut, and which nodes are degraded. Backed by an Int32Array that may live
 * on a SharedArrayBuffer, so one LinkTable in the main thread steers the WanModels in every worker.
 */
export class LinkTable {
  readonly names: readonly string[];
  private readonly index = new Map<string, number>();
  readonly cells: Int32Array;
  constructor(names: readonly string[], cells?: Int32Array) {
    this.names = [...names];
    this.names.forEach((n, i) => {
      if (this.index.has(n)) throw new WanError(`duplicate node ${n}`, 'WAN_DUPLICATE_NODE');
      this.index.set(n, i);
    });
    const len = linkTableLength(names.length);
    if (cells && cells.length !== len) throw new WanError(`link table has ${cells.length} cells, want ${len}`, 'WAN_BAD_LINK_TABLE');
    this.cells = cells ?? new Int32Array(len);
  }
  /** A table whose cells live in shared memory (pass `.cells` to workers). */
  static shared(names: readonly string[]): LinkTable {
    const len = linkTableLength(names.length);
    return new LinkTable(names, new Int32Array(new SharedArrayBuffer(len * 4)));
  }
  indexOf(node: string): number {
    const i = this.index.get(node);
    if (i === undefined) throw new WanError(`unknown node ${node}`);
    return i;
  }
  private set(from: string, to: string, v: number): void {
    Atomics.store(this.cells, this.indexOf(from) * this.names.length + this.indexOf(to), v);
  }
  blocked(from: string, to: string): boolean {
    return Atomics.load(this.cells, this.indexOf(from) * this.names.length + this.indexOf(to)) !== 0;
  }
  /** One-way: `from` can no longer reach `to` (the reverse direction is untouched). */
  block(from: string, to: string): void { if (from !== to) this.set(from, to, 1); }
  unblock(from: string, to: string): void { this.set(from, to, 0); }
  /**
   * Symmetric partition: nodes in different groups cannot talk. Nodes listed in no group keep all
   * their links, which is how a bridge (or ring) partition is built. Adds to existing cuts.
   */
  partition(groups: readonly (readonly string[])[]): void {
    const group = new Map<string, number>();
    groups.forEach((g, gi) => g.forEach((n) => {
      this.indexOf(n);
      if (group.has(n)) throw new WanError(`node ${n} is in two partition groups`, 'WAN_BAD_PARTITION');
      group.set(n, gi);
    }));
    for (const [a, ga] of group) for (const [b, gb] of group) if (ga !== gb) this.block(a, b);
  }
  /** Cut every link to and from `node`. */
  isolate(node: string): void {
    for (const other of this.names) if (other !== node) { this.block(node, other); this.block(other, node); }
  }
  /** Make `node` slow or lossy (a bad continent): applies to everything it sends or receives. */
  degrade(node: string, opts: { lossRate?: number; extraDelayMs?: number }): void {
    const n = this.names.length, i = this.indexOf(node);
    const loss = opts.lossRate ?? 0, extra = opts.extraDelayMs ?? 0;
    if (!(loss >= 0 && loss <= 1)) throw new WanError('lossRate must be in [0, 1]', 'WAN_BAD_DEGRADE');
    if (!(extra >= 0 && extra <= 600_000)) throw new WanError('extraDelayMs must be in [0, 600000]', 'WAN_BAD_DEGRADE');
    Atomics.store(this.cells, n * n + 2 * i, Math.round(loss * 1e6));
    Atomics.store(this.cells, n * n + 2 * i + 1, Math.round(extra * 1000));
  }
  degradation(node: string): { lossRate: number; extraDelayMs: number } {
    const n = this.names.length, i = this.indexOf(node);
    return {
      lossRate: Atomics.load(this.cells, n * n + 2 * i) / 1e6,
      extraDelayMs: Atomics.load(this.cells, n * n + 2 * i + 1) / 1000,
    };
  }
  /** Restore every link and undo every degradation. */
  heal(): void {
    for (let i = 0; i < this.cells.length; i++) Atomics.store(this.cells, i, 0);
  }
}

export interface WanModelOptions {
  config: WanConfig;
  nodes: readonly WanNode[];
  seed: number | string;
  /** Cells of a shared LinkTable built over the same node list (same order). */
  linkCells?: Int32Array;
}

/**
 * decide() answers for one message. Calls draw from one PRNG stream, so the same seed and the same
 * sequence of calls give the same answers. With `fifo`, a link never lets a message overtake the
 * previous one on that link (like a TCP stream); set `fifo: false` to let jitter reorder.
 */
export class WanModel {
  readonly config: WanConfig;
  readonly links: LinkTable;
  private readonly rng: WanRng;
  private readonly region = new Map<string, string>();
  private readonly kind = new Map<string, NodeKind>();
  private readonly lastDeliver = new Map<string, number>();

  constructor(opts: WanModelOptions) {
    this.config = opts.config;
    for (const n of opts.nodes) {
      if (!opts.config.none && !opts.config.regions.includes(n.region)) {
        throw new WanError(`node ${n.name}: unknown region ${n.region}`, 'WAN_UNKNOWN_REGION');
      }
      this.region.set(n.name, n.region);
      this.kind.set(n.name, n.kind ?? 'replica');
    }
    this.links = new LinkTable(opts.nodes.map((n) => n.name), opts.linkCells);
    this.rng = new WanRng(opts.seed);
  }

  regionOf(node: string): string {
    const r = this.region.get(node);
    if (r === undefined) throw new WanError(`unknown node ${node}`);
    return r;
  }

  /** The modelled round trip between two nodes without jitter, ms. */
  baseRttMs(from: string, to: string): number {
    const rtt = regionRttMs(this.config, this.regionOf(from), this.regionOf(to));
    const device = this.kind.get(from) === 'device' || this.kind.get(to) === 'device';
    return device && !this.config.none ? rtt + this.config.deviceAccessRttMs : rtt;
  }

  decide(from: string, to: string, now: number): WanDecision {
    this.regionOf(from); this.regionOf(to);
    // Always draw the same number of values per call, so one message's fate never shifts the
    // sequence of the next (a partition or a loss-rate change leaves other messages' delays alone).
    const uLoss = this.rng.float(), uProp = this.rng.float(), uTail = this.rng.float(), z = this.rng.normal();
    if (this.links.blocked(from, to)) return { dropped: 'partition' };
    const cfg = this.config;
    const df = this.links.degradation(from), dt = this.links.degradation(to);
    const pass = (1 - cfg.lossRate) * (1 - df.lossRate) * (1 - dt.lossRate);
    if (uLoss >= pass) return { dropped: 'loss' };
    // `none` zeroes the matrix and its jitter; a degraded (slow) node still adds its extra delay.
    const oneWay = cfg.none ? 0 : this.baseRttMs(from, to) / 2;
    let delay = oneWay * (1 + cfg.jitter.proportional * uProp) + df.extraDelayMs + dt.extraDelayMs;
    if (!cfg.none && uTail < cfg.jitter.tailProbability && cfg.jitter.tailMedianMs > 0) {
      delay += cfg.jitter.tailMedianMs * Math.exp(cfg.jitter.tailSigma * z);
    }
    const at = cfg.fifo ? this.fifo(from, to, now + delay) : now + delay;
    return { deliverAt: at, delayMs: at - now };
  }

  private fifo(from: string, to: string, at: number): number {
    const key = `${from}\u0000${to}`;
    const t = Math.max(at, this.lastDeliver.get(key) ?? -Infinity);
    this.lastDeliver.set(key, t);
    return t;
  }
}
