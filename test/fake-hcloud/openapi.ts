// Validation of the fake API's answers (and of request bodies) against the
// Hetzner Cloud OpenAPI description in spec/hcloud/openapi.json.
//
// The description is OpenAPI 3.0: `nullable: true` is often used next to an
// `allOf` with no `type`, which Ajv's own `nullable` support rejects, so the
// component schemas are rewritten into plain JSON Schema first (`nullable`
// becomes a `null` alternative). Everything else is left as it is.
//
// The API as it answers on a given day: a property the description marks `deprecated` with a
// removal date ("will be removed after the 1 July 2026") is no longer sent from the day after.
// `withoutRemoved` leaves such properties out of an answer, and the validation schemas of that
// day no longer require them (one set of validators per set of past removal dates).

import { readFileSync } from 'node:fs';
import { Ajv, type ValidateFunction, type ErrorObject } from 'ajv';
import addFormatsImport from 'ajv-formats';
import type { FormatsPlugin } from 'ajv-formats';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

const SPEC_URL = new URL('../../spec/hcloud/openapi.json', import.meta.url);

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Rewrites OpenAPI 3.0 `nullable` into JSON Schema, recursively. */
export function denullable(node: Json): Json {
  if (Array.isArray(node)) return node.map(denullable);
  if (!isObject(node)) return node;
  const out: JsonObject = {};
  for (const [k, v] of Object.entries(node)) {
    // `example`/`examples` are data, not schemas: copy them untouched.
    out[k] = k === 'example' || k === 'examples' ? v : denullable(v);
  }
  if (out['nullable'] !== true) {
    delete out['nullable'];
    return out;
  }
  delete out['nullable'];
  const type = out['type'];
  if (typeof type === 'string') {
    out['type'] = [type, 'null'];
    const en = out['enum'];
    if (Array.isArray(en) && !en.includes(null)) out['enum'] = [...en, null];
    return out;
  }
  // No `type` (e.g. `{allOf: [{$ref}], nullable: true}`): keep the annotations
  // outside and put the constraint into an alternative with null.
  const annotations: JsonObject = {};
  const constraint: JsonObject = {};
  for (const [k, v] of Object.entries(out)) {
    if (k === 'description' || k === 'title' || k === 'deprecated' || k === 'example') annotations[k] = v;
    else constraint[k] = v;
  }
  return { ...annotations, anyOf: [constraint, { type: 'null' }] };
}

interface Operation {
  method: string; // upper case
  template: string; // e.g. "/servers/{id}"
  operationId: string;
  responses: Map<string, Json | null>; // "200", "4xx", "default" -> schema as written; null: no body (e.g. 204)
  requestBody: Json | null;
}

/** The description as read: the document and its operations ("GET /servers/{id}" -> op). */
interface Doc {
  doc: JsonObject;
  schemas: JsonObject;
  operations: Map<string, Operation>;
  /** The removal dates the description names, as times. */
  removals: number[];
}

/** The validators of one day's API. */
interface Spec {
  ajv: Ajv;
  asOf: Date;
  validators: Map<string, ValidateFunction>;
}

let cachedDoc: Doc | null = null;
const specs = new Map<string, Spec>();

function loadDoc(): Doc {
  if (cachedDoc) return cachedDoc;
  const doc: unknown = JSON.parse(readFileSync(SPEC_URL, 'utf8'));
  if (!isObject(doc) || !isObject(doc['components']) || !isObject(doc['paths'])) {
    throw new Error('spec/hcloud/openapi.json: not an OpenAPI document');
  }
  const schemas = doc['components']['schemas'];
  if (!isObject(schemas)) throw new Error('spec/hcloud/openapi.json: no components.schemas');
  const operations = new Map<string, Operation>();
  for (const [template, item] of Object.entries(doc['paths'])) {
    if (!isObject(item)) continue;
    for (const [method, op] of Object.entries(item)) {
      if (!isObject(op) || !isObject(op['responses'])) continue;
      const responses = new Map<string, Json | null>();
      for (const [code, resp] of Object.entries(op['responses'])) {
        const schema = jsonSchemaOf(resp);
        if (schema !== undefined) responses.set(code, schema);
        else if (isObject(resp) && resp['content'] === undefined) responses.set(code, null);
      }
      const requestBody = jsonSchemaOf(op['requestBody']) ?? null;
      operations.set(`${method.toUpperCase()} ${template}`, {
        method: method.toUpperCase(),
        template,
        operationId: typeof op['operationId'] === 'string' ? op['operationId'] : `${method} ${template}`,
        responses,
        requestBody,
      });
    }
  }
  const removals = new Set<number>();
  const collect = (node: Json): void => {
    if (Array.isArray(node)) node.forEach(collect);
    if (!isObject(node)) return;
    const date = removalOf(node);
    if (date) removals.add(date.getTime());
    for (const [k, v] of Object.entries(node)) if (k !== 'example' && k !== 'examples') collect(v);
  };
  collect(doc);
  cachedDoc = { doc, schemas, operations, removals: [...removals].sort((a, b) => a - b) };
  return cachedDoc;
}

