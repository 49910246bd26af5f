// The WAN model: a pure, seeded function from (from, to, now) to a delivery time or a drop.
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  LinkTable, WanConfigError, WanError, WanModel, defaultWanConfig, noneWanConfig, parseWanConfig, protocolFloor,
  readWanConfigFile, regionRttMs, resolveWanConfig, type WanConfig, type WanNode,
} from '../../vault/fleet/wan.ts';

const dir = mkdtempSync(join(tmpdir(), 'bkv-wan-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const FIVE: WanNode[] = ['us-east', 'us-west', 'eu-west', 'ap-southeast', 'sa-east'].map((r) => ({ name: `r-${r}`, region: r }));

function tiny(over: Record<string, unknown> = {}): WanConfig {
  return parseWanConfig({
    version: 1, regions: ['a', 'b', 'c'], rttMs: { a: { b: 20, c: 200 }, b: { c: 100 } },
    intraRegionRttMs: 2, jitter: { proportional: 0 }, lossRate: 0, ...over,
  });
}

function run(model: WanModel, n: number): string[] {
  const names = model.links.names;
  const out: string[] = [];
  for (let k = 0; k < n; k++) {
    const from = names[k % names.length]!, to = names[(k * 7 + 1) % names.length]!;
    out.push(JSON.stringify(model.decide(from, to, k * 3)));
  }
  return out;
}

describe('WAN configuration', () => {
  it('loads the default five data centers with a symmetric matrix and a cited source', () => {
    const cfg = defaultWanConfig();
    expect(cfg.regions).toEqual(['us-east', 'us-west', 'eu-west', 'ap-southeast', 'sa-east']);
    expect(cfg.source).toMatch(/https:\/\//);
    for (const a of cfg.regions) for (const b of cfg.regions) {
      expect(regionRttMs(cfg, a, b)).toBe(regionRttMs(cfg, b, a));
      if (a !== b) expect(regionRttMs(cfg, a, b)).toBeGreaterThan(50);
    }
    expect(regionRttMs(cfg, 'us-east', 'us-east')).toBe(cfg.intraRegionRttMs);
    expect(resolveWanConfig(undefined)).toEqual(cfg);
    expect(resolveWanConfig('none').none).toBe(true);
  });

  it('names the bad field in typed errors', () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ rttMs: { a: { b: 20 }, b: { c: 100 } } }, 'rttMs.a.c'],
      [{ rttMs: { a: { b: 20, c: 200 }, b: { c: 100, a: 21 } } }, 'rttMs.a.b'],
      [{ rttMs: { a: { b: -1, c: 200 }, b: { c: 100 } } }, 'rttMs.a.b'],
      [{ rttMs: { a: { b: 20, c: 200, z: 5 }, b: { c: 100 } } }, 'rttMs.a.z'],
      [{ rttMs: { a: { a: 1, b: 20, c: 200 }, b: { c: 100 } } }, 'rttMs.a.a'],
      [{ lossRate: 1.5 }, 'lossRate'],
      [{ jitter: { proportional: 'lots' } }, 'jitter.proportional'],
      [{ jitter: { tailProbability: -0.1 } }, 'jitter.tailProbability'],
      [{ jitter: { spikes: 1 } }, 'jitter.spikes'],
      [{ regions: ['a', 'b', 'a'] }, 'regions[2]'],
      [{ regions: ['a', 'B c'] }, 'regions[1]'],
      [{ version: 2 }, 'version'],
      [{ intraRegionRttMs: 'fast' }, 'intraRegionRttMs'],
      [{ fifo: 'yes' }, 'fifo'],
      [{ colour: 'blue' }, 'colour'],
    ];
    for (const [over, field] of cases) {
      let err: unknown;
      try { tiny(over); } catch (e) { err = e; }
      expect(err, field).toBeInstanceOf(WanConfigError);
      expect((err as WanConfigError).code).toBe('WAN_CONFIG_INVALID');
      expect((err as WanConfigError).field).toBe(field);
    }
  });

  it('reads files and refuses unreadable or non-JSON ones', () => {
    const good = join(dir, 'good.json');
    writeFileSync(good, JSON.stringify({ version: 1, regions: ['x', 'y'], rttMs: { y: { x: 42 } }, intraRegionRttMs: 0.5 }));
    expect(regionRttMs(readWanConfigFile(good), 'x', 'y')).toBe(42);
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, '{ "version": 1,');
    expect(() => readWanConfigFile(bad)).toThrow(WanConfigError);
    expect(() => resolveWanConfig(join(dir, 'missing.json'))).toThrow(/cannot read/);
  });
});

