// Reading a Prometheus text exposition in tests: one helper for every /metrics test.

/** The value of one sample line (`name{labels} value`), summed over the series matching every label given. */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  let seen = false;
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) { sum += Number(m[3]); seen = true; }
  }
  if (!seen) throw new Error(`no sample ${name} ${JSON.stringify(labels)}`);
  return sum;
}
