// Validation of the fake API's answers (and of request bodies) against the
// Hetzner Cloud OpenAPI description in spec/hcloud/openapi.json.
//
// The description is OpenAPI 3.0: `nullable: true` is often used next to an
// `allOf` with no `type`, which Ajv's own `nullable` support rejects, so the
// component schemas are rewritten into plain JSON Schema first (`nullable`
// becomes a `null` alternative). Everything else is left as it is.

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
  responses: Map<string, Json | null>; // "200", "4xx", "default" -> schema; null: no body (e.g. 204)
  requestBody: Json | null;
}

interface Spec {
  ajv: Ajv;
  operations: Map<string, Operation>; // "GET /servers/{id}" -> op
  validators: Map<string, ValidateFunction>;
}

let cached: Spec | null = null;

function loadSpec(): Spec {
  if (cached) return cached;
  const doc: unknown = JSON.parse(readFileSync(SPEC_URL, 'utf8'));
  if (!isObject(doc) || !isObject(doc['components']) || !isObject(doc['paths'])) {
    throw new Error('spec/hcloud/openapi.json: not an OpenAPI document');
  }
  const components = doc['components'];
  const schemas = components['schemas'];
  if (!isObject(schemas)) throw new Error('spec/hcloud/openapi.json: no components.schemas');

  const ajv = new Ajv({ strict: false, allErrors: true, validateSchema: false, logger: false });
  const addFormats =
    addFormatsImport.default ??
    (addFormatsImport as unknown as FormatsPlugin);
  addFormats(ajv);
  // Prices are decimal numbers carried as strings ("1.1900000000").
  ajv.addFormat('decimal', /^-?\d+(\.\d+)?$/);
  ajv.addSchema({ $id: 'hcloud', components: { schemas: denullable(schemas) } });

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
  cached = { ajv, operations, validators: new Map() };
  return cached;
}

function jsonSchemaOf(holder: Json | undefined): Json | undefined {
  if (!isObject(holder)) return undefined;
  const content = holder['content'];
  if (!isObject(content)) return undefined;
  const media = content['application/json'];
  if (!isObject(media)) return undefined;
  const schema = media['schema'];
  return schema === undefined ? undefined : rebase(denullable(schema));
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

function validatorFor(spec: Spec, key: string, schema: Json): ValidateFunction {
  let v = spec.validators.get(key);
  if (!v) {
    v = spec.ajv.compile(isObject(schema) ? schema : {});
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
  return loadSpec().operations.has(`${method.toUpperCase()} ${template}`);
}

/**
 * Checks a JSON answer. Returns null when it matches, else a one-line
 * description of the mismatch.
 */
export function checkResponse(method: string, template: string, status: number, body: unknown): string | null {
  const spec = loadSpec();
  const op = spec.operations.get(`${method.toUpperCase()} ${template}`);
  const where = `${method.toUpperCase()} ${template} -> ${status}`;
  if (!op) return `${where}: no such operation in openapi.json`;
  const code = [String(status), `${String(status)[0]}xx`, `${String(status)[0]}XX`, 'default'].find((c) =>
    op.responses.has(c),
  );
  if (code === undefined) return `${where}: status not described in openapi.json`;
  const schema = op.responses.get(code);
  if (schema === undefined) return null;
  if (schema === null) return body === undefined ? null : `${where}: a body where openapi.json describes none`;
  const validate = validatorFor(spec, `res ${op.method} ${op.template} ${code}`, schema);
  return validate(body) ? null : `${where} (${op.operationId}): ${formatErrors(validate.errors)}`;
}

/** Checks a request body; returns the failures as (field, message) pairs. */
export function checkRequestBody(method: string, template: string, body: unknown): { name: string; message: string }[] {
  const spec = loadSpec();
  const op = spec.operations.get(`${method.toUpperCase()} ${template}`);
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

/** Checks any value against a named component schema (used by tests). */
export function checkSchema(name: string, value: unknown): string | null {
  const spec = loadSpec();
  const validate = validatorFor(spec, `schema ${name}`, { $ref: `hcloud#/components/schemas/${name}` });
  return validate(value) ? null : `${name}: ${formatErrors(validate.errors)}`;
}
