// The picture of one run: a self-contained HTML page (inline SVG and CSS, no script, no network) with
// a timeline (a lane per replica: role and term, crashes, pauses, forks, partitions as bands, faults
// as marks; a lane per user: operations as bars from invoke to completion coloured by outcome, and the
// attempts left over time), violations marked on it and linked to the operations around them, a
// latency histogram by outcome and HDR percentiles per operation (latency.ts), throughput over
// time, the settings and the verdict.
import { latencyByOp, type LatencyRow } from './latency.ts';
import type { HistoryOp, RunHistory, VaultRunSettings } from './workload.ts';

export interface RunReport {
  title: string;
  seed: number;
  /** What the run drew or was given, as a sentence (simSettingsText for a simulator seed). */
  settingsText: string;
  ok: boolean;
  violations: string[];
  history: RunHistory;
  replay: string;
  /** Campaign lines shown above the run (seeds, passed, failed, time). */
  summary?: string[];
}

const ROLE_COLOUR: Record<string, string> = {
  leader: '#2e8b57', follower: '#cfd8dc', candidate: '#f0c419', learner: '#b3e5fc', rejoining: '#9575cd', stopped: '#e57373', down: '#37474f',
};
const OUTCOME_COLOUR = (o: string | null): string => {
  if (o === null) return '#9e9e9e';
  if (o === 'ok' || o === 'released') return '#2e8b57';
  if (o === 'wrong_password') return '#ef8c00';
  if (o === 'ke2') return '#64b5f6';
  if (o === 'locked' || o === 'not_registered') return '#c62828';
  if (o === 'unknown') return '#9e9e9e';
  return '#7b1fa2';
};

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** The virtual time a violation names (`t=123: ...`), if it names one. */
export function violationTime(v: string): number | null {
  const m = /\bt=(\d+)/.exec(v);
  return m ? Number(m[1]) : null;
}

/** The operations a violation is about: the named user's operations open at, or ending just before, its time. */
export function opsNear(h: RunHistory, v: string): HistoryOp[] {
  const t = violationTime(v);
  const user = /\b(user\d+)\b/.exec(v)?.[1];
  return h.ops.filter((o) => (!user || o.user === user) && (t === null || (o.start <= t && (o.end === null || o.end >= t - 200)))).slice(0, 12);
}

interface Band { id: string; from: number; to: number; kind: string }

/** Down, paused and forked intervals per replica, and partitions for the whole fleet, from the trace. */
function bands(h: RunHistory): { replica: Band[]; fleet: Band[] } {
  const replica: Band[] = [];
  const fleet: Band[] = [];
  const open = new Map<string, number>();
  const close = (key: string, id: string, kind: string, at: number, list: Band[]) => {
    const from = open.get(key);
    if (from !== undefined) { list.push({ id, from, to: at, kind }); open.delete(key); }
  };
  for (const { at, line } of h.notes) {
    const [word, id] = line.split(' ');
    if (word === 'pause' && id) open.set(`pause ${id}`, at);
    else if (word === 'resume' && id) close(`pause ${id}`, id, 'paused', at, replica);
    else if (word === 'fork' && id) open.set(`fork ${id}`, at);
    else if (word === 'unfork' && id) close(`fork ${id}`, id, 'forked', at, replica);
    else if (word === 'partition') { close('partition', '', 'partition', at, fleet); open.set('partition', at); }
    else if (word === 'heal') {
      close('partition', '', 'partition', at, fleet);
      for (const k of [...open.keys()]) if (k.startsWith('pause ')) close(k, k.slice(6), 'paused', at, replica);
    }
  }
  for (const [k, from] of open) {
    if (k === 'partition') fleet.push({ id: '', from, to: h.end, kind: 'partition' });
    else replica.push({ id: k.split(' ')[1]!, from, to: h.end, kind: k.startsWith('pause') ? 'paused' : 'forked' });
  }
  return { replica, fleet };
}

const MAX_TABLE_OPS = 5000;

const FAULT_WORDS = ['cut', 'bridge', 'ring', 'crash', 'torn', 'flip', 'rollback', 'blank', 'swap', 'fork', 'forge', 'clock', 'drift', 'slow', 'pause', 'membership', 'snapshot', 'supervisor', 'whole', 'isolate', 'lossy', 'token', 'restart'];

