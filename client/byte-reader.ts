// Pulls exact byte counts out of a chunked async source without buffering more than one upstream
// chunk ahead, so the decryptor and the archive reader keep constant memory and honour backpressure.

export class ByteReader {
  private readonly it: AsyncIterator<Uint8Array>;
  private buf: Buffer = Buffer.alloc(0);
  private done = false;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.it = source[Symbol.asyncIterator]();
  }

  private async fill(): Promise<boolean> {
    while (this.buf.length === 0 && !this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else this.buf = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
    }
    return this.buf.length > 0;
  }

  /** Up to n bytes; fewer only at the end of the source. Copies, since callers keep the result. */
  async read(n: number): Promise<Buffer> {
    if (this.buf.length >= n) {
      const out = Buffer.from(this.buf.subarray(0, n));
      this.buf = this.buf.subarray(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let have = 0;
    while (have < n && (await this.fill())) {
      const take = Math.min(n - have, this.buf.length);
      this.buf.copy(out, have, 0, take);
      this.buf = this.buf.subarray(take);
      have += take;
    }
    return have === n ? out : out.subarray(0, have);
  }

  /** Yields the next n bytes as they arrive (views, no copy); stops early at the end of the source. */
  async *chunks(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0 && (await this.fill())) {
      const take = Math.min(left, this.buf.length);
      const piece = this.buf.subarray(0, take);
      this.buf = this.buf.subarray(take);
      left -= take;
      yield piece;
    }
  }

  /** True when no byte is left. */
  async atEnd(): Promise<boolean> {
    return !(await this.fill());
  }

  /** Lets the source release its resources (file handles) when we stop early. */
  async close(): Promise<void> {
    this.done = true;
    this.buf = Buffer.alloc(0);
    await this.it.return?.();
  }
}
