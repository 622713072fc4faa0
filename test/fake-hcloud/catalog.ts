// The fake's fixed catalogue: locations, data centers, server types and
// system images, modelled on what the real API lists (2025/2026 lines).
// Prices are per location, as decimal strings, net and gross (19 % VAT),
// with the same number of decimals as the real API.

import type { components } from '../../src/hcloud/openapi.js';

export type Location = components['schemas']['location'];
export type DataCenter = components['schemas']['data_center'];
export type ServerType = components['schemas']['server_type'];
export type Image = components['schemas']['image'];
export type PricePerTime = components['schemas']['price_per_time'];

const TB = 1024 ** 4;

interface LocationRow {
  id: number;
  name: string;
  description: string;
  country: string;
  city: string;
  latitude: number;
  longitude: number;
  network_zone: string;
  dcId: number;
  dcName: string;
  dcDescription: string;
  includedTraffic: number;
  pricePerTb: string;
}

const LOCATION_ROWS: LocationRow[] = [
  {
    id: 1,
    name: 'fsn1',
    description: 'Falkenstein DC Park 1',
    country: 'DE',
    city: 'Falkenstein',
    latitude: 50.47612,
    longitude: 12.370071,
    network_zone: 'eu-central',
    dcId: 4,
    dcName: 'fsn1-dc14',
    dcDescription: 'Falkenstein 1 virtual DC 14',
    includedTraffic: 20 * TB,
    pricePerTb: '1.0000',
  },
  {
    id: 2,
    name: 'nbg1',
    description: 'Nuremberg DC Park 1',
    country: 'DE',
    city: 'Nuremberg',
    latitude: 49.452102,
    longitude: 11.076665,
    network_zone: 'eu-central',
    dcId: 2,
    dcName: 'nbg1-dc3',
    dcDescription: 'Nuremberg 1 virtual DC 3',
    includedTraffic: 20 * TB,
    pricePerTb: '1.0000',
  },
  {
    id: 3,
    name: 'hel1',
    description: 'Helsinki DC Park 1',
    country: 'FI',
    city: 'Helsinki',
    latitude: 60.169855,
    longitude: 24.938379,
    network_zone: 'eu-central',
    dcId: 3,
    dcName: 'hel1-dc2',
    dcDescription: 'Helsinki 1 virtual DC 2',
    includedTraffic: 20 * TB,
    pricePerTb: '1.0000',
  },
  {
    id: 4,
    name: 'ash',
    description: 'Ashburn, VA',
    country: 'US',
    city: 'Ashburn, VA',
    latitude: 39.045821,
    longitude: -77.487073,
    network_zone: 'us-east',
    dcId: 5,
    dcName: 'ash-dc1',
    dcDescription: 'Ashburn virtual DC 1',
    includedTraffic: 1 * TB,
    pricePerTb: '1.0000',
  },
  {
    id: 5,
    name: 'hil',
    description: 'Hillsboro, OR',
    country: 'US',
    city: 'Hillsboro, OR',
    latitude: 45.54222,
    longitude: -122.951924,
    network_zone: 'us-west',
    dcId: 6,
    dcName: 'hil-dc1',
    dcDescription: 'Hillsboro virtual DC 1',
    includedTraffic: 1 * TB,
    pricePerTb: '1.0000',
  },
  {
    id: 6,
    name: 'sin',
    description: 'Singapore',
    country: 'SG',
    city: 'Singapore',
    latitude: 1.283333,
    longitude: 103.833333,
    network_zone: 'ap-southeast',
    dcId: 7,
    dcName: 'sin-dc1',
    dcDescription: 'Singapore virtual DC 1',
    includedTraffic: 0.5 * TB,
    pricePerTb: '7.4000',
  },
];

const EU = ['fsn1', 'nbg1', 'hel1'];
const ALL = LOCATION_ROWS.map((l) => l.name);

interface TypeRow {
  id: number;
  name: string;
  cores: number;
  memory: number;
  disk: number;
  arch: 'x86' | 'arm';
  cpu: 'shared' | 'dedicated';
  category: string;
  monthly: string; // net, EUR
  hourly: string; // net, EUR
  where: string[];
  deprecation?: { announced: string; unavailable_after: string };
}

