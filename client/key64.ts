// The backup key K and its human form, the 64-digit key: K as 64 hex digits, shown in 16 groups of 4.
// Parsing is forgiving about layout (spaces, dashes, line breaks, case) and strict about content; its
// errors say what and where but never echo the key, since a typo'd key is still almost all of K.
import { randomBytes } from 'node:crypto';
import { Key64Error } from './errors.ts';

export const KEY_BYTES = 32;
export const KEY64_DIGITS = 64;

/** A fresh backup key K from the OS CSPRNG. */
export function generateBackupKey(): Uint8Array {
  return new Uint8Array(randomBytes(KEY_BYTES));
}

/** K as 16 space-separated groups of 4 lowercase hex digits. */
export function formatKey64(key: Uint8Array): string {
  if (key.length !== KEY_BYTES) throw new Key64Error(`a backup key is ${KEY_BYTES} bytes, got ${key.length}`);
  const hex = Buffer.from(key).toString('hex');
  return hex.match(/.{4}/g)!.join(' ');
}

/** The same groups laid out as 4 lines of 4 groups, for printing once to the user. */
export function formatKey64Lines(key: Uint8Array): string[] {
  const groups = formatKey64(key).split(' ');
  return [0, 4, 8, 12].map((i) => groups.slice(i, i + 4).join(' '));
}

// Layout characters a user may type or paste between digits. Anything else is an error.
const SEPARATORS = new Set([' ', '-', '\t', '\n', '\r']);

function describeChar(ch: string): string {
  const cp = ch.codePointAt(0)!;
  // Printable ASCII is safe to echo (one character of a key is not the key); others by code point.
  return cp > 0x20 && cp < 0x7f ? `'${ch}'` : `U+${cp.toString(16).toUpperCase().padStart(4, '0')}`;
}

/**
 * Parses a 64-digit key. Positions in errors are 1-based and count characters of the input as typed,
 * so the user can find the culprit.
 */
export function parseKey64(text: string): Uint8Array {
  let digits = '';
  let position = 0;
  for (const ch of text) {
    position++;
    if (SEPARATORS.has(ch)) continue;
    if (!/^[0-9a-fA-F]$/.test(ch)) {
      throw new Key64Error(`character ${describeChar(ch)} at position ${position} is not a hex digit`);
    }
    digits += ch;
  }
  if (digits.length === 0) throw new Key64Error(`the key is empty, need ${KEY64_DIGITS} hex digits`);
  if (digits.length !== KEY64_DIGITS) throw new Key64Error(`got ${digits.length} digits, need ${KEY64_DIGITS}`);
  return new Uint8Array(Buffer.from(digits, 'hex'));
}
