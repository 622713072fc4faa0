/**
 * Friendly names for the Hetzner Cloud API shapes the builder uses. Every type here is derived
 * from the generated `openapi.ts` (run `npm run gen:types` after updating the spec); nothing is
 * written out by hand, so a spec update shows up as a type error where the code depends on it.
 */
import type { components, operations } from './openapi.js';

type Schemas = components['schemas'];

export type Server = Schemas['server'];
export type ServerStatus = Server['status'];
export type Action = Schemas['action'];
export type ActionStatus = Action['status'];
/** The `error` member of a failed action: `{code, message}`. */
export type ActionError = Schemas['error'];
export type ServerType = Schemas['server_type'];
export type Location = Schemas['location'];
export type Image = Schemas['image'];
export type Labels = Schemas['labels'];
export type Pagination = Schemas['pagination'];
export type ListMeta = Schemas['meta'];
/** Body of every failed answer: `{"error": {code, message, details}}`. */
export type ErrorResponse = Schemas['error_response'];
export type ApiErrorBody = ErrorResponse['error'];

export type CreateServerRequest = Schemas['create_server_request'];
export type CreateServerResponse = Schemas['create_server_response'];
export type GetServerResponse = Schemas['get_server_response'];
export type ListServersResponse = Schemas['list_servers_response'];
export type DeleteServerResponse = Schemas['delete_server_response'];
export type GetActionResponse = Schemas['get_action_response'];
export type GetMultipleActionsResponse = Schemas['get_multiple_actions_response'];
export type ListActionsResponse = Schemas['list_actions_response'];
export type ListServerTypesResponse = Schemas['list_server_types_response'];
export type ListLocationsResponse = Schemas['list_locations_response'];
export type ListImagesResponse = Schemas['list_images_response'];
export type SshKey = Schemas['ssh_key'];
export type CreateSshKeyRequest = Schemas['create_ssh_key_request'];
export type EnableRescueRequest = Schemas['enable_rescue_mode_for_server_request'];
export type EnableRescueResponse = Schemas['enable_rescue_mode_for_server_response'];
export type CreateImageRequest = Schemas['create_image_from_server_request'];
export type CreateImageResponse = Schemas['create_image_from_server_response'];
/** Body of `PUT /images/{id}`: description and labels (the labels given replace all of them). */
export type UpdateImageRequest = Schemas['replace_image_request'];

export type Volume = Schemas['volume'];
export type VolumeStatus = Volume['status'];
export type CreateVolumeResponse = Schemas['create_volume_response'];
/** Body of `PUT /volumes/{id}`: name and labels (the labels given replace all of them). */
export type UpdateVolumeRequest = Schemas['replace_volume_request'];
export type UpdateSshKeyRequest = Schemas['replace_ssh_key_request'];
/** `GET /pricing`: every resource's price, net and gross, in the project's currency. */
export type Pricing = OkAnswer<'list_prices'>['pricing'];
/** A price as the API writes it: decimal strings, `{net, gross}`. */
export type Price = Schemas['price'];

/** Query parameters of an operation (never `undefined`). */
export type QueryOf<Op extends keyof operations> = NonNullable<operations[Op]['parameters']['query']>;

/** One element of an array-valued query parameter, e.g. `ListQueryItem<'list_images', 'type'>`. */
export type ListQueryItem<Op extends keyof operations, K extends keyof QueryOf<Op>> =
  NonNullable<QueryOf<Op>[K]> extends readonly (infer E)[] ? E : NonNullable<QueryOf<Op>[K]>;

export type ImageType = ListQueryItem<'list_images', 'type'>;
export type ImageSort = ListQueryItem<'list_images', 'sort'>;
export type ImageStatus = ListQueryItem<'list_images', 'status'>;
export type Architecture = NonNullable<QueryOf<'list_images'>['architecture']>;
export type ServerSort = ListQueryItem<'list_servers', 'sort'>;

/** The JSON body of an operation's successful (200 or 201) answer. */
export type OkAnswer<Op extends keyof operations> = operations[Op]['responses'] extends infer R
  ? R extends { 200: { content: { 'application/json': infer J } } }
    ? J
    : R extends { 201: { content: { 'application/json': infer J } } }
      ? J
      : never
  : never;

/** Filters for `HcloudClient.listServers`. */
export interface ListServersQuery {
  labelSelector?: string;
  name?: string;
  status?: ServerStatus[];
  sort?: ServerSort | ServerSort[];
}

/** Filters for `HcloudClient.listImages`. */
export interface ListImagesQuery {
  type?: ImageType | ImageType[];
  status?: ImageStatus | ImageStatus[];
  name?: string;
  architecture?: Architecture;
  labelSelector?: string;
  sort?: ImageSort | ImageSort[];
  includeDeprecated?: boolean;
}

export type SshKeySort = ListQueryItem<'list_ssh_keys', 'sort'>;

/** Filters for `HcloudClient.listSshKeys`. */
export interface ListSshKeysQuery {
  labelSelector?: string;
  name?: string;
  fingerprint?: string;
  sort?: SshKeySort | SshKeySort[];
}

export type VolumeSort = ListQueryItem<'list_volumes', 'sort'>;

/** Filters for `HcloudClient.listVolumes`. */
export interface ListVolumesQuery {
  labelSelector?: string;
  name?: string;
  status?: VolumeStatus[];
  sort?: VolumeSort | VolumeSort[];
}

/**
 * What `HcloudClient.createVolume` asks for: a volume in a location, not attached (attach it
 * with `attachVolume`, or give its id in a server's `volumes`). Never automounted: the worker
 * decides where its file system goes.
 */
export interface CreateVolumeOptions {
  /** Unique per project: alphanumeric ends, dashes, underscores, dots, at most 64. */
  name: string;
  /** GB, 10..10240. */
  size: number;
  /** Location name or id, e.g. `fsn1`. */
  location: string;
  labels?: Labels;
  /** Formatted once at creation; unformatted (a raw block device) when absent. */
  format?: 'xfs' | 'ext4';
}

/** A pino-compatible logger (pino's `Logger` fits). */
export interface Logger {
  debug(obj: Record<string, unknown>, msg: string): void;
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
}
