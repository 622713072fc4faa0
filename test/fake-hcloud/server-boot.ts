// Booting a fake server's real machine (`FakeServer`): by cloud-init from its user data, by the
// units of the NixOS worker image, or into the rescue system; and the emulated link in front of
// its sshd (the `link` option).

import { join } from 'node:path';
import { generateKeyPair } from '../../src/ssh/keys.js';
import { LinkRelay } from '../rig/link.js';
import { parseUserData } from './cloud-config.js';
import { FakeServer } from './fake-server.js';
import type { Images } from './images.js';
import type { NixosBoot } from './nixos-image.js';
import { LINK_INNER_PORT_OFFSET } from './options.js';
import type { Room } from './room.js';
import type { ServerRecord } from './server-record.js';
import type { Volumes } from './volumes.js';

export class ServerBoot {
  constructor(
    private readonly room: Room,
    private readonly images: Images,
    private readonly volumes: Volumes,
    /** The user data of a server on the fake metadata service. */
    private readonly userDataUrl: (serverId: number) => string,
  ) {}

  /** Boots the server's machine (real servers only), as its image and rescue mode say. */
  async boot(s: ServerRecord): Promise<void> {
    if (s.rescueKeys !== null) return this.bootRescue(s);
    if (s.bootMode === 'nixos') return this.bootNixos(s);
    const config = parseUserData(s.userData);
    for (const p of config.problems) this.room.opts.log(`server ${s.id}: ${p}`);
    if (s.behaviour === 'no-sshd') return;
    if (config.hostKey === null && s.behaviour !== 'wrong-host-key') {
      this.room.opts.log(`server ${s.id}: no ssh_keys.ed25519_private in the user data: no sshd (host key unknowable)`);
      return;
    }
    const machine = new FakeServer({
      ...this.machineOptions(s),
      ...this.nixRootOption(),
      sshPort: this.room.opts.link ? this.room.opts.sshPort + LINK_INNER_PORT_OFFSET : this.room.opts.sshPort,
      config,
      stock: s.bootMode === 'stock',
    });
    await this.start(s, machine, `server ${s.id}`, () => this.startLink(s));
  }

  /** What every machine of the server gets, whatever it boots. */
  private machineOptions(s: ServerRecord) {
    return {
      id: s.id,
      dir: s.dir,
      address: s.address,
      sshPort: this.room.opts.sshPort,
      wrongHostKey: s.behaviour === 'wrong-host-key',
      neverReady: s.behaviour === 'never-ready',
      readyDelayMs: this.room.opts.readyDelayMs,
      maxSessions: this.room.opts.maxSessions,
      log: this.room.opts.log,
      volumes: this.volumes.mounts(s),
    };
  }

  /** The servers run Nix from this root, when one is given (not in the rescue system). */
  private nixRootOption(): { nixRoot?: string } {
    return this.room.opts.nixRoot === undefined ? {} : { nixRoot: this.room.opts.nixRoot };
  }

  /** Starts the server's machine; a failure is logged unless the server or the cloud is going away. */
  private async start(s: ServerRecord, machine: FakeServer, what: string, then?: () => Promise<void>): Promise<void> {
    s.machine = machine;
    try {
      await machine.start();
      await then?.();
    } catch (e) {
      if (!s.deleted && s.status !== 'deleting' && !this.room.timers.stopping) this.room.opts.log(`${what}: ${(e as Error).message}`);
    }
  }

  /**
   * With the `link` option: the relay on the server's ssh port, towards its sshd, once sshd
   * listens (before that, connections are refused as by a booting server).
   */
  private async startLink(s: ServerRecord): Promise<void> {
    const profile = this.room.opts.link;
    if (!profile || !s.machine?.listening || s.deleted || s.status === 'deleting' || this.room.timers.stopping) return;
    s.link = await LinkRelay.start({
      listenHost: s.address,
      listenPort: this.room.opts.sshPort,
      targetHost: s.address,
      targetPort: this.room.opts.sshPort + LINK_INNER_PORT_OFFSET,
      profile,
    });
  }

  stopLink(s: ServerRecord): Promise<void> {
    const link = s.link;
    s.link = null;
    return link ? link.stop() : Promise.resolve();
  }

  /**
   * Boots a server of the NixOS worker image: no cloud-init; the image's units run inside the
   * server's namespace (see NixosBoot in nixos-image.ts) and fetch-keys.sh reads the user data from
   * the fake metadata service.
   */
  private async bootNixos(s: ServerRecord): Promise<void> {
    if (s.behaviour === 'no-sshd') return;
    const n = this.room.opts.nixosWorker;
    const nixos: NixosBoot = {
      metadataUrl: this.userDataUrl(s.id),
      fetchAttempts: n.fetchAttempts,
      swapMib: n.swapMib,
      imageMib: n.imageMib,
      diskMib: n.diskMib,
      storeUnit: this.images.hasStoreUnit(s.image.id),
    };
    const machine = new FakeServer({ ...this.machineOptions(s), ...this.nixRootOption(), config: parseUserData(null), nixos });
    s.lastUnits = machine.units;
    await this.start(s, machine, `server ${s.id}`);
  }

  /**
   * Boots the rescue system: an sshd as for a normal server (same namespace mechanism), with a
   * fresh host key, root's authorized keys = the project keys given to `enable_rescue`, no
   * cloud-config, and `/dev/sda` = the regular file `DIR/disk` (see FakeServer). As on Hetzner,
   * rescue mode lasts one boot.
   */
  private async bootRescue(s: ServerRecord): Promise<void> {
    const keys = s.rescueKeys ?? [];
    s.rescueKeys = null;
    s.inRescue = true;
    if (s.behaviour === 'no-sshd') return;
    const host = generateKeyPair(`rescue-${s.id}`);
    const machine = new FakeServer({
      ...this.machineOptions(s),
      config: {
        isCloudConfig: false,
        hostKey: { private: host.privateKey, public: host.publicKey },
        genKeyTypes: null,
        authorizedKeys: keys,
        writeFiles: [],
        runcmd: [],
        problems: [],
      },
      wrongHostKey: false,
      neverReady: true,
      readyDelayMs: 0,
      rescueDisk: join(s.dir, 'disk'),
    });
    await this.start(s, machine, `server ${s.id} (rescue)`);
  }
}
