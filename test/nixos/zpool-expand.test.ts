/**
 * nixos/scripts/zpool-expand.sh on a real GPT disk: a loop device over a file laid out like the
 * worker image (BIOS boot, ESP, pool partition ending 1 MiB before the end), then made larger, as
 * when the image is written to a server's bigger disk. sgdisk, partx, blkid and mkswap run for
 * real; `zpool` and `swapon` are stand-ins on PATH (there is no ZFS here, and the machine's swap
 * must not change): they record their calls.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../rig/rig.js';

const SCRIPT = join(ROOT, 'nixos', 'scripts', 'zpool-expand.sh');
const MIB = 2048; // sectors of 512 bytes

function sh(cmd: string, args: string[], env?: NodeJS.ProcessEnv): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: env ?? process.env });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

function partInfo(disk: string, n: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of sh('sgdisk', [`--info=${n}`, disk]).split('\n')) {
    const m = /^([^:]+): (.*)$/.exec(line);
    if (m) out[m[1] as string] = m[2] as string;
  }
  return out;
}

const first = (s: string | undefined): number => Number((s ?? '').split(' ')[0]);

t.test('zpool-expand.sh grows the pool partition, puts swap at the end, and is idempotent', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nhb-disk-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'disk.img');

  // The image: 64 MiB, partitions as make-single-disk-zfs-image lays them out.
  sh('truncate', ['-s', '64M', image]);
  sh('sgdisk', [
    '--clear',
    '--new=1:1M:+1M',
    '--typecode=1:EF02',
    '--new=2:2M:+14M',
    '--typecode=2:EF00',
    `--new=3:16M:${64 * MIB - MIB - 1}`,
    '--typecode=3:BF00',
    '--change-name=3:primary',
    image,
  ]);
  const before = partInfo(image, 3);
  // The server's disk is bigger: 256 MiB.
  sh('truncate', ['-s', '256M', image]);

  const loop = sh('losetup', ['--find', '--show', '--partscan', image]).trim();
  t.teardown(() => {
    spawnSync('losetup', ['--detach', loop]);
  });
  // Partition nodes, as the kernel makes them when a disk appears (--partscan may not here).
  spawnSync('partx', ['--add', loop]);
  const part3 = `${loop}p3`;

  const bin = join(dir, 'bin');
  const log = join(dir, 'calls.log');
  sh('mkdir', [bin]);
  writeFileSync(
    join(bin, 'zpool'),
    [
      '#!/bin/sh',
      `echo "zpool $*" >> ${log}`,
      'case "$*" in',
      `  "list -vHP rpool") printf 'rpool\\t100\\t0\\t100\\t-\\t-\\t0%%\\t0%%\\t1.00x\\tONLINE\\t-\\n\\t${part3}\\t100\\t0\\t100\\t-\\t-\\t0%%\\t0%%\\t-\\tONLINE\\n' ;;`,
      '  "list -Hp -o size rpool") echo 46137344 ;;',
      '  "list -Hp -o expandsize rpool") echo - ;;',
      'esac',
      '',
    ].join('\n'),
  );
  writeFileSync(join(bin, 'swapon'), `#!/bin/sh\necho "swapon $*" >> ${log}\n`);
  chmodSync(join(bin, 'zpool'), 0o755);
  chmodSync(join(bin, 'swapon'), 0o755);
  const env = { ...process.env, PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}`, NHB_SWAP_MIB: '32' };

  const run1 = spawnSync('bash', [SCRIPT], { encoding: 'utf8', env });
  t.equal(run1.status, 0, run1.stderr);
  t.match(run1.stdout, `zpool-expand: pool rpool on ${part3} (partition 3 of ${loop})`);

  const after = partInfo(loop, 3);
  const swap = partInfo(loop, 4);
  const lastUsable = 256 * MIB - 34;
  t.equal(first(after['First sector']), first(before['First sector']), 'the pool partition keeps its start');
  t.equal(after['Partition unique GUID'], before['Partition unique GUID'], '...its GUID (by-partuuid stays valid)');
  t.equal(after['Partition GUID code'], before['Partition GUID code'], '...its type');
  t.equal(after['Partition name'], "'primary'", '...and its name');
  t.equal(first(after['Last sector']), first(swap['First sector']) - 1, 'and now ends where swap starts');
  t.equal(first(swap['Last sector']), lastUsable, 'swap ends at the end of the bigger disk');
  t.ok(first(swap['First sector']) % MIB === 0, 'swap starts on a MiB boundary');
  t.ok(first(swap['Last sector']) - first(swap['First sector']) + 1 >= 32 * MIB, 'swap has at least the size asked for');
  t.match(swap['Partition GUID code'] ?? '', /^0657FD6D-A4AB-43C4-84E5-0933C84B4F4F/i, 'swap has the Linux swap type');
  t.equal(swap['Partition name'], "'swap'");
  t.equal(
    Number(readFileSync(`/sys/class/block/${loop.slice(5)}p3/size`, 'utf8')),
    first(after['Last sector']) - first(after['First sector']) + 1,
    'the kernel knows the new size',
  );
  t.equal(sh('blkid', ['-o', 'value', '-s', 'TYPE', `${loop}p4`]).trim(), 'swap', 'swap is formatted');
  t.equal(sh('blkid', ['-o', 'value', '-s', 'LABEL', `${loop}p4`]).trim(), 'swap');
  const calls1 = readFileSync(log, 'utf8');
  t.match(calls1, `zpool online -e rpool ${part3}\n`, 'the pool was told to take the space');
  t.match(calls1, 'zpool set autoexpand=on rpool\n');
  t.match(calls1, `swapon --discard ${loop}p4\n`, 'swap turned on');

  // A second boot: nothing to repartition, swap on again.
  const table = sh('sgdisk', ['--print', loop]);
  writeFileSync(log, '');
  const run2 = spawnSync('bash', [SCRIPT], { encoding: 'utf8', env });
  t.equal(run2.status, 0, run2.stderr);
  t.equal(sh('sgdisk', ['--print', loop]), table, 'the partition table is unchanged');
  t.match(readFileSync(log, 'utf8'), `swapon --discard ${loop}p4\n`);
});
