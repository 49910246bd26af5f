// The secure channel (channel.ts) over any best-effort PeerTransport (here: MessagePorts through the
// WAN model). Per ordered pair A->B, A dials: A's outbound channel carries A's messages to B, B's
// inbound channel for A receives them; HELLO_REPLY frames flow back on the same link. Links are
// lossy (partitions, loss), so channels are 'monotonic' and an unanswered HELLO is resent.
// A receiver that gets data it holds no session for (it restarted) answers with an unauthenticated
// "no session" hint, and the sender dials again, at most once per retry period: forging the hint
// only costs a handshake, which is no more than an attacker who drops frames achieves anyway.
// Every link payload is one tag byte (0: channel frame, 1: hint) then the frame. Anything refused
// is dropped and counted.
import type { Token } from '../../hsm-adapter/token.ts';
import { ChannelError, ChannelFrameType, SecureChannel, channelFrameType, type ChannelConfig } from './channel.ts';
import { cloneStats, countDrop, deliver, emptyStats, type MessageHandler, type PeerTransport, type TransportStats } from './transport.ts';

export interface SecureTransportOptions {
  fleetId: string;
  token: Token;
  /** Replica id -> pinned identity public key (65-byte uncompressed P-256). */
  pins: ReadonlyMap<string, Uint8Array>;
  /** Resend an unanswered HELLO after this long. Default 250 ms. */
  helloRetryMs?: number;
  /** Messages queued per peer while its channel opens (oldest dropped). Default 1000. */
  maxQueue?: number;
}

const TAG_FRAME = 0;
const TAG_HINT = 1;

interface Outbound {
  channel: SecureChannel;
  hello: Uint8Array;
  sentAt: number;
  createdAt: number;
  queue: Uint8Array[];
}

export class SecureTransport implements PeerTransport {
  readonly self: string;
  private readonly cfg: ChannelConfig;
  private readonly handlers: MessageHandler[] = [];
  private readonly counters: TransportStats & { redials?: number } = emptyStats();
  private readonly out = new Map<string, Outbound>();
  private readonly inbound = new Map<string, SecureChannel>();
  /** Responder channels between HELLO and FINISH (replaced by a newer HELLO). */
  private readonly half = new Map<string, SecureChannel>();
  private readonly retryMs: number;
  private readonly maxQueue: number;
  private readonly timer: NodeJS.Timeout;
  private closed = false;
  private readonly hinted = new Map<string, number>();

  constructor(private readonly inner: PeerTransport, opts: SecureTransportOptions) {
    this.self = inner.self;
    this.cfg = { fleetId: opts.fleetId, self: inner.self, token: opts.token, pins: opts.pins, ordering: 'monotonic' };
    this.retryMs = opts.helloRetryMs ?? 300;
    this.maxQueue = opts.maxQueue ?? 1000;
    inner.onMessage((from, bytes) => this.onLink(from, bytes));
    this.timer = setInterval(() => this.retry(), this.retryMs);
    this.timer.unref();
  }

  /** Dial every pinned peer now (a starting replica announces itself). */
  dialAll(): void {
    for (const peer of this.cfg.pins.keys()) if (peer !== this.self) this.dial(peer);
  }

  onMessage(cb: MessageHandler): void {
    this.handlers.push(cb);
  }

  send(to: string, bytes: Uint8Array): void {
    if (this.closed) { countDrop(this.counters, 'closed'); return; }
    if (!this.cfg.pins.has(to) || to === this.self) { countDrop(this.counters, 'CHANNEL_UNKNOWN_PEER'); return; }
    this.counters.sent++;
    const o = this.out.get(to) ?? this.dial(to);
    if (o.channel.state === 'open') {
      this.link(to, o.channel.seal(bytes));
      return;
    }
    o.queue.push(bytes);
    if (o.queue.length > this.maxQueue) { o.queue.shift(); countDrop(this.counters, 'queue-full'); }
  }

