// Every folder README's "May import" rule, checked against the real imports, and the purity of the
// trusted cores (no I/O modules, clocks, timers or ambient randomness). The rules are restated here
// as data, and each is checked to be named in its README, so the two cannot drift apart silently.
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { dirname, join, normalize } from 'node:path';
import { describe, expect, it } from 'vitest';

interface Rule {
  /** Other bkv paths (folders ending in '/', or files) this folder may import. */
  internal: string[];
  /** Packages and node: modules allowed; undefined = any. */
  external?: string[];
  /** A trusted core: no clock or timer ('random': nor ambient randomness: it is handed its generators). */
  pure?: boolean | 'random';
}

const ANY = ['bench/', 'scripts/', 'test/'];
const RULES: Record<string, Rule> = {
  'chatd/': { internal: ['protocol/'] },
  'client/': { internal: ['protocol/'] },
  'hsm-adapter/': { internal: ['protocol/errors.ts'] },
  'native/': { internal: [], external: ['node:module', 'node:url'] },
  'protocol/': { internal: ['hsm-adapter/token.ts', 'native/'] },
  'protocol/opaque/': { internal: ['protocol/errors.ts', 'native/index.ts', 'hsm-adapter/token.ts'], external: ['@noble/curves', '@noble/hashes', 'libsodium-wrappers-sumo', 'node:crypto'], pure: true },
  'softhsm/': { internal: ['hsm-adapter/', 'protocol/errors.ts', 'protocol/opaque/'] },
  'vault/consensus/': { internal: ['protocol/errors.ts'], external: ['msgpackr'], pure: 'random' },
  'vault/firmware/': { internal: ['protocol/', 'hsm-adapter/token.ts'], external: ['node:crypto', 'msgpackr'], pure: 'random' },
  'vault/replica/': { internal: ['vault/firmware/', 'vault/consensus/index.ts', 'protocol/', 'hsm-adapter/token.ts'], external: ['msgpackr'], pure: 'random' },
  'vault/agent/': { internal: ['vault/firmware/', 'protocol/', 'hsm-adapter/'] },
  'vault/sim/': { internal: ['vault/consensus/index.ts', 'vault/firmware/', 'vault/replica/', 'protocol/', 'hsm-adapter/token.ts'], external: ['msgpackr', '@noble/hashes', '@noble/curves', 'node:crypto'], pure: 'random' },
  'vault/fleet/': { internal: ['protocol/', 'hsm-adapter/token.ts', 'hsm-adapter/pkcs11-token.ts', 'hsm-adapter/faulty-token.ts', 'vault/replica/', 'vault/firmware/', 'vault/consensus/index.ts', 'vault/agent/', 'softhsm/state.ts'] },
  'vault/': { internal: ['protocol/', 'hsm-adapter/', 'softhsm/', 'vault/agent/', 'vault/firmware/'] },
};

const files = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', '*.ts'], { encoding: 'utf8' })
  .split('\n').filter((f) => f && !f.endsWith('.d.ts') && !f.startsWith('node_modules/'));
const IMPORT = /(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g;

/** The rule's folder for a file: the longest matching key. */
function areaOf(f: string): string | undefined {
  return Object.keys(RULES).filter((k) => f.startsWith(k) && !f.slice(k.length).includes('/')).sort((a, b) => b.length - a.length)[0];
}

function importsOf(f: string): { internal: string[]; external: string[] } {
  const src = readFileSync(f, 'utf8');
  const internal: string[] = [];
  const external: string[] = [];
  for (const m of src.matchAll(IMPORT)) {
    const t = m[1] ?? m[2]!;
    if (t.startsWith('.')) internal.push(normalize(join(dirname(f), t)));
    else external.push(t);
  }
  return { internal, external };
}

const allowed = (path: string, list: string[]) => list.some((a) => (a.endsWith('/') ? path.startsWith(a) : path === a));

describe('import rules', () => {
  it('every import of every folder is one its README allows', () => {
    const bad: string[] = [];
    for (const f of files) {
      if (ANY.some((a) => f.startsWith(a))) continue;
      const area = areaOf(f);
      if (!area) continue;
      const rule = RULES[area]!;
      const { internal, external } = importsOf(f);
      for (const t of internal) {
        if (t.startsWith(area)) continue; // its own tree
        if (!allowed(t, rule.internal)) bad.push(`${f} imports ${t}`);
      }
      if (rule.external) for (const t of external) if (!rule.external.some((e) => t === e || t.startsWith(`${e}/`))) bad.push(`${f} imports ${t}`);
    }
    expect(bad).toEqual([]);
  });

  it('nothing imports upward into scripts/, bench/ or test/', () => {
    const bad: string[] = [];
    for (const f of files) {
      if (ANY.some((a) => f.startsWith(a)) || !areaOf(f)) continue;
      for (const t of importsOf(f).internal) if (ANY.some((a) => t.startsWith(a))) bad.push(`${f} imports ${t}`);
    }
    expect(bad).toEqual([]);
  });

  it('each rule is the one its folder README states', () => {
    const missing: string[] = [];
    for (const [area, rule] of Object.entries(RULES)) {
      const readme = readFileSync(join(area, 'README.md'), 'utf8');
      const i = readme.search(/may import/i);
      expect(i, `${area}README.md has no "May import" rule`).toBeGreaterThanOrEqual(0);
      const para = readme.slice(i, readme.indexOf('\n\n', i) === -1 ? undefined : readme.indexOf('\n\n', i));
      for (const p of rule.internal) {
        const folder = p.endsWith('/') ? p : p.slice(0, p.lastIndexOf('/') + 1);
        if (!para.includes(p) && !para.includes(folder) && !para.includes(p.split('/').at(-1)!)) missing.push(`${area}README.md does not name ${p}`);
      }
    }
    expect(missing).toEqual([]);
  });

  it('the trusted cores read no clock, set no timer and draw no ambient randomness', () => {
    const bad: string[] = [];
    for (const f of files) {
      const area = areaOf(f);
      if (!area || !RULES[area]!.pure) continue;
      const code = readFileSync(f, 'utf8').replace(/\/\/.*$/gm, '').replace(/\/\*[\s\S]*?\*\//g, '');
      const words = ['Date.now(', 'new Date(', 'setTimeout(', 'setInterval(', 'performance.now(', 'process.env'];
      if (RULES[area]!.pure === 'random') words.push('Math.random(', 'randomBytes(', 'getRandomValues(');
      for (const w of words) {
        if (code.includes(w)) bad.push(`${f} uses ${w}`);
      }
    }
    expect(bad).toEqual([]);
  });

  it('every exported class, interface and type has a name of its own', () => {
    const where = new Map<string, string[]>();
    for (const f of files) {
      if (ANY.some((a) => f.startsWith(a)) || !areaOf(f)) continue;
      for (const m of readFileSync(f, 'utf8').matchAll(/^export (?:abstract )?(?:class|interface|type) (\w+)/gm)) {
        where.set(m[1]!, [...(where.get(m[1]!) ?? []), f]);
      }
    }
    expect([...where].filter(([, fs]) => fs.length > 1).map(([n, fs]) => `${n}: ${fs.join(', ')}`)).toEqual([]);
  });
});