/** The validators of the API on `asOf`: shared by all days with the same removals past. */
function loadSpec(asOf: Date): Spec {
  const { schemas, removals } = loadDoc();
  const era = removals.filter((r) => r <= asOf.getTime()).join(',');
  const known = specs.get(era);
  if (known) return known;
  const ajv = new Ajv({ strict: false, allErrors: true, validateSchema: false, logger: false });
  const addFormats = addFormatsImport.default ?? (addFormatsImport as unknown as FormatsPlugin);
  addFormats(ajv);
  // Prices are decimal numbers carried as strings ("1.1900000000").
  ajv.addFormat('decimal', /^-?\d+(\.\d+)?$/);
  ajv.addSchema({ $id: 'hcloud', components: { schemas: validationSchema(schemas, asOf) } });
  const spec: Spec = { ajv, asOf, validators: new Map() };
  specs.set(era, spec);
  return spec;
}

/** A schema as Ajv checks it on `asOf`: removed properties not required, `nullable` rewritten. */
function validationSchema(schema: Json, asOf: Date): Json {
  return denullable(withoutRemovedRequired(schema, asOf));
}

function jsonSchemaOf(holder: Json | undefined): Json | undefined {
  if (!isObject(holder)) return undefined;
  const content = holder['content'];
  if (!isObject(content)) return undefined;
  const media = content['application/json'];
  if (!isObject(media)) return undefined;
  return media['schema'];
}

/** Points local `$ref`s (`#/components/...`) at the schema registered as "hcloud". */
function rebase(node: Json): Json {
  if (Array.isArray(node)) return node.map(rebase);
  if (!isObject(node)) return node;
  const out: JsonObject = {};
  for (const [k, v] of Object.entries(node)) {
    out[k] = k === '$ref' && typeof v === 'string' && v.startsWith('#/') ? `hcloud${v}` : rebase(v);
  }
  return out;
}

/** `schema` as written in the description (compiled for the spec's day) or, with `asIs`, ready for Ajv. */
function validatorFor(spec: Spec, key: string, schema: Json, asIs = false): ValidateFunction {
  let v = spec.validators.get(key);
  if (!v) {
    const ready = asIs ? schema : rebase(validationSchema(schema, spec.asOf));
    v = spec.ajv.compile(isObject(ready) ? ready : {});
    spec.validators.set(key, v);
  }
  return v;
}

function formatErrors(errors: ErrorObject[] | null | undefined): string {
  return (errors ?? [])
    .slice(0, 5)
    .map((e) => `${e.instancePath || '/'} ${e.message ?? 'invalid'}${e.params ? ' ' + JSON.stringify(e.params) : ''}`)
    .join('; ');
}

/** True when the description has this operation (method + path template). */
export function hasOperation(method: string, template: string): boolean {
  return loadDoc().operations.has(`${method.toUpperCase()} ${template}`);
}

/**
 * Checks a JSON answer against the API of `asOf` (default: now). Returns null when it matches,
 * else a one-line description of the mismatch.
 */
