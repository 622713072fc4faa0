/**
 * Reading a JSON config: typed fields of one object at a time, each error naming its key and what
 * was expected, and unknown keys refused (a misspelt key is never silently ignored).
 */
import { parseDuration } from './duration.js';
import { UserError } from './errors.js';

export class ConfigError extends UserError {
  override name = 'ConfigError';
}

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Reads typed fields of one JSON object, and reports the keys nobody asked for. */
export class Fields {
  private readonly seen = new Set<string>();
  constructor(
    private readonly obj: JsonObject,
    private readonly at: string,
  ) {}

  private key(k: string): string {
    return this.at ? `${this.at}.${k}` : k;
  }
  private take(k: string): Json | undefined {
    this.seen.add(k);
    return this.obj[k];
  }
  fail(k: string, expected: string, got: unknown): never {
    throw new ConfigError(`config key "${this.key(k)}": expected ${expected}, got ${JSON.stringify(got)}`);
  }
  string(k: string, fallback?: string): string {
    const v = this.take(k);
    if (v === undefined && fallback !== undefined) return fallback;
    if (typeof v !== 'string' || v.length === 0) this.fail(k, 'a non-empty string', v);
    return v;
  }
  optionalString(k: string): string | undefined {
    const v = this.take(k);
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v.length === 0) this.fail(k, 'a non-empty string', v);
    return v;
  }
  integer(k: string, fallback: number, min: number, max: number): number {
    const v = this.take(k);
    if (v === undefined) return fallback;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) this.fail(k, `an integer from ${min} to ${max}`, v);
    return v;
  }
  number(k: string, fallback: number): number {
    const v = this.take(k);
    if (v === undefined) return fallback;
    if (typeof v !== 'number' || !(v > 0)) this.fail(k, 'a positive number', v);
    return v;
  }
  boolean(k: string, fallback: boolean): boolean {
    const v = this.take(k);
    if (v === undefined) return fallback;
    if (typeof v !== 'boolean') this.fail(k, 'true or false', v);
    return v;
  }
  duration(k: string, fallback: string): number {
    const v = this.take(k) ?? fallback;
    try {
      return parseDuration(v);
    } catch (err) {
      throw new ConfigError(`config key "${this.key(k)}": ${(err as Error).message}`);
    }
  }
  strings(k: string, fallback?: string[]): string[] {
    const v = this.take(k);
    if (v === undefined && fallback) return fallback;
    if (!Array.isArray(v) || v.some((s) => typeof s !== 'string' || s.length === 0)) this.fail(k, 'a list of non-empty strings', v);
    return v as string[];
  }
  oneOf<T extends string>(k: string, allowed: readonly T[], fallback: T): T {
    const v = this.take(k);
    if (v === undefined) return fallback;
    if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v))
      this.fail(k, `one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}`, v);
    return v as T;
  }
  object(k: string): Fields | undefined {
    const v = this.take(k);
    if (v === undefined) return undefined;
    if (!isObject(v)) this.fail(k, 'an object', v);
    return new Fields(v, this.key(k));
  }
  raw(k: string): Json | undefined {
    return this.take(k);
  }
  /** Call last: unknown keys are errors, so a misspelt key is never silently ignored. */
  done(): void {
    for (const k of Object.keys(this.obj)) {
      if (!this.seen.has(k)) {
        throw new ConfigError(`config key "${this.key(k)}" is not known; known keys here: ${[...this.seen].join(', ')}`);
      }
    }
  }
}
