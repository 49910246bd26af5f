// Replica-to-replica transport over TCP, for replicas in separate processes or on separate hosts.
// Each replica dials every peer and sends on its own outbound connection, and receives on the
// connections peers dialled to it: no tie-breaking between simultaneous dials, and a restarted
// replica simply dials again. Every connection runs the channel handshake (vault/fleet/channel.ts)
// before any message moves, so every connection has fresh keys, and both ends prove their token-held
// identity against the pinned keys. Wire: u32 big-endian length, then one channel frame.
//
// A refused frame (forged, altered, replayed, out of order) is dropped, counted, and its connection
// closed: on a TCP stream that frame's successors can no longer be trusted to line up, and the
// dialler's reconnect gives a fresh handshake. Nothing here throws for network conditions.
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { Token } from '../../hsm-adapter/token.ts';
import { listenError } from '../../protocol/errors.ts';
import { ChannelError, SecureChannel, type ChannelConfig } from './channel.ts';
import {
  TransportError, cloneStats, countDrop, deliver, emptyStats,
  type MessageHandler, type PeerTransport, type TransportStats,
} from './transport.ts';

export interface TcpAddress {
  host: string;
  port: number;
}

export type TcpTransportEvent =
  | { type: 'open'; peer: string; direction: 'in' | 'out'; sessionId: string }
  | { type: 'closed'; peer: string | undefined; direction: 'in' | 'out'; reason: string }
  | { type: 'rejected'; peer: string | undefined; direction: 'in' | 'out'; code: string; message: string }
  | { type: 'handler-error'; error: unknown };

export interface TcpTransportOptions {
  fleetId: string;
  self: string;
  token: Token;
  /** Replica id -> pinned identity public key (65-byte uncompressed P-256), from the fleet manifest. */
  pins: ReadonlyMap<string, Uint8Array>;
  /** Default 127.0.0.1, port 0 (any free port; read it back from `address`). */
  listen?: { host?: string; port?: number };
  /** Peer addresses known at start; more can be given later with setPeerAddress. */
  peers?: Record<string, TcpAddress>;
  /** Largest frame accepted on the wire (length prefix excluded). Default 16 MiB + 64. */
  maxFrameBytes?: number;
  /** Messages held per peer while its connection is not open; the oldest go first. Default 10,000. */
  maxQueuedPerPeer?: number;
  /** Bytes buffered in one socket before further sends to that peer are dropped. Default 64 MiB. */
  maxBufferedBytes?: number;
  backoff?: { initialMs?: number; maxMs?: number };
  /** A connection whose handshake is not done by then is closed. Default 5,000 ms. */
  handshakeTimeoutMs?: number;
  /**
   * Inbound connections still in their handshake; more are refused at once. Anyone can connect and
   * make this replica sign a transcript, so unauthenticated work is bounded. Default 64.
   */
  maxPendingHandshakes?: number;
  onEvent?: (e: TcpTransportEvent) => void;
}

const LEN_BYTES = 4;
const DATA_OVERHEAD = 10 + 16;

/** Splits a byte stream into length-prefixed frames; refuses a length over the limit before buffering it. */
export class FrameReader {
  private chunks: Buffer[] = [];
  private total = 0;
  constructor(private readonly maxFrameBytes: number) {}
  push(chunk: Buffer): Buffer[] {
    this.chunks.push(chunk);
    this.total += chunk.length;
    const out: Buffer[] = [];
    for (;;) {
      if (this.total < LEN_BYTES) return out;
      const head = this.chunks[0]!.length >= LEN_BYTES ? this.chunks[0]! : this.flatten();
      const len = head.readUInt32BE(0);
      if (len === 0 || len > this.maxFrameBytes) {
        throw new TransportError('TRANSPORT_FRAME_TOO_LARGE', `frame length ${len} outside 1..${this.maxFrameBytes}`);
      }
      if (this.total < LEN_BYTES + len) return out;
      const all = this.flatten();
      out.push(Buffer.from(all.subarray(LEN_BYTES, LEN_BYTES + len)));
      const rest = all.subarray(LEN_BYTES + len);
      this.chunks = rest.length ? [rest] : [];
      this.total = rest.length;
    }
  }
  private flatten(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.total)];
    return this.chunks[0]!;
  }
}

export function encodeFrame(frame: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(LEN_BYTES + frame.length);
  out.writeUInt32BE(frame.length, 0);
  out.set(frame, LEN_BYTES);
  return out;
}

interface Conn {
  socket: Socket;
  channel: SecureChannel;
  reader: FrameReader;
  direction: 'in' | 'out';
  timer: NodeJS.Timeout | undefined;
}

interface Outbound {
  peer: string;
  address: TcpAddress | undefined;
  /** The socket being dialled or in use; undefined between a close and the next retry. */
  socket: Socket | undefined;
  conn: Conn | undefined;
  queue: Uint8Array[];
  backoffMs: number;
  retry: NodeJS.Timeout | undefined;
}

