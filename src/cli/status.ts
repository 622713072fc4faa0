/**
 * `status`: this instance's workers from the state file, with the API's live status when there is
 * a token; works with or without a running daemon.
 */
import { loadConfig, type Config } from '../core/config.js';
import { HcloudClient } from '../hcloud/client.js';
import type { Server, Volume } from '../hcloud/types.js';
import { instanceSelector, LABEL_POOL, LABEL_SLOT } from '../core/labels.js';
import { Ledger } from '../daemon/ledger.js';
import { volumePriceOf } from '../daemon/money.js';
import { isRecordOf, peekState } from '../daemon/state.js';
import { isOverdue, type DeletionRecord } from '../daemon/deletions.js';
import { formatDuration } from '../core/duration.js';
import { serverAddress } from '../hcloud/address.js';
import { defineCommand } from './command.js';
import { tryToken } from './common.js';

export interface StatusRow {
  id: number;
  name: string;
  pool: string;
  /** Our phase (creating, booting, ready, deleting), or "unknown to the daemon" for a labelled server the state lacks. */
  phase: string;
  /** The API's server status, when the API could be asked. */
  status?: string;
  address?: string;
  serverType: string;
  location: string;
  activeSessions: number;
  createdAt: string;
  idleSince?: string;
  hourlyPriceEur?: string;
  /** EUR billed for this server so far (every started hour). */
  costSoFarEur?: number;
  /** With compression "zstd": the level its last sessions settled on, up and down. */
  zstd?: { up?: string; down?: string };
}

/** A store volume of this instance (the warm store), as the API lists it. */
export interface VolumeRow {
  id: number;
  name: string;
  pool: string;
  slot: string;
  sizeGb: number;
  location: string;
  /** The server it is attached to (name, else id), or undefined when detached. */
  attachedTo?: string;
  /** Gross EUR per month (size × the API's price per GB-month), when the price could be read. */
  eurPerMonth?: number;
}

/** A server still being deleted (the daemon retries until the API says it is gone). */
export interface DeletionRow extends DeletionRecord {
  /** Failing for over an hour: an error, it bills meanwhile. */
  overdue: boolean;
}

export interface StatusReport {
  workers: StatusRow[];
  /** Servers whose delete has not succeeded yet, from the state file (the daemon keeps it current). */
  deletions: DeletionRow[];
  /** This instance's store volumes; absent when the API could not be asked. */
  volumes?: VolumeRow[];
  /** EUR billed this calendar month (UTC) for servers this daemon created. */
  spentThisMonthEur: number;
  budgetEurPerMonth?: number;
}

export async function gatherStatus(config: Config, token: string | undefined): Promise<StatusReport> {
  const ledger = Ledger.load(config.stateDir);
  const { rows: workers, hcloud, servers, deletions } = await gatherRows(config, token);
  for (const row of workers) {
    const cost = ledger.costSoFar(row.name);
    if (cost !== undefined) row.costSoFarEur = round(cost);
  }
  const report: StatusReport = { workers, deletions, spentThisMonthEur: round(ledger.spentThisMonth()) };
  if (config.budget) report.budgetEurPerMonth = config.budget.maxEurPerMonth;
  if (hcloud) {
    const volumes = await gatherVolumes(config, hcloud, servers);
    if (volumes) report.volumes = volumes;
  }
  return report;
}

