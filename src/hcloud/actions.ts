/**
 * The one action waiter: `getAction` and `waitForActions`, polling `GET /actions?id=…` until
 * every action succeeded (or one failed: then its error). Part of `HcloudClient`.
 */
import { HcloudError } from './errors.js';
import { isRecord, type Transport } from './transport.js';
import type { Action } from './types.js';

export interface WaitForActionsOptions {
  signal?: AbortSignal;
  /** Give up (code `action_wait_timeout`) when the actions are not done by then. No limit by default. */
  timeoutMs?: number;
  /** Called with an action each time a poll shows its status or progress changed. */
  onProgress?: (action: Action) => void;
}

/** Action ids per `GET /actions` poll (the API's default page size, so one page always suffices). */
const ACTION_IDS_PER_POLL = 25;

function sameProgress(a: Action, b: Action): boolean {
  return a.status === b.status && a.progress === b.progress;
}

function throwIfFailed(action: Action): void {
  if (action.status !== 'error') return;
  throw new HcloudError({
    status: 0,
    code: action.error?.code ?? 'action_failed',
    message: action.error?.message ?? `action ${action.id} (${action.command}) failed`,
    details: { actionId: action.id, command: action.command, resources: action.resources },
    action,
  });
}

export abstract class ActionCalls {
  /** Provided by `HcloudClient`: every call goes through it. */
  declare readonly transport: Transport;
  /** Between two polls of `waitForActions`; provided by `HcloudClient` (default 500 ms, as hcloud-go). */
  declare readonly actionPollIntervalMs: number;

  async getAction(id: number, signal?: AbortSignal): Promise<Action> {
    const path = `/actions/${id}`;
    const answer = await this.transport.request('get_action', { method: 'GET', path, signal });
    if (!isRecord(answer.action)) throw this.transport.invalid('GET', path, 200, 'answer lacks action');
    return answer.action;
  }

  /**
   * Waits until every action is `success`, polling `GET /actions?id=..&id=..` every
   * `actionPollIntervalMs`. The first action seen in status `error` throws `HcloudError` with the
   * action's error code and message, `status` 0, `action` set and `details`
   * `{actionId, command, resources}`. Answers the actions in their final state, in the given order.
   */
  async waitForActions(actions: Action[], opts: WaitForActionsOptions = {}): Promise<Action[]> {
    const { signal, timeoutMs, onProgress } = opts;
    const deadline = timeoutMs === undefined ? undefined : this.transport.now() + timeoutMs;
    const latest = new Map<number, Action>();
    for (const action of actions) {
      latest.set(action.id, action);
      throwIfFailed(action);
    }
    const running = (): number[] => [...latest.values()].filter((a) => a.status === 'running').map((a) => a.id);

    for (let ids = running(); ids.length > 0; ids = running()) {
      let wait = this.actionPollIntervalMs;
      if (deadline !== undefined) {
        const left = deadline - this.transport.now();
        if (left <= 0) {
          throw new HcloudError({
            status: 0,
            code: 'action_wait_timeout',
            message: `actions ${ids.join(', ')} still running after ${timeoutMs} ms`,
            details: { actionIds: ids, commands: ids.map((id) => latest.get(id)?.command) },
          });
        }
        wait = Math.min(wait, left);
      }
      await this.transport.pause(wait, signal, 'GET', '/actions');
      for (let i = 0; i < ids.length; i += ACTION_IDS_PER_POLL) {
        const chunk = ids.slice(i, i + ACTION_IDS_PER_POLL);
        const answer = await this.transport.request('get_multiple_actions', {
          method: 'GET',
          path: '/actions',
          query: { id: chunk },
          signal,
        });
        if (!Array.isArray(answer.actions)) throw this.transport.invalid('GET', '/actions', 200, 'answer lacks actions');
        for (const id of chunk) {
          const fresh = answer.actions.find((a) => a.id === id);
          if (fresh === undefined) throw this.transport.invalid('GET', '/actions', 200, `action ${id} is missing from the answer`);
          const before = latest.get(id);
          latest.set(id, fresh);
          if (before === undefined || !sameProgress(before, fresh)) onProgress?.(fresh);
          throwIfFailed(fresh);
        }
      }
    }
    return actions.map((a) => latest.get(a.id) ?? a);
  }
}