describe('WAN model decisions', () => {
  it('is fully determined by its seed', () => {
    const cfg = { ...defaultWanConfig(), lossRate: 0.05, jitter: { proportional: 0.1, tailProbability: 0.2, tailMedianMs: 15, tailSigma: 1 } };
    const a = run(new WanModel({ config: cfg, nodes: FIVE, seed: 'seed-1' }), 2000);
    const b = run(new WanModel({ config: cfg, nodes: FIVE, seed: 'seed-1' }), 2000);
    const c = run(new WanModel({ config: cfg, nodes: FIVE, seed: 'seed-2' }), 2000);
    expect(a).toEqual(b);
    expect(c).not.toEqual(a);
    expect(a.some((d) => d.includes('loss'))).toBe(true);
  });

  it('keeps other messages\' delays when a partition or a loss rate changes', () => {
    const cfg = { ...defaultWanConfig(), jitter: { proportional: 0.5, tailProbability: 0.3, tailMedianMs: 15, tailSigma: 1 } };
    const plain = new WanModel({ config: cfg, nodes: FIVE, seed: 9 });
    const cut = new WanModel({ config: cfg, nodes: FIVE, seed: 9 });
    cut.links.isolate('r-sa-east');
    const lossy = new WanModel({ config: { ...cfg, lossRate: 0.5 }, nodes: FIVE, seed: 9 });
    const A = 'r-us-east', B = 'r-eu-west';
    for (let k = 0; k < 200; k++) {
      const a = plain.decide(A, B, k * 1000);
      expect(cut.decide(A, B, k * 1000)).toEqual(a);
      const l = lossy.decide(A, B, k * 1000);
      if ('deliverAt' in l) expect(l).toEqual(a);
      for (const m of [plain, cut, lossy]) m.decide(A, 'r-sa-east', k * 1000);
    }
  });

  it('delays by half the modelled round trip, plus jitter bounded by the proportional factor', () => {
    const m = new WanModel({ config: tiny({ jitter: { proportional: 0.1 } }), nodes: [{ name: 'A', region: 'a' }, { name: 'C', region: 'c' }], seed: 1 });
    for (let k = 0; k < 500; k++) {
      const d = m.decide('A', 'C', 1000 + k * 500);
      if (!('deliverAt' in d)) throw new Error('unexpected drop');
      expect(d.delayMs).toBeGreaterThanOrEqual(100);
      expect(d.delayMs).toBeLessThan(110);
    }
  });

  it('loses about the configured fraction', () => {
    const m = new WanModel({ config: tiny({ lossRate: 0.3 }), nodes: [{ name: 'A', region: 'a' }, { name: 'B', region: 'b' }], seed: 7 });
    let lost = 0;
    for (let k = 0; k < 10_000; k++) if ('dropped' in m.decide('A', 'B', k)) lost++;
    expect(lost / 10_000).toBeGreaterThan(0.27);
    expect(lost / 10_000).toBeLessThan(0.33);
  });

  it('keeps links FIFO unless told otherwise', () => {
    const jitter = { proportional: 2, tailProbability: 0.3, tailMedianMs: 50, tailSigma: 1.5 };
    const nodes = [{ name: 'A', region: 'a' }, { name: 'C', region: 'c' }];
    const order = (fifo: boolean) => {
      const m = new WanModel({ config: tiny({ jitter, fifo }), nodes, seed: 3 });
      const at: number[] = [];
      for (let k = 0; k < 300; k++) { const d = m.decide('A', 'C', k); if ('deliverAt' in d) at.push(d.deliverAt); }
      return at;
    };
    const fifo = order(true);
    expect(fifo.every((t, k) => k === 0 || t >= fifo[k - 1]!)).toBe(true);
    const free = order(false);
    expect(free.some((t, k) => k > 0 && t < free[k - 1]!)).toBe(true);
  });

  it('none means zero delay', () => {
    const m = new WanModel({ config: noneWanConfig(), nodes: [{ name: 'A', region: 'anywhere' }, { name: 'B', region: 'elsewhere' }], seed: 1 });
    expect(m.decide('A', 'B', 123)).toEqual({ deliverAt: 123, delayMs: 0 });
    m.links.degrade('B', { extraDelayMs: 40 });
    expect(m.decide('A', 'B', 200)).toEqual({ deliverAt: 240, delayMs: 40 });
  });

  it('adds the access network to device traffic only', () => {
    const m = new WanModel({
      config: tiny({ deviceAccessRttMs: 30 }), seed: 1,
      nodes: [{ name: 'A', region: 'a' }, { name: 'B', region: 'b' }, { name: 'phone', region: 'a', kind: 'device' }],
    });
    expect(m.baseRttMs('A', 'B')).toBe(20);
    expect(m.baseRttMs('phone', 'B')).toBe(50);
    expect(m.baseRttMs('A', 'phone')).toBe(32);
  });

  it('refuses unknown nodes and regions with typed errors', () => {
    expect(() => new WanModel({ config: tiny(), nodes: [{ name: 'A', region: 'mars' }], seed: 1 })).toThrow(WanError);
    const m = new WanModel({ config: tiny(), nodes: [{ name: 'A', region: 'a' }], seed: 1 });
    expect(() => m.decide('A', 'ghost', 0)).toThrow(expect.objectContaining({ code: 'WAN_UNKNOWN_NODE' }));
  });
});