const TYPE_ROWS: TypeRow[] = [
  // Shared vCPU, Intel/AMD, cost optimised.
  {
    id: 114,
    name: 'cx23',
    cores: 2,
    memory: 4,
    disk: 40,
    arch: 'x86',
    cpu: 'shared',
    category: 'cost_optimized',
    monthly: '2.9900',
    hourly: '0.0048',
    where: EU,
  },
  {
    id: 115,
    name: 'cx33',
    cores: 4,
    memory: 8,
    disk: 80,
    arch: 'x86',
    cpu: 'shared',
    category: 'cost_optimized',
    monthly: '4.9900',
    hourly: '0.0080',
    where: EU,
  },
  {
    id: 116,
    name: 'cx43',
    cores: 8,
    memory: 16,
    disk: 160,
    arch: 'x86',
    cpu: 'shared',
    category: 'cost_optimized',
    monthly: '9.4900',
    hourly: '0.0152',
    where: EU,
  },
  {
    id: 117,
    name: 'cx53',
    cores: 16,
    memory: 32,
    disk: 320,
    arch: 'x86',
    cpu: 'shared',
    category: 'cost_optimized',
    monthly: '17.4900',
    hourly: '0.0280',
    where: EU,
  },
  // Shared vCPU, AMD, regular performance.
  {
    id: 118,
    name: 'cpx12',
    cores: 1,
    memory: 2,
    disk: 40,
    arch: 'x86',
    cpu: 'shared',
    category: 'regular_purpose',
    monthly: '4.4900',
    hourly: '0.0072',
    where: ALL,
  },
  {
    id: 119,
    name: 'cpx22',
    cores: 2,
    memory: 4,
    disk: 80,
    arch: 'x86',
    cpu: 'shared',
    category: 'regular_purpose',
    monthly: '5.9900',
    hourly: '0.0096',
    where: ALL,
  },
  {
    id: 120,
    name: 'cpx32',
    cores: 4,
    memory: 8,
    disk: 160,
    arch: 'x86',
    cpu: 'shared',
    category: 'regular_purpose',
    monthly: '10.4900',
    hourly: '0.0168',
    where: ALL,
  },
  {
    id: 121,
    name: 'cpx42',
    cores: 8,
    memory: 16,
    disk: 320,
    arch: 'x86',
    cpu: 'shared',
    category: 'regular_purpose',
    monthly: '19.4900',
    hourly: '0.0312',
    where: ALL,
  },
  {
    id: 122,
    name: 'cpx52',
    cores: 12,
    memory: 24,
    disk: 480,
    arch: 'x86',
    cpu: 'shared',
    category: 'regular_purpose',
    monthly: '27.4900',
    hourly: '0.0440',
    where: ALL,
  },
  {
    id: 123,
    name: 'cpx62',
    cores: 16,
    memory: 32,
    disk: 640,
    arch: 'x86',
    cpu: 'shared',
    category: 'regular_purpose',
    monthly: '38.4900',
    hourly: '0.0617',
    where: ALL,
  },
  // Shared vCPU, Ampere (ARM64).
  {
    id: 45,
    name: 'cax11',
    cores: 2,
    memory: 4,
    disk: 40,
    arch: 'arm',
    cpu: 'shared',
    category: 'cost_optimized',
    monthly: '3.7900',
    hourly: '0.0061',
    where: EU,
  },
  {
    id: 93,
    name: 'cax21',
    cores: 4,
    memory: 8,
    disk: 80,
    arch: 'arm',
    cpu: 'shared',
    category: 'cost_optimized',
    monthly: '6.4900',
    hourly: '0.0104',
    where: EU,
  },
  {
    id: 94,
    name: 'cax31',
    cores: 8,
    memory: 16,
    disk: 160,
    arch: 'arm',
    cpu: 'shared',
    category: 'cost_optimized',
    monthly: '12.4900',
    hourly: '0.0200',
    where: EU,
  },
  {
    id: 95,
    name: 'cax41',
    cores: 16,
    memory: 32,
    disk: 320,
    arch: 'arm',
    cpu: 'shared',
    category: 'cost_optimized',
    monthly: '24.4900',
    hourly: '0.0392',
    where: EU,
  },
  // Dedicated vCPU, AMD.
  {
    id: 96,
    name: 'ccx13',
    cores: 2,
    memory: 8,
    disk: 80,
    arch: 'x86',
    cpu: 'dedicated',
    category: 'general_purpose',
    monthly: '12.4900',
    hourly: '0.0200',
    where: ALL,
  },
  {
    id: 97,
    name: 'ccx23',
    cores: 4,
    memory: 16,
    disk: 160,
    arch: 'x86',
    cpu: 'dedicated',
    category: 'general_purpose',
    monthly: '24.4900',
    hourly: '0.0392',
    where: ALL,
  },
  {
    id: 98,
    name: 'ccx33',
    cores: 8,
    memory: 32,
    disk: 240,
    arch: 'x86',
    cpu: 'dedicated',
    category: 'general_purpose',
    monthly: '48.4900',
    hourly: '0.0777',
    where: ALL,
  },
  {
    id: 99,
    name: 'ccx43',
    cores: 16,
    memory: 64,
    disk: 360,
    arch: 'x86',
    cpu: 'dedicated',
    category: 'general_purpose',
    monthly: '96.4900',
    hourly: '0.1546',
    where: ALL,
  },
  {
    id: 100,
    name: 'ccx53',
    cores: 32,
    memory: 128,
    disk: 600,
    arch: 'x86',
    cpu: 'dedicated',
    category: 'general_purpose',
    monthly: '192.4900',
    hourly: '0.3085',
    where: ALL,
  },
  {
    id: 101,
    name: 'ccx63',
    cores: 48,
    memory: 192,
    disk: 960,
    arch: 'x86',
    cpu: 'dedicated',
    category: 'general_purpose',
    monthly: '288.4900',
    hourly: '0.4624',
    where: ALL,
  },
  // An older line still listed, deprecated: a client must not pick it.
  {
    id: 104,
    name: 'cx22',
    cores: 2,
    memory: 4,
    disk: 40,
    arch: 'x86',
    cpu: 'shared',
    category: 'cost_optimized',
    monthly: '3.7900',
    hourly: '0.0060',
    where: EU,
    deprecation: { announced: '2025-10-16T00:00:00+00:00', unavailable_after: '2026-12-31T00:00:00+00:00' },
  },
];

