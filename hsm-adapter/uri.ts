// PKCS#11 URIs (RFC 7512), the portable way to name a token and an object, e.g.
// `pkcs11:token=us-east;object=record-key` or `pkcs11:serial=1234;slot-id=0?module-path=/x.so`.
import { TokenError } from './errors.ts';

export interface TokenSelector {
  token?: string;
  manufacturer?: string;
  model?: string;
  serial?: string;
  slotId?: string;
  /** object= : the key label the URI points at, if any. */
  object?: string;
  type?: string;
  modulePath?: string;
  /** pin-source= (a file path or file: URI). pin-value= is refused: a PIN does not belong in a URI. */
  pinSource?: string;
}

const pathAttrs: Record<string, keyof TokenSelector> = {
  token: 'token',
  manufacturer: 'manufacturer',
  model: 'model',
  serial: 'serial',
  'slot-id': 'slotId',
  object: 'object',
  type: 'type',
};
const queryAttrs: Record<string, keyof TokenSelector> = {
  'module-path': 'modulePath',
  'pin-source': 'pinSource',
};
// Attributes RFC 7512 defines that bkv accepts and ignores (they cannot select a wrong token).
const ignored = new Set(['library-manufacturer', 'library-description', 'library-version', 'slot-manufacturer', 'slot-description', 'id', 'module-name']);

function bad(uri: string, why: string): TokenError {
  return new TokenError('BAD_TOKEN_URI', `bad PKCS#11 URI '${uri.split('?')[0]}': ${why}`, { operation: 'parse-uri' });
}

function decode(uri: string, v: string): string {
  try {
    return decodeURIComponent(v);
  } catch {
    throw bad(uri, `bad percent-encoding in '${v}'`);
  }
}

/** A token label or a `pkcs11:` URI, as accepted by openToken. */
export function parseTokenSpec(spec: string): TokenSelector {
  if (!spec.startsWith('pkcs11:')) {
    if (!spec) throw bad(spec, 'empty token label');
    return { token: spec };
  }
  const rest = spec.slice('pkcs11:'.length);
  const q = rest.indexOf('?');
  const path = q < 0 ? rest : rest.slice(0, q);
  const query = q < 0 ? '' : rest.slice(q + 1);
  const sel: TokenSelector = {};
  const take = (part: string, table: Record<string, keyof TokenSelector>) => {
    if (!part) return;
    const eq = part.indexOf('=');
    if (eq < 0) throw bad(spec, `attribute '${part}' has no value`);
    const name = part.slice(0, eq).toLowerCase();
    if (name === 'pin-value') throw bad(spec, 'pin-value is not accepted; use pin-source=FILE or a PIN file');
    const key = table[name];
    if (!key) {
      if (ignored.has(name) || name.startsWith('x-')) return;
      throw bad(spec, `unknown attribute '${name}'`);
    }
    if (sel[key] !== undefined) throw bad(spec, `attribute '${name}' given twice`);
    sel[key] = decode(spec, part.slice(eq + 1));
  };
  for (const part of path.split(';')) take(part, pathAttrs);
  for (const part of query.split('&')) take(part, queryAttrs);
  if (!sel.token && !sel.serial && !sel.slotId && !sel.model && !sel.manufacturer) {
    throw bad(spec, 'names no token (give token=, serial= or slot-id=)');
  }
  return sel;
}

/** A short description of a selector for messages (never includes a PIN; pin-source is a path). */
export function describeSelector(sel: TokenSelector): string {
  const parts: string[] = [];
  if (sel.token !== undefined) parts.push(`token=${sel.token}`);
  if (sel.serial !== undefined) parts.push(`serial=${sel.serial}`);
  if (sel.slotId !== undefined) parts.push(`slot-id=${sel.slotId}`);
  if (sel.model !== undefined) parts.push(`model=${sel.model}`);
  if (sel.manufacturer !== undefined) parts.push(`manufacturer=${sel.manufacturer}`);
  return parts.join(';');
}