describe('partitions', () => {
  const nodes: WanNode[] = ['n1', 'n2', 'n3', 'n4', 'n5'].map((name) => ({ name, region: 'a' }));
  const reach = (m: WanModel, a: string, b: string) => 'deliverAt' in m.decide(a, b, 0);

  it('splits symmetric groups, keeps unlisted nodes as bridges, heals', () => {
    const m = new WanModel({ config: tiny(), nodes, seed: 1 });
    m.links.partition([['n1', 'n2'], ['n4', 'n5']]);
    expect(reach(m, 'n1', 'n2')).toBe(true);
    expect(reach(m, 'n1', 'n4')).toBe(false);
    expect(reach(m, 'n5', 'n2')).toBe(false);
    expect(reach(m, 'n3', 'n1')).toBe(true);
    expect(reach(m, 'n4', 'n3')).toBe(true);
    expect(m.decide('n2', 'n5', 0)).toEqual({ dropped: 'partition' });
    m.links.heal();
    expect(reach(m, 'n1', 'n4')).toBe(true);
    expect(() => m.links.partition([['n1'], ['n1', 'n2']])).toThrow(WanError);
  });

  it('blocks one way, isolates a node, degrades a node', () => {
    const m = new WanModel({ config: tiny(), nodes, seed: 1 });
    m.links.block('n1', 'n2');
    expect(reach(m, 'n1', 'n2')).toBe(false);
    expect(reach(m, 'n2', 'n1')).toBe(true);
    m.links.unblock('n1', 'n2');
    m.links.isolate('n3');
    for (const o of ['n1', 'n2', 'n4', 'n5']) { expect(reach(m, 'n3', o)).toBe(false); expect(reach(m, o, 'n3')).toBe(false); }
    expect(reach(m, 'n1', 'n2')).toBe(true);
    m.links.heal();
    m.links.degrade('n4', { extraDelayMs: 500 });
    const d = m.decide('n1', 'n4', 0);
    expect('deliverAt' in d && d.delayMs).toBe(501);
    m.links.degrade('n5', { lossRate: 1 });
    expect(m.decide('n5', 'n1', 0)).toEqual({ dropped: 'loss' });
  });

  it('shares link state through one buffer (main thread steers every sender)', () => {
    const control = LinkTable.shared(nodes.map((n) => n.name));
    const m1 = new WanModel({ config: tiny(), nodes, seed: 1, linkCells: control.cells });
    const m2 = new WanModel({ config: tiny(), nodes, seed: 2, linkCells: control.cells });
    control.isolate('n2');
    expect(reach(m1, 'n1', 'n2')).toBe(false);
    expect(reach(m2, 'n2', 'n5')).toBe(false);
    control.heal();
    expect(reach(m1, 'n1', 'n2') && reach(m2, 'n2', 'n5')).toBe(true);
  });
});

describe('protocol floor', () => {
  const cfg = () => tiny();
  it('is two device round trips plus the round trip to the (majority-1)-th nearest other replica', () => {
    // Replicas in a, b, c; majority 2: the leader needs one other, the nearest.
    expect(protocolFloor(cfg(), 'a', 'a', ['a', 'b', 'c'])).toEqual({ deviceRttMs: 2, quorumRttMs: 20, floorMs: 24 });
    expect(protocolFloor(cfg(), 'c', 'b', ['a', 'b', 'c'])).toEqual({ deviceRttMs: 100, quorumRttMs: 20, floorMs: 220 });
    // Five replicas, two in c: majority 3, the leader in a needs two others: b (20) then c (200).
    expect(protocolFloor(cfg(), 'b', 'a', ['a', 'b', 'c', 'c', 'a'])).toMatchObject({ quorumRttMs: 20 });
    expect(protocolFloor(cfg(), 'b', 'c', ['a', 'b', 'c', 'c', 'c'])).toMatchObject({ quorumRttMs: 2, deviceRttMs: 100 });
    expect(protocolFloor(cfg(), 'b', 'c', ['a', 'b', 'c'])).toMatchObject({ quorumRttMs: 100 });
    expect(protocolFloor(cfg(), 'a', 'a', ['a'])).toEqual({ deviceRttMs: 2, quorumRttMs: 0, floorMs: 4 });
    expect(() => protocolFloor(cfg(), 'a', 'b', ['a', 'c'])).toThrow(WanError);
  });
  it('counts the device access network twice', () => {
    expect(protocolFloor(tiny({ deviceAccessRttMs: 30 }), 'a', 'b', ['a', 'b', 'c'])).toEqual({ deviceRttMs: 50, quorumRttMs: 20, floorMs: 120 });
  });
});