export class TcpTransport implements PeerTransport {
  readonly self: string;
  private readonly opts: TcpTransportOptions;
  private readonly chanCfg: ChannelConfig;
  private readonly server: Server;
  private readonly handlers: MessageHandler[] = [];
  private readonly out = new Map<string, Outbound>();
  private readonly inbound = new Set<Conn>();
  private readonly counters: TransportStats = emptyStats();
  private readonly maxFrame: number;
  private closed = false;
  private addr: TcpAddress | undefined;

  private constructor(opts: TcpTransportOptions) {
    if (!opts.pins.has(opts.self)) throw new TransportError('TRANSPORT_CONFIG', `no pinned identity for this replica (${opts.self})`);
    this.self = opts.self;
    this.opts = opts;
    this.maxFrame = opts.maxFrameBytes ?? 16 * 1024 * 1024 + 64;
    this.chanCfg = {
      fleetId: opts.fleetId, self: opts.self, token: opts.token, pins: opts.pins,
      ordering: 'strict', maxPlaintextBytes: this.maxFrame - DATA_OVERHEAD,
    };
    for (const peer of opts.pins.keys()) {
      if (peer === opts.self) continue;
      this.out.set(peer, { peer, address: undefined, socket: undefined, conn: undefined, queue: [], backoffMs: this.initialBackoff(), retry: undefined });
    }
    this.server = createServer((s) => this.onInbound(s));
  }

  /** Listen, then dial every peer whose address is known. */
  static async start(opts: TcpTransportOptions): Promise<TcpTransport> {
    const t = new TcpTransport(opts);
    await new Promise<void>((resolve, reject) => {
      const host = opts.listen?.host ?? '127.0.0.1', port = opts.listen?.port ?? 0;
      const onError = (e: unknown) => reject(listenError(e, host, port));
      t.server.once('error', onError);
      t.server.listen(port, host, () => {
        t.server.off('error', onError);
        resolve();
      });
    });
    const a = t.server.address();
    if (a && typeof a === 'object') t.addr = { host: a.address, port: a.port };
    for (const [peer, address] of Object.entries(opts.peers ?? {})) t.setPeerAddress(peer, address);
    return t;
  }

  get address(): TcpAddress {
    return this.addr!;
  }

  /** Where to dial `peer` (e.g. after it started on a port chosen at run time, or moved). */
  setPeerAddress(peer: string, address: TcpAddress): void {
    const o = this.out.get(peer);
    if (!o) throw new TransportError('TRANSPORT_UNKNOWN_PEER', `unknown replica ${peer}`);
    o.address = { ...address };
    if (!o.socket && !o.retry && !this.closed) this.dial(o);
  }

  onMessage(cb: MessageHandler): void {
    this.handlers.push(cb);
  }

  send(to: string, bytes: Uint8Array): void {
    const o = this.out.get(to);
    if (!o) throw new TransportError('TRANSPORT_UNKNOWN_PEER', `unknown replica ${to}`);
    if (this.closed) { countDrop(this.counters, 'closed'); return; }
    if (bytes.length > this.maxFrame - DATA_OVERHEAD) { countDrop(this.counters, 'too-large'); return; }
    this.counters.sent++;
    const c = o.conn;
    if (c && c.channel.state === 'open') {
      this.write(c, bytes);
      return;
    }
    o.queue.push(bytes);
    const limit = this.opts.maxQueuedPerPeer ?? 10_000;
    if (o.queue.length > limit) {
      o.queue.shift();
      countDrop(this.counters, 'queue-full');
    }
  }

  stats(): TransportStats {
    return cloneStats(this.counters);
  }

  /** Whether the outbound connection to `peer` has finished its handshake. */
  isOpen(peer: string): boolean {
    return this.out.get(peer)?.conn?.channel.state === 'open';
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const o of this.out.values()) {
      if (o.retry) clearTimeout(o.retry);
      o.retry = undefined;
      if (o.conn) this.drop(o.conn, 'transport closed');
      o.socket?.destroy();
      o.queue = [];
    }
    for (const c of [...this.inbound]) this.drop(c, 'transport closed');
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private initialBackoff(): number {
    return this.opts.backoff?.initialMs ?? 50;
  }

  private write(c: Conn, plaintext: Uint8Array): void {
    if (c.socket.writableLength > (this.opts.maxBufferedBytes ?? 64 * 1024 * 1024)) {
      countDrop(this.counters, 'backpressure');
      return;
    }
    c.socket.write(encodeFrame(c.channel.seal(plaintext)));
  }

