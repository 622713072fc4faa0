// The sshd_config of a fake server: as cloud-init would leave it (keys in the server folder), or
// as services.openssh in nixos/worker.nix writes it (paths as seen inside the namespace).

import { join } from 'node:path';

/** Where and how much a server's sshd listens. */
export interface SshdListen {
  address: string;
  sshPort: number;
  /** MaxSessions: channels per connection (OpenSSH's default is 10). */
  maxSessions: number;
}

/** sshd as cloud-init would leave it, with the keys in the server folder `dir`. */
export function cloudInitSshdConfig(listen: SshdListen, dir: string): string {
  return sshdConfig(listen, {
    hostKey: join(dir, 'ssh_host_ed25519_key'),
    authorizedKeys: join(dir, 'authorized_keys'),
    strictModes: false,
    pidFile: join(dir, 'sshd.pid'),
    maxStartups: '100:30:200',
  });
}

/** sshd as services.openssh in nixos/worker.nix configures it (paths as seen inside the namespace). */
export function nixosSshdConfig(listen: SshdListen): string {
  return sshdConfig(listen, {
    hostKey: '/etc/ssh/ssh_host_ed25519_key',
    authorizedKeys: '/root/.ssh/authorized_keys',
    strictModes: true,
    pidFile: '/run/sshd.pid',
    // worker.nix has MaxSessions 256; the fake's maxSessions option wins, so tests can lower it.
    maxStartups: '256:30:1024',
  });
}

function sshdConfig(
  listen: SshdListen,
  o: { hostKey: string; authorizedKeys: string; strictModes: boolean; pidFile: string; maxStartups: string },
): string {
  return [
    `ListenAddress ${listen.address}:${listen.sshPort}`,
    `HostKey ${o.hostKey}`,
    `AuthorizedKeysFile ${o.authorizedKeys}`,
    'PermitRootLogin prohibit-password',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'UsePAM no',
    `StrictModes ${o.strictModes ? 'yes' : 'no'}`,
    `PidFile ${o.pidFile}`,
    `MaxSessions ${listen.maxSessions}`,
    `MaxStartups ${o.maxStartups}`,
    // bash reads root's .bashrc for ssh commands unless SHLVL is already set.
    'SetEnv SHLVL=1',
    'AcceptEnv LANG LC_*',
    'PrintMotd no',
    'PrintLastLog no',
    'LogLevel ERROR',
    // No Subsystem line: none is configured (sshd rejects "Subsystem none").
    '',
  ].join('\n');
}
