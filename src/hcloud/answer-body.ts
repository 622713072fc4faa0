/**
 * Reading an API answer's body with a size limit: a broken proxy or a hostile endpoint must not
 * fill the daemon's memory.
 */

/** Answers are read up to this size (a page of 50 servers is ≈ 200 KB). */
export const MAX_ANSWER_BYTES = 8 * 1024 * 1024;

export class AnswerTooLarge extends Error {
  override name = 'AnswerTooLarge';
}

/** The body as text, refused once it passes `limit` bytes (by its Content-Length, or as it streams). */
export async function readLimited(res: Response, limit: number): Promise<string> {
  const tooLarge = (): AnswerTooLarge => new AnswerTooLarge(`answer is larger than ${limit} bytes`);
  const declared = Number(res.headers.get('content-length') ?? 0);
  if (declared > limit) {
    await res.body?.cancel().catch(() => undefined);
    throw tooLarge();
  }
  if (!res.body) return '';
  const reader: ReadableStreamDefaultReader<Uint8Array> = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > limit) {
      await reader.cancel().catch(() => undefined);
      throw tooLarge();
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}