export function checkResponse(method: string, template: string, status: number, body: unknown, asOf = new Date()): string | null {
  const spec = loadSpec(asOf);
  const op = loadDoc().operations.get(`${method.toUpperCase()} ${template}`);
  const where = `${method.toUpperCase()} ${template} -> ${status}`;
  if (!op) return `${where}: no such operation in openapi.json`;
  const code = [String(status), `${String(status)[0]}xx`, `${String(status)[0]}XX`, 'default'].find((c) => op.responses.has(c));
  if (code === undefined) return `${where}: status not described in openapi.json`;
  const schema = op.responses.get(code);
  if (schema === undefined) return null;
  if (schema === null) return body === undefined ? null : `${where}: a body where openapi.json describes none`;
  const validate = validatorFor(spec, `res ${op.method} ${op.template} ${code}`, schema);
  return validate(body) ? null : `${where} (${op.operationId}): ${formatErrors(validate.errors)}`;
}

/** Checks a request body; returns the failures as (field, message) pairs. */
export function checkRequestBody(method: string, template: string, body: unknown, asOf = new Date()): { name: string; message: string }[] {
  const spec = loadSpec(asOf);
  const op = loadDoc().operations.get(`${method.toUpperCase()} ${template}`);
  if (!op || op.requestBody === null) return [];
  const validate = validatorFor(spec, `req ${op.method} ${op.template}`, op.requestBody);
  if (validate(body)) return [];
  return (validate.errors ?? []).map((e) => {
    const field =
      e.keyword === 'required' && typeof e.params['missingProperty'] === 'string'
        ? e.params['missingProperty']
        : e.instancePath.replace(/^\//, '').split('/')[0] || '(body)';
    return { name: field, message: e.message ?? 'invalid' };
  });
}

/** Checks any value against a named component schema (of the API of `asOf`, default: now). */
export function checkSchema(name: string, value: unknown, asOf = new Date()): string | null {
  const spec = loadSpec(asOf);
  const validate = validatorFor(spec, `schema ${name}`, { $ref: `hcloud#/components/schemas/${name}` }, true);
  return validate(value) ? null : `${name}: ${formatErrors(validate.errors)}`;
}

// ------------------------------------------------------------------ deprecated properties

const MONTHS = ['january', 'february', 'march', 'april', 'may', 'june', 'july', 'august', 'september', 'october', 'november', 'december'];

/**
 * The first day a deprecated property is no longer sent: the day after the date in "will be
 * removed after the 1 July 2026" (UTC). Null when the text names no such date (the property is
 * deprecated but still sent).
 */
export function removalDate(description: string): Date | null {
  const m = /removed after (?:the )?(\d{1,2})\.? ([A-Za-z]+),? (\d{4})/i.exec(description);
  const month = MONTHS.indexOf((m?.[2] ?? '').toLowerCase());
  if (!m || month < 0) return null;
  return new Date(Date.UTC(Number(m[3]), month, Number(m[1]) + 1));
}

/** The removal date of a schema node marked `deprecated` (null: not deprecated, or no date). */
function removalOf(node: Json | undefined): Date | null {
  if (!isObject(node) || node['deprecated'] !== true) return null;
  return typeof node['description'] === 'string' ? removalDate(node['description']) : null;
}

function isRemoved(node: Json | undefined, asOf: Date): boolean {
  const date = removalOf(node);
  return date !== null && date.getTime() <= asOf.getTime();
}

/** A schema whose `required` lists leave out the properties removed by `asOf`, recursively. */
function withoutRemovedRequired(node: Json, asOf: Date): Json {
  if (Array.isArray(node)) return node.map((n) => withoutRemovedRequired(n, asOf));
  if (!isObject(node)) return node;
  const out: JsonObject = {};
  for (const [k, v] of Object.entries(node)) {
    out[k] = k === 'example' || k === 'examples' ? v : withoutRemovedRequired(v, asOf);
  }
  const properties = out['properties'];
  const required = out['required'];
  if (isObject(properties) && Array.isArray(required)) {
    out['required'] = required.filter((name) => typeof name !== 'string' || !isRemoved(properties[name], asOf));
  }
  return out;
}

/** What a local `$ref` ("#/components/schemas/x") names. */
function resolveRef(doc: JsonObject, ref: string): Json | undefined {
  let node: Json | undefined = doc;
  for (const part of ref.replace(/^#\//, '').split('/')) node = isObject(node) ? node[part] : undefined;
  return node;
}

/**
 * Calls `visit` for a schema and each schema it stands for or combines (`$ref`, `allOf`, `anyOf`,
 * `oneOf`), with the `$ref`s followed on the way: a schema met again below itself is skipped.
 */
type Visit = (schema: JsonObject, seen: ReadonlySet<string>) => void;
function eachSchemaOf(doc: JsonObject, schema: Json | undefined, visit: Visit, seen: ReadonlySet<string> = new Set()): void {
  if (!isObject(schema)) return;
  const ref = schema['$ref'];
  if (typeof ref === 'string') {
    if (!seen.has(ref)) eachSchemaOf(doc, resolveRef(doc, ref), visit, new Set([...seen, ref]));
    return;
  }
  visit(schema, seen);
  for (const key of ['allOf', 'anyOf', 'oneOf']) {
    const parts = schema[key];
    if (Array.isArray(parts)) for (const part of parts) eachSchemaOf(doc, part, visit, seen);
  }
}

/** `value` without the properties its schema marks deprecated and removed by `asOf`. */
function stripRemoved(doc: JsonObject, schema: Json | undefined, value: Json, asOf: Date): Json {
  if (Array.isArray(value)) {
    let items: Json[] = value;
    eachSchemaOf(doc, schema, (s) => {
      if (s['items'] !== undefined) items = items.map((item) => stripRemoved(doc, s['items'], item, asOf));
    });
    return items;
  }
  if (!isObject(value)) return value;
  const out: JsonObject = { ...value };
  eachSchemaOf(doc, schema, (s) => {
    const properties = isObject(s['properties']) ? s['properties'] : {};
    const others = isObject(s['additionalProperties']) ? s['additionalProperties'] : undefined;
    for (const [name, child] of Object.entries(out)) {
      const sub = properties[name] ?? others;
      if (sub === undefined) continue;
      if (isRemoved(sub, asOf)) delete out[name];
      else out[name] = stripRemoved(doc, sub, child, asOf);
    }
  });
  return out;
}

/** An answer as the API sends it on `asOf`: without the properties its schema says are removed by then. */
export function withoutRemoved(method: string, template: string, status: number, body: unknown, asOf: Date): unknown {
  const { doc, operations } = loadDoc();
  const schema = operations.get(`${method.toUpperCase()} ${template}`)?.responses.get(String(status));
  if (schema === undefined || schema === null || body === undefined) return body;
  return stripRemoved(doc, schema, JSON.parse(JSON.stringify(body)) as Json, asOf);
}

/** A property that an answer's schema marks deprecated. */
export interface DeprecatedProperty {
  method: string;
  template: string;
  status: string;
  /** Property names from the answer's top down; "[]" stands for each item of an array. */
  path: string[];
  /** The first day the API no longer sends it; null when its description names no date. */
  removedFrom: Date | null;
}

/** Every property marked deprecated in the 2xx answers of these operations, read from their schemas. */
export function deprecatedAnswerProperties(operations: readonly { method: string; template: string }[]): DeprecatedProperty[] {
  const { doc, operations: all } = loadDoc();
  const found: DeprecatedProperty[] = [];
  const walk = (
    where: Omit<DeprecatedProperty, 'path' | 'removedFrom'>,
    schema: Json | undefined,
    path: string[],
    seen: ReadonlySet<string>,
  ): void => {
    eachSchemaOf(
      doc,
      schema,
      (s, below) => {
        if (s['items'] !== undefined) walk(where, s['items'], [...path, '[]'], below);
        if (!isObject(s['properties'])) return;
        for (const [name, sub] of Object.entries(s['properties'])) {
          if (isObject(sub) && sub['deprecated'] === true) found.push({ ...where, path: [...path, name], removedFrom: removalOf(sub) });
          else walk(where, sub, [...path, name], below);
        }
      },
      seen,
    );
  };
  for (const { method, template } of operations) {
    const op = all.get(`${method.toUpperCase()} ${template}`);
    if (!op) throw new Error(`${method} ${template}: no such operation in openapi.json`);
    for (const [status, schema] of op.responses) {
      if (status.startsWith('2') && schema !== null) walk({ method: op.method, template, status }, schema, [], new Set());
    }
  }
  return found;
}
