// ChatD's Prometheus metrics (prom-client), made from the same entries as its structured log, so
// they can hold no more than the log does: never a token, an account tag, a body or an address.
// Served at GET /metrics with the operator key (<state>/operator.key), as the vault's and the fleet's.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ChatdLogEntry } from './log.ts';

const LATENCY = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const code = (c: string | undefined) => (c && /^[A-Z][A-Z0-9_]{0,39}$/.test(c) ? c : c ? 'OTHER' : '');

export class ChatdMetrics {
  readonly registry = new Registry();
  private readonly requests = new Counter({ name: 'bkv_chatd_requests_total', help: 'Device requests by transport (http, ws), route, HTTP status and error code (empty when served)', labelNames: ['via', 'route', 'status', 'code'] as const, registers: [this.registry] });
  private readonly seconds = new Histogram({ name: 'bkv_chatd_request_duration_seconds', help: 'Time ChatD took to answer a device request (the vault\'s time included), by transport and route', labelNames: ['via', 'route'] as const, buckets: LATENCY, registers: [this.registry] });
  private readonly vaultErrors = new Counter({ name: 'bkv_chatd_vault_errors_total', help: 'Requests the vault refused or could not serve, by the vault\'s code', labelNames: ['code'] as const, registers: [this.registry] });
  private readonly sockets = new Gauge({ name: 'bkv_chatd_websockets', help: 'WebSocket sessions open', registers: [this.registry] });

  get contentType(): string { return this.registry.contentType; }

  /** One log entry: requests are counted and timed, WebSocket opens and closes tracked. */
  observe(e: Omit<ChatdLogEntry, 't'>): void {
    if (e.event === 'ws-open' && e.status === 101) this.sockets.inc();
    if (e.event === 'ws-close') this.sockets.dec();
    if (e.event !== 'request') return;
    const via = e.via ?? 'http';
    const route = e.route ?? 'other';
    this.requests.inc({ via, route, status: String(e.status ?? 0), code: code(e.code) });
    if (typeof e.ms === 'number') this.seconds.observe({ via, route }, e.ms / 1000);
    if (e.vaultCode) this.vaultErrors.inc({ code: code(e.vaultCode) });
  }

  text(): Promise<string> { return this.registry.metrics(); }
}