/** "2.99" -> net "2.9900000000", gross "3.5581000000000000" (exact decimal arithmetic). */
export function price(net: string): { net: string; gross: string } {
  const m = /^(\d+)(?:\.(\d{1,10}))?$/.exec(net);
  if (!m) throw new Error(`bad price ${net}`);
  const scaled = BigInt(m[1] ?? '0') * 10n ** 10n + BigInt((m[2] ?? '').padEnd(10, '0'));
  const grossScaled = scaled * 119n * 10n ** 4n; // (net * 10^10) * 1.19 * 10^6: 16 decimals
  const fmt = (v: bigint, decimals: number): string => {
    const s = v.toString().padStart(decimals + 1, '0');
    return `${s.slice(0, -decimals)}.${s.slice(-decimals)}`;
  };
  return { net: fmt(scaled, 10), gross: fmt(grossScaled, 16) };
}

export const LOCATIONS: Location[] = LOCATION_ROWS.map((l) => ({
  id: l.id,
  name: l.name,
  description: l.description,
  country: l.country,
  city: l.city,
  latitude: l.latitude,
  longitude: l.longitude,
  network_zone: l.network_zone,
}));

export const SERVER_TYPES: ServerType[] = TYPE_ROWS.map((t) => {
  const rows = LOCATION_ROWS.filter((l) => t.where.includes(l.name));
  const deprecation = t.deprecation ?? null;
  return {
    id: t.id,
    name: t.name,
    description: t.name.toUpperCase(),
    category: t.category,
    cores: t.cores,
    memory: t.memory,
    disk: t.disk,
    architecture: t.arch,
    cpu_type: t.cpu,
    storage_type: 'local',
    deprecated: deprecation !== null,
    deprecation,
    locations: rows.map((l) => ({ id: l.id, name: l.name, deprecation })),
    prices: rows.map((l) => ({
      location: l.name,
      price_hourly: price(t.hourly),
      price_monthly: price(t.monthly),
      included_traffic: l.includedTraffic,
      price_per_tb_traffic: price(l.pricePerTb),
    })),
  };
});