  private dial(o: Outbound): void {
    o.retry = undefined;
    if (this.closed || !o.address) return;
    const socket = connect({ host: o.address.host, port: o.address.port });
    o.socket = socket;
    socket.setNoDelay(true);
    // A host that drops SYNs would otherwise hold this dial for the OS connect timeout (minutes).
    const connectTimer = setTimeout(() => {
      countDrop(this.counters, 'connect-timeout');
      socket.destroy();
    }, this.opts.handshakeTimeoutMs ?? 5_000);
    let conn: Conn | undefined;
    socket.once('connect', () => {
      clearTimeout(connectTimer);
      socket.setKeepAlive(true, 5_000);
      let hello: Uint8Array;
      try {
        const started = SecureChannel.initiate(this.chanCfg, o.peer);
        hello = started.hello;
        conn = this.track(socket, started.channel, 'out');
      } catch (e) {
        // e.g. the token failed to give randomness: try again later rather than crash.
        countDrop(this.counters, 'TRANSPORT_TOKEN_FAILED');
        this.emit({ type: 'rejected', peer: o.peer, direction: 'out', code: 'TRANSPORT_TOKEN_FAILED', message: (e as Error).message });
        socket.destroy();
        return;
      }
      o.conn = conn;
      socket.write(encodeFrame(hello));
    });
    socket.on('close', () => {
      clearTimeout(connectTimer);
      if (o.conn && o.conn.socket === socket) o.conn = undefined;
      if (o.socket === socket) o.socket = undefined;
      if (this.closed || o.retry) return;
      const wait = o.backoffMs * (0.8 + 0.4 * Math.random());
      o.backoffMs = Math.min(o.backoffMs * 2, this.opts.backoff?.maxMs ?? 2_000);
      o.retry = setTimeout(() => this.dial(o), wait);
    });
    socket.on('error', () => { /* 'close' follows and schedules the retry */ });
  }

  private onInbound(socket: Socket): void {
    if (this.closed) { socket.destroy(); return; }
    let pending = 0;
    for (const c of this.inbound) if (c.channel.state !== 'open') pending++;
    if (pending >= (this.opts.maxPendingHandshakes ?? 64)) {
      countDrop(this.counters, 'handshake-limit');
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    socket.on('error', () => { /* 'close' follows */ });
    const conn = this.track(socket, SecureChannel.accept(this.chanCfg), 'in');
    this.inbound.add(conn);
    socket.on('close', () => this.inbound.delete(conn));
  }

  /** Wires a socket to its channel: frames in, handshake replies out, messages to handlers. */
  private track(socket: Socket, channel: SecureChannel, direction: 'in' | 'out'): Conn {
    const conn: Conn = { socket, channel, reader: new FrameReader(this.maxFrame), direction, timer: undefined };
    conn.timer = setTimeout(() => {
      if (channel.state !== 'open') {
        countDrop(this.counters, 'handshake-timeout');
        this.drop(conn, 'handshake timeout');
      }
    }, this.opts.handshakeTimeoutMs ?? 5_000);
    socket.on('data', (chunk: Buffer) => this.onData(conn, chunk));
    socket.on('close', () => {
      if (conn.timer) clearTimeout(conn.timer);
      channel.close();
      this.emit({ type: 'closed', peer: channel.peer, direction, reason: 'socket closed' });
    });
    return conn;
  }

  private onData(conn: Conn, chunk: Buffer): void {
    if (conn.socket.destroyed) return;
    let frames: Buffer[];
    try {
      frames = conn.reader.push(chunk);
    } catch (e) {
      this.reject(conn, e as TransportError);
      return;
    }
    for (const f of frames) {
      if (conn.socket.destroyed) return;
      try {
        const r = conn.channel.receive(f);
        if (r.reply) conn.socket.write(encodeFrame(r.reply));
        if (r.opened) this.onOpen(conn);
        if (r.message) {
          this.counters.delivered++;
          deliver(this.handlers, conn.channel.peer!, r.message, (error) => this.emit({ type: 'handler-error', error }));
        }
      } catch (e) {
        if (e instanceof ChannelError) { this.reject(conn, e); return; }
        // A token failure while signing our half of the handshake: close, the dialler retries.
        this.reject(conn, new TransportError('TRANSPORT_TOKEN_FAILED', `handshake: ${(e as Error).message}`));
        return;
      }
    }
  }

  private onOpen(conn: Conn): void {
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = undefined;
    this.counters.handshakes++;
    const peer = conn.channel.peer!;
    this.emit({ type: 'open', peer, direction: conn.direction, sessionId: conn.channel.sessionId! });
    if (conn.direction === 'in') {
      // A peer that restarted dials again while its old connection may linger half-open: keep the newest.
      for (const other of this.inbound) {
        if (other !== conn && other.channel.peer === peer) this.drop(other, 'superseded by a new session');
      }
      return;
    }
    const o = this.out.get(peer)!;
    o.backoffMs = this.initialBackoff();
    const queued = o.queue;
    o.queue = [];
    for (const m of queued) this.write(conn, m);
  }

  private reject(conn: Conn, e: ChannelError | TransportError): void {
    countDrop(this.counters, e.code);
    this.counters.rejectedConnections++;
    this.emit({ type: 'rejected', peer: conn.channel.peer, direction: conn.direction, code: e.code, message: e.message });
    this.drop(conn, e.code);
  }

  private drop(conn: Conn, _reason: string): void {
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = undefined;
    conn.channel.close();
    conn.socket.destroy();
  }

  private emit(e: TcpTransportEvent): void {
    try {
      this.opts.onEvent?.(e);
    } catch {
      // an observer's bug must not break the transport
    }
  }
}