async function gatherVolumes(config: Config, hcloud: HcloudClient, servers: Server[]): Promise<VolumeRow[] | undefined> {
  let volumes: Volume[];
  try {
    volumes = await hcloud.listVolumes({ labelSelector: instanceSelector(config.instance), sort: ['id:asc'] });
  } catch (err) {
    process.stderr.write(`nix-hcloud-builder: cannot list the store volumes: ${(err as Error).message}\n`);
    return undefined;
  }
  if (volumes.length === 0) return [];
  const perGb = await hcloud
    .getPricing()
    .then(volumePriceOf)
    .catch(() => Number.NaN);
  return Promise.all(
    volumes.map(async (v) => {
      const row: VolumeRow = {
        id: v.id,
        name: v.name,
        pool: v.labels[LABEL_POOL] ?? '',
        slot: v.labels[LABEL_SLOT] ?? '',
        sizeGb: v.size,
        location: v.location.name,
      };
      const holder = v.server;
      if (holder !== null && holder !== undefined) {
        // A server not labelled as ours may hold one (attached by hand): asked for by id.
        const name =
          servers.find((s) => s.id === holder)?.name ??
          (await hcloud.getServer(holder).then(
            (s) => s.name,
            () => undefined,
          ));
        row.attachedTo = name ?? `server ${holder}`;
      }
      if (Number.isFinite(perGb)) row.eurPerMonth = round(v.size * perGb);
      return row;
    }),
  );
}

function round(eur: number): number {
  return Math.round(eur * 10_000) / 10_000;
}

async function gatherRows(
  config: Config,
  token: string | undefined,
): Promise<{ rows: StatusRow[]; hcloud?: HcloudClient; servers: Server[]; deletions: DeletionRow[] }> {
  const { state, problem } = peekState(config.stateDir);
  if (problem) process.stderr.write(`nix-hcloud-builder: ${problem}\n`);
  const deletions: DeletionRow[] = (state?.deletions ?? []).map((d) => ({ ...d, overdue: isOverdue(d, Date.now()) }));
  const rows: StatusRow[] = (state?.workers ?? []).map((w) => {
    const row: StatusRow = {
      id: w.id,
      name: w.name,
      pool: w.pool,
      phase: w.phase,
      serverType: w.serverType,
      location: w.location,
      activeSessions: w.activeSessions,
      createdAt: w.createdAt,
    };
    if (w.address) row.address = w.address;
    if (w.idleSince) row.idleSince = w.idleSince;
    if (w.hourlyPriceEur) row.hourlyPriceEur = w.hourlyPriceEur;
    if (w.zstd) row.zstd = w.zstd;
    return row;
  });
  if (!token) return { rows, servers: [], deletions };
  const hcloud = new HcloudClient({ endpoint: config.hcloud.endpoint, token, retry: { maxRetries: 1 } });
  let servers: Server[];
  try {
    servers = await hcloud.listServers({ labelSelector: instanceSelector(config.instance) });
  } catch (err) {
    process.stderr.write(`nix-hcloud-builder: cannot ask the API for live status: ${(err as Error).message}\n`);
    return { rows, servers: [], deletions };
  }
  for (const server of servers) {
    const row = rows.find((r) => isRecordOf(r, server));
    if (row) row.status = server.status;
    else {
      const address = serverAddress(server);
      rows.push({
        id: server.id,
        name: server.name,
        pool: server.labels[LABEL_POOL] ?? '',
        status: server.status,
        phase: deletions.some((d) => isRecordOf(d, server)) ? 'deleting' : 'unknown to the daemon',
        serverType: server.server_type.name,
        location: server.location.name,
        activeSessions: 0,
        createdAt: server.created,
        ...(address === undefined ? {} : { address }),
      });
    }
  }
  for (const row of rows) if (row.status === undefined && row.id !== 0) row.status = 'gone';
  return { rows, hcloud, servers, deletions };
}

