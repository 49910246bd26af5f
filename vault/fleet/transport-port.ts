// Replica-to-replica transport between worker threads of one process: a full mesh of MessagePorts,
// with the WAN model applied on the sending side (a seeded WanModel per sender, real timers), so a
// threaded fleet sees inter-continental delays, loss and partitions. Partitions are flipped from the
// main thread through a shared LinkTable; they cut at send time and again on arrival, so a message
// in flight when a link goes down is lost, as on a real network.
//
// No secure channel here: a port can only be posted into by the worker holding its other end, so
// the sender's identity is the port's. Fault injection of forged frames is the simulator's job (it
// drives vault/fleet/channel.ts directly); the TCP transport carries the channel for real networks.
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { pack, unpack } from 'msgpackr';
import { LinkTable, WanModel, type WanConfig, type WanNode } from './wan.ts';
import {
  TransportError, cloneStats, countDrop, deliver, emptyStats,
  type MessageHandler, type PeerTransport, type TransportStats,
} from './transport.ts';

export const PORT_ENVELOPE_VERSION = 1;

/** What one endpoint needs; structured-clonable (pass in workerData, ports in the transfer list). */
export interface PortEndpointInit {
  self: string;
  /** Peer id -> this endpoint's end of the pair's MessageChannel. */
  ports: Record<string, MessagePort>;
  wan: { config: WanConfig; nodes: WanNode[]; seed: number | string; linkCells: Int32Array };
}

export interface PortFleet {
  /** Main-thread control of every link (partition, block, isolate, degrade, heal). */
  links: LinkTable;
  endpoints: Record<string, PortEndpointInit>;
  /** The ports to list in `transferList` when handing endpoint `name` to a worker. */
  transferList(name: string): MessagePort[];
}

/**
 * Main thread: one MessageChannel per pair of nodes and a shared link table. Each sender's WAN model
 * is seeded with `${seed}/${name}`, so its delays do not depend on the other threads' timing.
 */
export function createPortFleet(opts: { config: WanConfig; nodes: WanNode[]; seed: number | string }): PortFleet {
  const names = opts.nodes.map((n) => n.name);
  const links = LinkTable.shared(names);
  const ports: Record<string, Record<string, MessagePort>> = Object.fromEntries(names.map((n) => [n, {}]));
  for (let i = 0; i < names.length; i++) {
    for (let j = i + 1; j < names.length; j++) {
      const { port1, port2 } = new MessageChannel();
      ports[names[i]!]![names[j]!] = port1;
      ports[names[j]!]![names[i]!] = port2;
    }
  }
  const endpoints: Record<string, PortEndpointInit> = {};
  for (const n of names) {
    endpoints[n] = { self: n, ports: ports[n]!, wan: { config: opts.config, nodes: opts.nodes, seed: opts.seed, linkCells: links.cells } };
  }
  return { links, endpoints, transferList: (name) => Object.values(ports[name] ?? {}) };
}

interface Pending {
  at: number;
  seq: number;
  to: string;
  payload: Uint8Array;
}

export class PortTransport implements PeerTransport {
  readonly self: string;
  private readonly ports: Map<string, MessagePort>;
  private readonly wan: WanModel;
  private readonly now: () => number;
  private readonly handlers: MessageHandler[] = [];
  private readonly counters: TransportStats = emptyStats();
  /** In flight, sorted by (at, seq): one timer serves the earliest. */
  private readonly pending: Pending[] = [];
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private seq = 0;
  private closed = false;

  constructor(init: PortEndpointInit, opts: { now?: () => number } = {}) {
    this.self = init.self;
    this.now = opts.now ?? (() => performance.now());
    this.wan = new WanModel({
      config: init.wan.config, nodes: init.wan.nodes, seed: `${init.wan.seed}/${init.self}`, linkCells: init.wan.linkCells,
    });
    this.ports = new Map(Object.entries(init.ports));
    for (const [peer, port] of this.ports) {
      port.on('message', (data: unknown) => this.onArrival(peer, data));
    }
  }

  onMessage(cb: MessageHandler): void {
    this.handlers.push(cb);
  }

  send(to: string, bytes: Uint8Array): void {
    if (!this.ports.has(to)) throw new TransportError('TRANSPORT_UNKNOWN_PEER', `unknown replica ${to}`);
    if (this.closed) { countDrop(this.counters, 'closed'); return; }
    this.counters.sent++;
    const now = this.now();
    const d = this.wan.decide(this.self, to, now);
    if ('dropped' in d) { countDrop(this.counters, d.dropped); return; }
    // pack() may return a view into msgpackr's shared buffer: copy out exactly this message, so the
    // copy can be transferred (not cloned) and nothing else rides along.
    const payload = new Uint8Array(pack({ v: PORT_ENVELOPE_VERSION, from: this.self, body: bytes }));
    const p: Pending = { at: d.deliverAt, seq: this.seq++, to, payload };
    // Insert keeping (at, seq) order; with FIFO links most inserts land at the end.
    let k = this.pending.length;
    while (k > 0 && this.pending[k - 1]!.at > p.at) k--;
    this.pending.splice(k, 0, p);
    this.arm();
  }

  stats(): TransportStats {
    return cloneStats(this.counters);
  }
  /**
   * A peer's worker was replaced (crash and restart): talk to it through this new port from now on.
   * The old port is closed, so nothing the dead worker left queued can arrive.
   */
  replacePort(peer: string, port: MessagePort): void {
    if (!this.ports.has(peer)) throw new TransportError('TRANSPORT_UNKNOWN_PEER', `unknown replica ${peer}`);
    this.ports.get(peer)!.close();
    if (this.closed) { port.close(); return; }
    this.ports.set(peer, port);
    port.on('message', (data: unknown) => this.onArrival(peer, data));
  }


  /** Messages accepted by the WAN but not yet handed to their port. */
  get inFlight(): number {
    return this.pending.length;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    countDrop(this.counters, 'closed', this.pending.length);
    this.pending.length = 0;
    for (const port of this.ports.values()) port.close();
  }

  private arm(): void {
    const head = this.pending[0];
    if (!head || this.closed) return;
    if (this.timer && head.at >= this.timerAt) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = head.at;
    this.timer = setTimeout(() => this.flush(), Math.max(0, head.at - this.now()));
  }

  private flush(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    // Node's timer clock has whole-millisecond resolution: release what is due within the next 1 ms
    // rather than re-arming a timer for a fraction of one.
    const due = this.now() + 1;
    while (this.pending.length && this.pending[0]!.at <= due) {
      const p = this.pending.shift()!;
      this.ports.get(p.to)!.postMessage(p.payload, [p.payload.buffer as ArrayBuffer]);
    }
    this.arm();
  }

  private onArrival(peer: string, data: unknown): void {
    if (this.closed) return;
    let env: unknown;
    try {
      env = unpack(data as Uint8Array);
    } catch {
      countDrop(this.counters, 'TRANSPORT_BAD_MESSAGE');
      return;
    }
    const e = env as { v?: unknown; from?: unknown; body?: unknown };
    if (typeof env !== 'object' || env === null || e.v !== PORT_ENVELOPE_VERSION || e.from !== peer || !(e.body instanceof Uint8Array)) {
      countDrop(this.counters, 'TRANSPORT_BAD_MESSAGE');
      return;
    }
    if (this.wan.links.blocked(peer, this.self)) {
      countDrop(this.counters, 'partition');
      return;
    }
    this.counters.delivered++;
    deliver(this.handlers, peer, e.body, () => countDrop(this.counters, 'handler-error'));
  }
}
