/**
 * Images (snapshots, backups, system images): list, get, update, delete. Part of `HcloudClient`.
 */
import { isRecord, listQuery, type Transport } from '../transport.js';
import type { Image, ListImagesQuery, UpdateImageRequest } from '../types.js';

export abstract class ImageCalls {
  /** Provided by `HcloudClient`: every call goes through it. */
  declare readonly transport: Transport;

  /** `GET /images`, following pagination to the end. */
  async listImages(q: ListImagesQuery = {}, signal?: AbortSignal): Promise<Image[]> {
    return this.transport.paginate('list_images', '/images', listQuery<'list_images'>(q), (a) => a.images, signal);
  }

  /** `GET /images/{id}`; a missing image throws `not_found`. */
  async getImage(id: number, signal?: AbortSignal): Promise<Image> {
    const path = `/images/${id}`;
    const answer = await this.transport.request('get_image', { method: 'GET', path, signal });
    if (!isRecord(answer) || !isRecord(answer.image)) throw this.transport.invalid('GET', path, 200, 'answer lacks image');
    return answer.image;
  }

  /**
   * `PUT /images/{id}`: sets the description and/or the labels (the labels given replace all of
   * the image's labels). Resent like a GET: the same body applied twice leaves the same image.
   */
  async updateImage(id: number, req: UpdateImageRequest, signal?: AbortSignal): Promise<Image> {
    const path = `/images/${id}`;
    const answer = await this.transport.request('replace_image', { method: 'PUT', path, body: req, signal, replay: 'idempotent' });
    if (!isRecord(answer) || !isRecord(answer.image)) throw this.transport.invalid('PUT', path, 200, 'answer lacks image');
    return answer.image;
  }

  /** `DELETE /images/{id}` (snapshots and backups); an image already gone throws `not_found`. */
  async deleteImage(id: number, signal?: AbortSignal): Promise<void> {
    await this.transport.request('delete_image', { method: 'DELETE', path: `/images/${id}`, signal });
  }
}
