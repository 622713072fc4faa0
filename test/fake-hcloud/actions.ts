// The fake cloud's actions: each long operation (create, start, delete, attach, …) is an action
// that runs until its room finishes it. Tests can hold every action of a command running
// (`holdActions`) to see what holds meanwhile, without racing a timer.

import type { components } from '../../src/hcloud/openapi.js';
import { ApiError, invalidInput, iso } from './api.js';
import type { Router } from './http.js';

export type Action = components['schemas']['action'];
type ResourceType = 'server' | 'volume';

/** An action as an answer shows it: a copy of its resources, which later pushes do not change. */
export function actionJson(a: Action): Action {
  return { ...a, resources: [...a.resources] };
}

export class ActionLog {
  private readonly byId = new Map<number, Action>();
  /** The ids of each resource's actions, oldest first ("server:<id>", "volume:<id>"). */
  private readonly byResource = new Map<string, number[]>();
  /** Commands whose actions are held running (`hold`), with how each would have ended. */
  private readonly holds = new Map<string, (() => void)[]>();
  private readonly finishListeners: ((id: number) => void)[] = [];
  private nextId = 5_000_000_001;

  get(id: number): Action | undefined {
    return this.byId.get(id);
  }

  /** The actions about a resource, oldest first. */
  of(type: ResourceType, id: number): Action[] {
    return (this.byResource.get(`${type}:${id}`) ?? []).map((a) => this.byId.get(a)).filter((a): a is Action => a !== undefined);
  }

  /** A running action about one server. */
  start(command: string, serverId: number): Action {
    return this.startFor(command, [{ id: serverId, type: 'server' }]);
  }

  /** A running action about these resources, listed among the actions of each server and volume of them. */
  startFor(command: string, resources: Action['resources']): Action {
    const action: Action = {
      id: this.nextId++,
      command,
      status: 'running',
      progress: 0,
      started: iso(new Date()),
      finished: null,
      resources: resources.map((r) => ({ ...r })),
      error: null,
    };
    this.byId.set(action.id, action);
    for (const r of resources) {
      const key = `${r.type}:${r.id}`;
      this.byResource.set(key, [...(this.byResource.get(key) ?? []), action.id]);
    }
    return action;
  }

  /** Called with the id of every action that ends (well or not). */
  onFinish(listener: (id: number) => void): void {
    this.finishListeners.push(listener);
  }

  /**
   * Keeps every action of this command running until the returned function is called (then they
   * end as they would have): for tests of what holds while an action runs, without racing its timer.
   */
  hold(command: string): () => void {
    const held: (() => void)[] = [];
    this.holds.set(command, held);
    return () => {
      if (this.holds.get(command) === held) this.holds.delete(command);
      for (const finish of held) finish();
    };
  }

  /** True when actions of `command` are held: then `later` runs at the release instead. */
  held(command: string, later: () => void): boolean {
    const held = this.holds.get(command);
    held?.push(later);
    return held !== undefined;
  }

  finish(id: number, error: { code: string; message: string } | null = null): void {
    const a = this.byId.get(id);
    if (!a || a.status !== 'running') return;
    if (this.held(a.command, () => this.finish(id, error))) return;
    a.status = error ? 'error' : 'success';
    a.error = error;
    a.progress = 100;
    a.finished = iso(new Date());
    for (const listener of this.finishListeners) listener(id);
  }

  routes(router: Router): void {
    router.add('GET', '/actions', (c) => {
      const raw = c.query.getAll('id');
      if (raw.length === 0) {
        throw invalidInput('missing id: listing all actions is no longer supported', [{ name: 'id', messages: ['is required'] }]);
      }
      const ids = raw.map((r) => {
        if (!/^\d+$/.test(r)) throw invalidInput(`invalid id '${r}'`, [{ name: 'id', messages: ['must be an integer'] }]);
        return Number(r);
      });
      const found = ids.map((id) => this.byId.get(id)).filter((a): a is Action => a !== undefined);
      return { status: 200, body: { actions: found } };
    });
    router.add('GET', '/actions/{id}', (c) => {
      const a = this.byId.get(c.params['id'] ?? -1);
      if (!a) throw new ApiError(404, 'not_found', `action with ID '${c.params['id']}' not found`);
      return { status: 200, body: { action: a } };
    });
  }
}
