/** A loop device over a new sparse file, for the tests that run the worker's disk scripts on a real block device. */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface LoopDevice {
  /** The test's scratch folder (holds the image file); removed with the device. */
  dir: string;
  /** /dev/loopN. */
  device: string;
  /** The file behind it. */
  image: string;
  /** Detaches the device and removes `dir` (a plain function: tests hand it to `t.teardown`). */
  release: () => void;
}

/**
 * Attaches a `mib`-MiB sparse file. Throws when it cannot: these tests need root and a loop
 * device, which CI has, so a missing one is a failure to see, never a skip.
 */
export function attachLoopDevice(prefix: string, mib: number): LoopDevice {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const image = join(dir, 'volume.img');
  spawnSync('truncate', ['-s', `${mib}M`, image]);
  const attach = spawnSync('losetup', ['-f', '--show', image], { encoding: 'utf8' });
  if (attach.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`cannot attach a loop device (these tests need root and /dev/loop*): ${attach.stderr.trim()}`);
  }
  const device = attach.stdout.trim();
  return {
    dir,
    device,
    image,
    release: () => {
      spawnSync('losetup', ['-d', device]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