export const DATA_CENTERS: DataCenter[] = LOCATION_ROWS.map((l) => {
  const here = SERVER_TYPES.filter((t) => t.locations.some((x) => x.name === l.name)).map((t) => t.id);
  const location = LOCATIONS.find((x) => x.id === l.id);
  if (!location) throw new Error('catalogue: location missing');
  return {
    id: l.dcId,
    name: l.dcName,
    description: l.dcDescription,
    location,
    server_types: { supported: here, available: here, available_for_migration: here },
  };
});

function systemImage(
  id: number,
  name: string,
  description: string,
  flavor: Image['os_flavor'],
  version: string,
  arch: 'x86' | 'arm',
  created: string,
): Image {
  return {
    id,
    name,
    description,
    type: 'system',
    status: 'available',
    architecture: arch,
    os_flavor: flavor,
    os_version: version,
    rapid_deploy: true,
    disk_size: 5,
    image_size: null,
    bound_to: null,
    created,
    created_from: null,
    deleted: null,
    deprecated: null,
    labels: {},
    protection: { delete: false },
  };
}

export function systemImages(): Image[] {
  return [
    systemImage(161547269, 'ubuntu-24.04', 'Ubuntu 24.04', 'ubuntu', '24.04', 'x86', '2024-04-25T12:00:00+00:00'),
    systemImage(161547270, 'ubuntu-24.04', 'Ubuntu 24.04', 'ubuntu', '24.04', 'arm', '2024-04-25T12:00:00+00:00'),
    systemImage(114690387, 'debian-12', 'Debian 12', 'debian', '12', 'x86', '2023-06-13T06:00:00+00:00'),
    systemImage(114690389, 'debian-12', 'Debian 12', 'debian', '12', 'arm', '2023-06-13T06:00:00+00:00'),
  ];
}

/** Included traffic of a server type in a location (bytes), for the server object. */
export function includedTraffic(type: ServerType, location: string): number | null {
  return type.prices.find((p) => p.location === location)?.included_traffic ?? null;
}

export type Pricing = components['schemas']['list_prices_response']['pricing'];

/** Volumes cost this much per GB and month, net (Hetzner's price since 2024). */
export const VOLUME_PRICE_PER_GB_MONTH = '0.0440';

/**
 * `GET /pricing`: the catalogue's server type prices, and the other resources at Hetzner's list
 * prices (EUR, 19 % VAT) as of 2025.
 */
export function pricing(): Pricing {
  const perLocation = (hourly: string, monthly: string) =>
    LOCATION_ROWS.map((l) => ({ location: l.name, price_hourly: price(hourly), price_monthly: price(monthly) }));
  return {
    currency: 'EUR',
    vat_rate: '19.00',
    image: { price_per_gb_month: price('0.0110') },
    volume: { price_per_gb_month: price(VOLUME_PRICE_PER_GB_MONTH) },
    server_backup: { percentage: '20.00' },
    // eslint-disable-next-line @typescript-eslint/no-deprecated -- the API still sends it (its deprecation names no date)
    floating_ip: { price_monthly: price('3.0000') },
    floating_ips: (['ipv4', 'ipv6'] as const).map((type) => ({
      type,
      prices: LOCATION_ROWS.map((l) => ({ location: l.name, price_monthly: price(type === 'ipv4' ? '3.0000' : '2.5000') })),
    })),
    primary_ips: [
      { type: 'ipv4', prices: perLocation('0.0008', '0.5000') },
      { type: 'ipv6', prices: perLocation('0.0000', '0.0000') },
    ],
    load_balancer_types: [],
    server_types: SERVER_TYPES.map((t) => ({ id: t.id, name: t.name, prices: t.prices })),
  };
}