export function formatStatus(report: StatusReport): string {
  const money = `spent this month: €${report.spentThisMonthEur.toFixed(2)}${report.budgetEurPerMonth === undefined ? '' : ` of a €${report.budgetEurPerMonth.toFixed(2)} budget`}\n`;
  const rows = report.workers;
  const volumes = formatVolumes(report.volumes ?? []) + formatDeletions(report.deletions);
  if (rows.length === 0) return `no workers\n${volumes}${money}`;
  const header = [
    'ID',
    'NAME',
    'POOL',
    'PHASE',
    'STATUS',
    'ADDRESS',
    'TYPE',
    'LOCATION',
    'SESSIONS',
    'ZSTD UP/DOWN',
    'AGE',
    'IDLE',
    '€/H',
    'COST €',
  ];
  const age = (iso: string | undefined): string => {
    if (!iso) return '-';
    const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
  };
  const table = [
    header,
    ...rows.map((r) => [
      String(r.id),
      r.name,
      r.pool,
      r.phase,
      r.status ?? '?',
      r.address ?? '-',
      r.serverType || '-',
      r.location || '-',
      String(r.activeSessions),
      zstdLevels(r.zstd),
      age(r.createdAt),
      r.idleSince ? age(r.idleSince) : '-',
      r.hourlyPriceEur ? Number(r.hourlyPriceEur).toFixed(4) : '-',
      r.costSoFarEur === undefined ? '-' : r.costSoFarEur.toFixed(4),
    ]),
  ];
  return `${formatTable(table)}${volumes}${money}`;
}

/** "level 7" and "pass-through" as "7" and "raw": the column stays narrow. */
function zstdLevels(levels: StatusRow['zstd']): string {
  if (!levels) return '-';
  const short = (setting: string | undefined): string =>
    setting === undefined ? '-' : setting.replace(/^level /, '').replace('pass-through', 'raw');
  return `${short(levels.up)}/${short(levels.down)}`;
}

function formatTable(table: string[][]): string {
  const widths = (table[0] as string[]).map((_, i) => Math.max(...table.map((row) => (row[i] as string).length)));
  return `${table
    .map((row) =>
      row
        .map((cell, i) => cell.padEnd(widths[i] as number))
        .join('  ')
        .trimEnd(),
    )
    .join('\n')}\n`;
}

/** What is still being deleted, since when; an error line for each delete failing for over an hour. */
export function formatDeletions(deletions: DeletionRow[], now = Date.now()): string {
  if (deletions.length === 0) return '';
  const header = ['DELETING', 'NAME', 'REASON', 'SINCE', 'FAILED', 'LAST ERROR'];
  const table = [
    header,
    ...deletions.map((d) => [
      String(d.id),
      d.name,
      d.reason,
      `${d.since} (${formatDuration(now - Date.parse(d.since))} ago)`,
      String(d.failures),
      d.lastError ?? '-',
    ]),
  ];
  const errors = deletions
    .filter((d) => d.overdue)
    .map(
      (d) =>
        `error: server ${d.name} (id ${d.id}) is still not deleted after ${formatDuration(now - Date.parse(d.since))}; it bills meanwhile (last error: ${d.lastError ?? 'none'})\n`,
    );
  return `${formatTable(table)}${errors.join('')}`;
}

/** The store volumes' table, after the workers'; nothing when there are none. */
function formatVolumes(volumes: VolumeRow[]): string {
  if (volumes.length === 0) return '';
  const header = ['VOLUME', 'NAME', 'POOL', 'SLOT', 'SIZE', 'LOCATION', 'ATTACHED TO', '€/MONTH'];
  const table = [
    header,
    ...volumes.map((v) => [
      String(v.id),
      v.name,
      v.pool || '-',
      v.slot || '-',
      `${v.sizeGb} GB`,
      v.location,
      v.attachedTo ?? '-',
      v.eurPerMonth === undefined ? '-' : v.eurPerMonth.toFixed(2),
    ]),
  ];
  const monthly = volumes.reduce((sum, v) => sum + (v.eurPerMonth ?? 0), 0);
  return `${formatTable(table)}store volumes: €${monthly.toFixed(2)}/month, billed whether attached or not\n`;
}

export const status = defineCommand({
  name: 'status',
  synopsis: '[--json]',
  summary: "list this instance's workers: phase, the API's status, address, sessions, age, price; and this month's spend",
  options: {
    json: { type: 'boolean', description: 'the report as JSON, for scripts' },
  },
  async run(o, { configFile }) {
    const config = loadConfig(configFile);
    const report = await gatherStatus(config, tryToken(config));
    process.stdout.write(o.json ? `${JSON.stringify(report, null, 2)}\n` : formatStatus(report));
    return 0;
  },
});
