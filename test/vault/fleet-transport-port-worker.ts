// Worker entry for the MessagePort transport test: one replica's transport, driven by the main thread.
import { parentPort, workerData } from 'node:worker_threads';
import { PortTransport, type PortEndpointInit } from '../../vault/fleet/transport-port.ts';

const t = new PortTransport(workerData.init as PortEndpointInit);
const port = parentPort!;
t.onMessage((from, bytes) => {
  // Date.now(): one system clock for every thread (each worker's performance.timeOrigin is its own
  // estimate and can be off by milliseconds against another's).
  port.postMessage({ type: 'msg', self: t.self, from, text: new TextDecoder().decode(bytes), at: Date.now() });
});
port.on('message', async (m: { type: string; to?: string; text?: string; id?: number }) => {
  if (m.type === 'send') {
    const at = Date.now(); // taken before the WAN decision, so it bounds the modelled delay from below
    t.send(m.to!, new TextEncoder().encode(m.text!));
    port.postMessage({ type: 'sent', id: m.id, at });
  } else if (m.type === 'stats') {
    port.postMessage({ type: 'stats', id: m.id, stats: t.stats(), inFlight: t.inFlight });
  } else if (m.type === 'close') {
    await t.close();
    port.close();
  }
});
port.postMessage({ type: 'ready' });
