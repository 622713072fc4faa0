/**
 * What can be bought and for how much: server types, locations, prices. Part of `HcloudClient`.
 */
import { isRecord, type Transport } from '../transport.js';
import type { Location, Pricing, ServerType } from '../types.js';

export abstract class CatalogCalls {
  /** Provided by `HcloudClient`: every call goes through it. */
  declare readonly transport: Transport;

  async listServerTypes(signal?: AbortSignal): Promise<ServerType[]> {
    return this.transport.paginate('list_server_types', '/server_types', {}, (a) => a.server_types, signal);
  }

  async listLocations(signal?: AbortSignal): Promise<Location[]> {
    return this.transport.paginate('list_locations', '/locations', {}, (a) => a.locations, signal);
  }

  /**
   * `GET /pricing`: the project's prices (net and gross, its currency and VAT), among them
   * `volume.price_per_gb_month` and `image.price_per_gb_month`.
   */
  async getPricing(signal?: AbortSignal): Promise<Pricing> {
    const answer = await this.transport.request('list_prices', { method: 'GET', path: '/pricing', signal });
    if (!isRecord(answer) || !isRecord(answer.pricing)) throw this.transport.invalid('GET', '/pricing', 200, 'answer lacks pricing');
    return answer.pricing;
  }
}
