// The API's rate limit: a bucket of `limit` requests that refills by `refill` a second, as the
// RateLimit-* headers of every answer tell (429 rate_limit_exceeded when it is empty).

export class RateLimit {
  private tokens: number;
  private at = Date.now();

  constructor(
    private readonly limit: number,
    private readonly refill: number,
  ) {
    this.tokens = limit;
  }

  /** Takes one request from the bucket; false when it is empty. */
  take(): boolean {
    this.refillBucket();
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  headers(): Record<string, string> {
    this.refillBucket();
    const resetIn = this.refill > 0 ? Math.ceil((this.limit - this.tokens) / this.refill) : 0;
    return {
      'RateLimit-Limit': String(this.limit),
      'RateLimit-Remaining': String(Math.floor(this.tokens)),
      'RateLimit-Reset': String(Math.floor(Date.now() / 1000) + resetIn),
    };
  }

  private refillBucket(): void {
    const now = Date.now();
    this.tokens = Math.min(this.limit, this.tokens + ((now - this.at) / 1000) * this.refill);
    this.at = now;
  }
}