function timeline(r: RunReport): string {
  const h = r.history;
  const ids = [...new Set(h.roles.map((x) => x.id))];
  const users = [...new Set(h.ops.map((o) => o.user))].sort();
  const W = 1180, left = 90, laneH = 26, gap = 6;
  const x = (t: number) => left + ((W - left - 40) * t) / Math.max(1, h.end);
  // Operations of a user are stacked in rows so that none overlap.
  const rowsOf = new Map<string, { op: HistoryOp; row: number }[]>();
  for (const u of users) {
    const rowEnds: number[] = [];
    const placed: { op: HistoryOp; row: number }[] = [];
    for (const op of h.ops.filter((o) => o.user === u).sort((a, b) => a.start - b.start)) {
      let row = rowEnds.findIndex((e) => e < op.start);
      if (row < 0) { row = rowEnds.length; rowEnds.push(0); }
      rowEnds[row] = op.end ?? h.end;
      placed.push({ op, row });
    }
    rowsOf.set(u, placed);
  }
  const userH = (u: string) => Math.max(1, ...rowsOf.get(u)!.map((p) => p.row + 1)) * 7 + 34;
  const height = 30 + ids.length * (laneH + gap) + 10 + users.reduce((s, u) => s + userH(u) + gap, 0) + 30;
  const out: string[] = [`<svg width="${W}" height="${height}" class="timeline" role="img" aria-label="timeline">`];
  // Time axis.
  for (let i = 0; i <= 10; i++) {
    const t = Math.round((h.end * i) / 10);
    out.push(`<line x1="${x(t)}" y1="20" x2="${x(t)}" y2="${height - 20}" stroke="#eceff1"/><text x="${x(t)}" y="14" class="axis">${(t / 1000).toFixed(1)} s</text>`);
  }
  const b = bands(h);
  for (const p of b.fleet) out.push(`<rect x="${x(p.from)}" y="20" width="${Math.max(1, x(p.to) - x(p.from))}" height="${ids.length * (laneH + gap)}" fill="#ffcdd2" opacity="0.35"><title>partition ${esc(String(p.from))}-${p.to} ms</title></rect>`);
  out.push(`<line x1="${x(h.healedAt)}" y1="20" x2="${x(h.healedAt)}" y2="${height - 20}" stroke="#1565c0" stroke-dasharray="4 3"/><text x="${x(h.healedAt) + 3}" y="${height - 8}" class="axis" fill="#1565c0">faults stop, healing</text>`);
  let y = 24;
  ids.forEach((id) => {
    out.push(`<text x="4" y="${y + 17}" class="lane">${esc(id)}</text>`);
    const mine = h.roles.filter((q) => q.id === id);
    mine.forEach((q, i) => {
      const to = mine[i + 1]?.at ?? h.end;
      out.push(`<rect x="${x(q.at)}" y="${y}" width="${Math.max(0.5, x(to) - x(q.at))}" height="${laneH}" fill="${ROLE_COLOUR[q.role] ?? '#eee'}"><title>${esc(id)}: ${q.role}, term ${q.term}, ${q.at}-${to} ms</title></rect>`);
      if (q.role === 'leader' && x(to) - x(q.at) > 24) out.push(`<text x="${x(q.at) + 3}" y="${y + 17}" class="term">t${q.term}</text>`);
    });
    for (const p of b.replica.filter((q) => q.id === id)) {
      out.push(`<rect x="${x(p.from)}" y="${y + laneH - 6}" width="${Math.max(1, x(p.to) - x(p.from))}" height="6" fill="${p.kind === 'paused' ? '#ff9800' : '#6a1b9a'}"><title>${esc(id)} ${p.kind} ${p.from}-${p.to} ms</title></rect>`);
    }
    for (const n of h.notes) {
      const words = n.line.split(' ');
      if (!words.slice(1).includes(id) || !FAULT_WORDS.some((w) => words[0]!.startsWith(w))) continue;
      out.push(`<path d="M${x(n.at)} ${y - 1} l-4 -6 h8 z" fill="#b71c1c" class="fault"><title>${n.at} ms: ${esc(n.line)}</title></path>`);
    }
    y += laneH + gap;
  });
  y += 10;
  for (const u of users) {
    const hgt = userH(u);
    out.push(`<rect x="${left}" y="${y}" width="${W - left - 10}" height="${hgt}" fill="#fafafa"/><text x="4" y="${y + 14}" class="lane">${esc(u)}</text><text x="4" y="${y + 28}" class="axis">attempts left</text>`);
    // Attempts left: a step line over the lane.
    const pts = h.attempts.filter((a) => a.user === u);
    if (pts.length) {
      const yy = (left2: number) => y + 4 + (hgt - 8) * (1 - left2 / Math.max(1, h.limit));
      let d = `M${x(pts[0]!.at)} ${yy(pts[0]!.left)}`;
      pts.forEach((p, i) => { d += ` H${x(p.at)} V${yy(p.left)}`; if (i === pts.length - 1) d += ` H${x(h.end)}`; });
      out.push(`<path d="${d}" fill="none" stroke="#1565c0" stroke-width="1.5"><title>${esc(u)}: attempts left ${pts.map((p) => `${p.at} ms: ${p.left}${p.state === 'locked' ? ' (locked)' : ''}`).join(', ')}</title></path>`);
    }
    for (const { op, row } of rowsOf.get(u)!) {
      const end = op.end ?? h.end;
      out.push(`<a href="#op-${op.id}"><rect x="${x(op.start)}" y="${y + 30 + row * 7}" width="${Math.max(1.5, x(end) - x(op.start))}" height="5" fill="${OUTCOME_COLOUR(op.outcome)}" class="op" id="bar-${op.id}"><title>#${op.id} ${op.op}${op.op === 'recover' || op.op === 'outcome' ? (op.correct ? ' (right password)' : ' (wrong password)') : ''}: ${op.start}-${op.end ?? '...'} ms, ${esc(op.outcome ?? 'open')}</title></rect></a>`);
    }
    y += hgt + gap;
  }
  r.violations.forEach((v, i) => {
    const t = violationTime(v);
    if (t === null) return;
    out.push(`<a href="#violation-${i + 1}"><line x1="${x(t)}" y1="18" x2="${x(t)}" y2="${height - 20}" stroke="#d50000" stroke-width="2" class="violation"/><text x="${x(t) + 3}" y="30" class="vlabel">violation ${i + 1}</text></a>`);
  });
  out.push('</svg>');
  return out.join('\n');
}

