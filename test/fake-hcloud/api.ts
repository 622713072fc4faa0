// What every part of the fake API answers with: its one error type (turned into the
// `{"error": {code, message, details}}` body by http.ts) and the real API's time format.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: unknown = null,
  ) {
    super(message);
  }
}

export const invalidInput = (message: string, fields: { name: string; messages: string[] }[]): ApiError =>
  new ApiError(422, 'invalid_input', message, { fields });

/** RFC 3339 time as the real API writes it: "2016-01-30T23:50:00+00:00". */
export function iso(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, '+00:00');
}
