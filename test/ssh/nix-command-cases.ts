/**
 * Program paths the allow-list refuses: only nix-daemon and nix-store of a store path pass. The
 * endpoint's tests and the relay's (worker/zstd-relay.py, the same allow-list) use this one list.
 */
export const PROGRAM_PATHS_REFUSED = [
  '/run/current-system/sw/bin/nix-daemon',
  '/usr/bin/nix-daemon',
  '/nix/var/nix/profiles/default/bin/nix-daemon',
  '/mnt/nix-store/nix-daemon',
  '/nix/store/../../tmp/nix-daemon',
  '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix/../../../tmp/nix-daemon',
  '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix/bin/../../x/nix-daemon',
  '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix/./bin/nix-daemon',
  '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-.hidden/bin/nix-daemon',
  '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix//bin/nix-daemon',
  '/nix/store/short-nix/bin/nix-daemon',
  '/nix/store/0123456789abcdefghijklmnopqrstuv-nix/bin/nix-daemon',
  '/nix/store/nix-daemon',
  '/nix/storex/0123456789abcdfghijklmnpqrsvwxyz-nix/bin/nix-daemon',
  '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix-2.24.10/bin/nix-daemonx',
  '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nix-2.24.10/bin/nix-build',
];