function histogram(ops: HistoryOp[]): string {
  const done = ops.filter((o) => o.end !== null);
  if (done.length === 0) return '<p>No operation completed.</p>';
  const edges = [5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, Infinity];
  const kinds = ['ok', 'released', 'wrong_password', 'locked', 'unknown', 'other'];
  const kindOf = (o: HistoryOp) => (kinds.includes(o.outcome!) ? o.outcome! : 'other');
  const counts = edges.map(() => new Map<string, number>());
  for (const o of done) {
    const ms = o.end! - o.start;
    const i = edges.findIndex((e) => ms <= e);
    counts[i]!.set(kindOf(o), (counts[i]!.get(kindOf(o)) ?? 0) + 1);
  }
  const max = Math.max(...counts.map((m) => [...m.values()].reduce((a, b) => a + b, 0)));
  const W = 560, H = 180, bw = (W - 40) / edges.length;
  const out = [`<svg width="${W}" height="${H + 40}" class="histogram">`];
  counts.forEach((m, i) => {
    let top = H;
    for (const k of kinds) {
      const n = m.get(k) ?? 0;
      if (!n) continue;
      const hh = (H - 10) * (n / max);
      top -= hh;
      out.push(`<rect x="${30 + i * bw}" y="${top}" width="${bw - 4}" height="${hh}" fill="${OUTCOME_COLOUR(k === 'other' ? 'x' : k)}"><title>${n} ${k}, ${i === 0 ? 0 : edges[i - 1]}-${edges[i]} ms</title></rect>`);
    }
    out.push(`<text x="${30 + i * bw + bw / 2 - 2}" y="${H + 14}" class="axis">${edges[i] === Infinity ? '&gt;5s' : `${edges[i]}`}</text>`);
  });
  out.push(`<text x="30" y="${H + 32}" class="axis">latency (ms, virtual in the simulator; bucket upper bound); bars stacked by outcome</text></svg>`);
  return out.join('\n');
}

