/** pino logger: JSON by default, one readable line per event on a terminal; secrets redacted by key. */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

/** Keys whose values are secrets wherever they appear in a log object. */
export const REDACT_PATHS = [
  'token',
  '*.token',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'privateKey',
  '*.privateKey',
  'loginPrivateKey',
  '*.loginPrivateKey',
  'user_data',
  '*.user_data',
  'userData',
  '*.userData',
];

export interface LogOptions {
  level: string;
  /** Force readable lines (default: when stderr is a terminal). */
  pretty?: boolean;
  destination?: DestinationStream;
}

function readableLine(level: number, time: number, msg: string, rest: Record<string, unknown>): string {
  const names: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
  const fields = Object.entries(rest)
    .filter(([k]) => !['pid', 'hostname', 'v'].includes(k))
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
  return `${new Date(time).toISOString().slice(11, 23)} ${(names[level] ?? String(level)).padEnd(5)} ${msg}${fields ? `  ${fields}` : ''}\n`;
}

/** A destination that rewrites pino's JSON lines as short readable ones (no extra dependency). */
function readableDestination(out: NodeJS.WritableStream): DestinationStream {
  return {
    write(line: string): void {
      try {
        const { level, time, msg, ...rest } = JSON.parse(line) as { level: number; time: number; msg?: string } & Record<string, unknown>;
        out.write(readableLine(level, time, msg ?? '', rest));
      } catch {
        out.write(line);
      }
    },
  };
}

export function createLogger(options: LogOptions): Logger {
  const pretty = options.pretty ?? process.stderr.isTTY === true;
  const destination = options.destination ?? (pretty ? readableDestination(process.stderr) : pino.destination({ fd: 2, sync: true }));
  return pino(
    {
      level: options.level,
      base: { pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      serializers: { err: pino.stdSerializers.err },
    },
    destination,
  );
}