  stats(): TransportStats {
    const s = cloneStats(this.counters);
    const inner = this.inner.stats();
    for (const [k, v] of Object.entries(inner.dropped)) s.dropped[k] = (s.dropped[k] ?? 0) + v;
    return s;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const o of this.out.values()) o.channel.close();
    for (const c of this.inbound.values()) c.close();
    for (const c of this.half.values()) c.close();
    await this.inner.close();
  }

  private dial(peer: string): Outbound {
    const prev = this.out.get(peer);
    const { channel, hello } = SecureChannel.initiate(this.cfg, peer);
    const o: Outbound = { channel, hello, sentAt: Date.now(), createdAt: Date.now(), queue: prev?.queue ?? [] };
    prev?.channel.close();
    this.out.set(peer, o);
    this.link(peer, hello);
    return o;
  }

  private retry(): void {
    if (this.closed) return;
    const now = Date.now();
    for (const [peer, o] of this.out) {
      if (o.channel.state === 'open' || now - o.sentAt < this.retryMs) continue;
      // A lost HELLO or HELLO_REPLY: start over with fresh ephemerals.
      this.dial(peer);
    }
  }

  private link(to: string, frame: Uint8Array, tag = TAG_FRAME): void {
    const b = new Uint8Array(frame.length + 1);
    b[0] = tag;
    b.set(frame, 1);
    this.inner.send(to, b);
  }

  /** Tell `peer` we cannot read its data (we have no session with it): it should dial us again. */
  private hint(peer: string): void {
    const now = Date.now();
    if (now - (this.hinted.get(peer) ?? 0) < this.retryMs) return;
    this.hinted.set(peer, now);
    this.link(peer, new Uint8Array(0), TAG_HINT);
  }

  private onLink(from: string, payload: Uint8Array): void {
    if (this.closed) return;
    if (payload.length === 0 || (payload[0] !== TAG_FRAME && payload[0] !== TAG_HINT)) { countDrop(this.counters, 'CHANNEL_MALFORMED'); return; }
    if (payload[0] === TAG_HINT) {
      if (payload.length !== 1) { countDrop(this.counters, 'CHANNEL_MALFORMED'); return; }
      const o = this.out.get(from);
      // Only an open channel older than one retry period is re-dialled: a handshake in progress
      // will reach the peer anyway.
      if (o && o.channel.state === 'open' && Date.now() - o.createdAt >= this.retryMs) { this.counters.redials = (this.counters.redials ?? 0) + 1; this.dial(from); }
      return;
    }
    this.onFrame(from, payload.subarray(1));
  }

  private onFrame(from: string, frame: Uint8Array): void {
    let type: number;
    try {
      type = channelFrameType(frame);
    } catch (e) {
      return this.refuse(e);
    }
    try {
      switch (type) {
        case ChannelFrameType.Hello: {
          const ch = SecureChannel.accept(this.cfg);
          const r = ch.receive(frame);
          if (ch.peer !== from) { ch.close(); throw new ChannelError('CHANNEL_WRONG_PEER', 'HELLO names another sender than its link'); }
          this.half.get(from)?.close();
          this.half.set(from, ch);
          if (r.reply) this.link(from, r.reply);
          return;
        }
        case ChannelFrameType.Finish: {
          const ch = this.half.get(from);
          if (!ch) throw new ChannelError('CHANNEL_STATE', 'FINISH without HELLO');
          ch.receive(frame);
          this.half.delete(from);
          this.inbound.get(from)?.close();
          this.inbound.set(from, ch);
          this.counters.handshakes++;
          return;
        }
        case ChannelFrameType.HelloReply: {
          const o = this.out.get(from);
          if (!o) throw new ChannelError('CHANNEL_STATE', 'HELLO_REPLY without HELLO');
          const r = o.channel.receive(frame);
          if (r.reply) this.link(from, r.reply);
          if (r.opened) {
            this.counters.handshakes++;
            const q = o.queue;
            o.queue = [];
            for (const m of q) this.link(from, o.channel.seal(m));
          }
          return;
        }
        case ChannelFrameType.Data: {
          const ch = this.inbound.get(from);
          if (!ch) { this.hint(from); throw new ChannelError('CHANNEL_STATE', 'data before a handshake'); }
          let r;
          try {
            r = ch.receive(frame);
          } catch (e) {
            if (e instanceof ChannelError && e.code === 'CHANNEL_AUTH_FAILED') this.hint(from);
            throw e;
          }
          if (r.message) {
            this.counters.delivered++;
            deliver(this.handlers, from, r.message, () => countDrop(this.counters, 'handler-error'));
          }
          return;
        }
      }
    } catch (e) {
      this.refuse(e);
    }
  }

  private refuse(e: unknown): void {
    countDrop(this.counters, e instanceof ChannelError ? e.code : 'CHANNEL_MALFORMED');
  }
}