const OP_COLOUR: Record<string, string> = { register: '#6a1b9a', attempt: '#1565c0', outcome: '#ef8c00', recover: '#2e8b57', status: '#607d8b', delete: '#c62828' };

/** HDR percentiles per kind of operation (latency.ts), as a table and a percentile curve. */
function latencyTable(rows: LatencyRow[]): string {
  if (rows.length === 0) return '';
  const f = (ms: number) => (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2));
  const body = rows.map((r) => `<tr><td><span class="key" style="background:${OP_COLOUR[r.op] ?? '#000'}"></span>${esc(r.op)}</td><td>${r.count}</td><td>${f(r.p50)}</td><td>${f(r.p90)}</td><td>${f(r.p99)}</td><td>${f(r.p999)}</td><td>${f(r.max)}</td></tr>`).join('');
  // x: the number of nines (90% at 1, 99% at 2, ...); y: log ms. The curve's last point is the max.
  const W = 560, H = 180, L = 40, nines = (p: number) => Math.min(4.5, -Math.log10(Math.max(1e-6, 1 - p / 100)));
  const all = rows.flatMap((r) => r.curve.map(([, ms]) => Math.max(0.01, ms)));
  const lo = Math.floor(Math.log10(Math.min(...all))), hi = Math.max(lo + 1, Math.ceil(Math.log10(Math.max(...all))));
  const x = (p: number) => L + ((W - L - 10) * nines(p)) / 4.5;
  const y = (ms: number) => H - ((H - 10) * (Math.log10(Math.max(0.01, ms)) - lo)) / (hi - lo);
  const out = [`<svg width="${W}" height="${H + 30}" class="percentiles">`];
  for (let d = lo; d <= hi; d++) out.push(`<line x1="${L}" x2="${W - 10}" y1="${y(10 ** d)}" y2="${y(10 ** d)}" stroke="#eceff1"/><text x="2" y="${y(10 ** d) + 3}" class="axis">${10 ** d >= 1 ? 10 ** d : (10 ** d).toFixed(-d)} ms</text>`);
  for (const [p, label] of [[0, '0%'], [90, '90%'], [99, '99%'], [99.9, '99.9%'], [99.99, '99.99%']] as const) out.push(`<text x="${x(p) - 8}" y="${H + 14}" class="axis">${label}</text>`);
  for (const r of rows) out.push(`<polyline points="${r.curve.map(([p, ms]) => `${x(p).toFixed(1)},${y(ms).toFixed(1)}`).join(' ')}" fill="none" stroke="${OP_COLOUR[r.op] ?? '#000'}" stroke-width="1.5"><title>${esc(r.op)}</title></polyline>`);
  out.push(`<text x="${L}" y="${H + 27}" class="axis">latency at each percentile (HDR histogram, 3 significant digits), log scale</text></svg>`);
  return `<table class="latency"><tr><th>operation</th><th>completed</th><th>p50 ms</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>${body}</table>${out.join('')}`;
}

function throughput(h: RunHistory): string {
  // About 200 points whatever the run's length (250 ms for a simulator seed).
  const bucket = Math.max(250, Math.ceil(h.end / 200 / 250) * 250);
  const n = Math.ceil(h.end / bucket) + 1;
  const c = new Array<number>(n).fill(0);
  for (const o of h.ops) if (o.end !== null) c[Math.floor(o.end / bucket)]!++;
  const max = Math.max(1, ...c);
  const W = 560, H = 140;
  const pts = c.map((v, i) => `${30 + ((W - 40) * i) / Math.max(1, n - 1)},${H - (H - 10) * (v / max)}`).join(' ');
  return `<svg width="${W}" height="${H + 30}" class="throughput"><polyline points="${pts}" fill="none" stroke="#1565c0" stroke-width="1.5"/><text x="30" y="${H + 20}" class="axis">operations completed per ${bucket} ms (max ${max})</text></svg>`;
}

/** A simulator seed's settings, as the page states them. */
export function simSettingsText(s: VaultRunSettings): string {
  return `${s.replicas} replicas, snapshot every ${s.snapshotEvery} entries, network delay 1-${s.net.maxDelayMs} ms, loss ${s.net.dropRate * 100}%, duplication ${s.net.dupRate * 100}%, disk writes up to ${s.diskMaxMs} ms${s.tokenFailureRate === null ? '' : `, token call failures ${s.tokenFailureRate * 100}%`}.`;
}

export function renderRunReport(r: RunReport): string {
  const h = r.history;
  const rows = r.violations.map((v, i) => {
    const near = opsNear(h, v);
    return `<tr id="violation-${i + 1}"><td>${i + 1}</td><td>${esc(v)}</td><td>${near.map((o) => `<a href="#op-${o.id}">#${o.id}</a>`).join(' ') || '-'}</td></tr>`;
  }).join('\n');
  // A long live run has tens of thousands of operations: the table keeps those around violations
  // and the first few thousand (history.jsonl has them all).
  const near = new Set(r.violations.flatMap((v) => opsNear(h, v).map((o) => o.id)));
  const shown = h.ops.length <= MAX_TABLE_OPS ? h.ops : h.ops.filter((o, i) => i < MAX_TABLE_OPS || near.has(o.id));
  const opRows = shown.map((o) => `<tr id="op-${o.id}"><td>#${o.id}</td><td>${esc(o.user)}</td><td>${o.op}${o.op === 'recover' || o.op === 'outcome' ? (o.correct ? ' (right)' : ' (wrong)') : ''}</td><td>${o.start}</td><td>${o.end ?? '-'}</td><td style="color:${OUTCOME_COLOUR(o.outcome)}">${esc(o.outcome ?? 'open (counted as used)')}</td></tr>`).join('\n');
  const legend = Object.entries(ROLE_COLOUR).map(([k, c]) => `<span class="key" style="background:${c}"></span>${k}`).join(' ');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(r.title)}</title>
<style>
body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #263238; }
h1 { font-size: 18px; } h2 { font-size: 15px; margin-top: 22px; }
.verdict { font-weight: bold; padding: 4px 8px; display: inline-block; color: #fff; background: ${r.ok ? '#2e8b57' : '#c62828'}; }
table { border-collapse: collapse; } td, th { border: 1px solid #cfd8dc; padding: 2px 6px; text-align: left; vertical-align: top; }
.axis { font-size: 10px; fill: #607d8b; } .lane { font-size: 12px; font-weight: bold; } .term { font-size: 10px; fill: #fff; }
.vlabel { font-size: 11px; fill: #d50000; font-weight: bold; } .key { display: inline-block; width: 12px; height: 12px; margin: 0 3px 0 10px; vertical-align: middle; }
code { background: #eceff1; padding: 1px 4px; } .charts { display: flex; gap: 24px; flex-wrap: wrap; }
</style></head><body>
<h1>${esc(r.title)}</h1>
<p><span class="verdict" id="verdict">${r.ok ? 'HELD: every invariant' : `FAILED: ${r.violations.length} violation${r.violations.length === 1 ? '' : 's'}`}</span></p>
${r.summary ? `<p>${r.summary.map(esc).join('<br>')}</p>` : ''}
<p>Seed ${r.seed}: ${esc(r.settingsText)}
Replay: <code>${esc(r.replay)}</code></p>
<h2>Timeline</h2>
<p>Replica lanes: ${legend}; orange strip: paused, purple strip: forked; red triangles: faults (hover for what); pink bands: partitions.
User lanes: operations from invoke to completion (green: released or ok, light blue: KE2 (an attempt charged), orange: wrong password, red: locked, grey: unknown outcome, counted as used, purple: other errors); blue line: attempts left (of ${h.limit}).</p>
${timeline(r)}
<h2>Violations</h2>
${r.violations.length ? `<table><tr><th>#</th><th>what</th><th>operations around it</th></tr>${rows}</table>` : '<p>None.</p>'}
<div class="charts"><div><h2>Latency</h2>${histogram(h.ops)}</div><div><h2>Throughput</h2>${throughput(h)}</div></div>
<h2>Latency percentiles</h2>
${latencyTable(latencyByOp(h.ops))}
<h2>Operations (${h.ops.length}${shown.length < h.ops.length ? `; the first ${MAX_TABLE_OPS} and those around violations shown, all in history.jsonl` : ''})</h2>
<table><tr><th>op</th><th>user</th><th>what</th><th>invoked (ms)</th><th>completed (ms)</th><th>outcome</th></tr>
${opRows}
</table>
</body></html>
`;
}
