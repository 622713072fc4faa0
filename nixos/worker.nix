# NixOS configuration of a worker image for nix-hcloud-builder ("fast mode": Nix is already
# there, so a worker is ready about as soon as sshd is).
#
#   - root on ZFS with zstd compression, on a small raw disk image (system.build.rawImage) that
#     grows to the server's disk on first boot: the pool has autoexpand, and zpool-expand (before
#     sshd) grows the partition, puts swap at the end of the disk and waits for the pool;
#   - sshd for root only, with MaxSessions/MaxStartups raised for many parallel Nix sessions;
#   - the sshd host key and root's authorized key come from the Hetzner metadata service's user
#     data (nix-hcloud-builder-keys, before sshd): no key is baked into the image;
#   - Nix with trusted-users = root and max-jobs = the number of cores;
#   - the warm store (a pool's `store`): nix-hcloud-builder-store (after the keys, before the
#     ready marker) mounts the store volume named in the user data as the upper layer of an
#     overlay over /nix (see scripts/store-volume.sh);
#   - the zstd relay for pools with compression "zstd" (Python and libzstd);
#   - the ready marker that the daemon's default readyCommand waits for, written last.
#
# The scripts are in ./scripts so that the tests run them outside NixOS.
{ config, lib, pkgs, modulesPath, ... }:
let
  script = name: runtimeInputs: pkgs.writeShellApplication {
    name = "nix-hcloud-builder-${name}";
    inherit runtimeInputs;
    text = builtins.readFile ./scripts/${name}.sh;
  };
  fetchKeys = script "fetch-keys" [ pkgs.curl pkgs.jq pkgs.coreutils pkgs.gnused ];
  zpoolExpand = script "zpool-expand" [ config.boot.zfs.package pkgs.gptfdisk pkgs.util-linux pkgs.coreutils pkgs.gawk pkgs.gnused pkgs.systemd ];
  readyMarker = script "ready-marker" [ config.nix.package pkgs.coreutils ];
  storeVolume = script "store-volume" [ config.nix.package pkgs.jq pkgs.coreutils pkgs.util-linux pkgs.e2fsprogs pkgs.findutils pkgs.gawk pkgs.systemd ];
  # The worker's end of compression "zstd" (worker/zstd-relay.py, the file the stock images' cloud-config
  # writes), on every session's PATH. It finds libzstd by this variable: NixOS has no ldconfig cache.
  # Python's options are those of the relay's own #! line (-I -S: no site, no PYTHON* variables),
  # which keep its start, paid by every session, short.
  zstdRelay = pkgs.writeShellApplication {
    name = "nix-hcloud-builder-zstd-relay";
    runtimeInputs = [ config.nix.package ];
    text = ''
      export NIX_HCLOUD_BUILDER_LIBZSTD=${lib.getLib pkgs.zstd}/lib/libzstd.so.1
      exec ${pkgs.python3}/bin/python3 -I -S ${pkgs.writeText "zstd-relay.py" (builtins.readFile ../worker/zstd-relay.py)} "$@"
    '';
  };
  oneshot = {
    Type = "oneshot";
    RemainAfterExit = true;
  };
in
{
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

  system.stateVersion = "24.11";
  networking.hostName = "nix-hcloud-worker";
  # ZFS wants a host id; the image is the same on every worker.
  networking.hostId = "6e686277";
  networking.useNetworkd = true;
  networking.useDHCP = true;
  documentation.enable = false;

  # Disk: partition 1 BIOS boot, 2 ESP (label ESP), 3 the pool; swap is added at the end on boot.
  boot.supportedFilesystems = [ "zfs" ];
  boot.zfs.devNodes = "/dev/disk/by-partuuid";
  boot.zfs.forceImportRoot = true;
  fileSystems."/" = { device = "rpool/root"; fsType = "zfs"; };
  fileSystems."/nix" = { device = "rpool/nix"; fsType = "zfs"; };
  fileSystems."/boot" = { device = "/dev/disk/by-label/ESP"; fsType = "vfat"; options = [ "umask=0077" ]; };

  # x86 servers boot with BIOS, Arm servers with UEFI: GRUB for both.
  boot.loader.timeout = 1;
  boot.loader.grub = {
    enable = true;
    efiSupport = true;
    efiInstallAsRemovable = true;
    device = if pkgs.stdenv.hostPlatform.isx86 then "/dev/sda" else "nodev";
  };

  systemd.services.zpool-expand = {
    description = "Grow the root pool to the server's disk, with swap at its end";
    wantedBy = [ "multi-user.target" ];
    before = [ "sshd.service" "nix-hcloud-builder-ready.service" ];
    after = [ "local-fs.target" ];
    serviceConfig = oneshot // { ExecStart = lib.getExe zpoolExpand; };
  };

  systemd.services.nix-hcloud-builder-keys = {
    description = "Take the sshd host key and root's authorized key from the server's user data";
    wantedBy = [ "multi-user.target" ];
    requiredBy = [ "sshd.service" ];
    before = [ "sshd.service" ];
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ];
    serviceConfig = oneshot // { ExecStart = lib.getExe fetchKeys; };
  };

  # After the keys: fetch-keys.sh leaves the store volume's settings from the user data. It stops
  # nix-daemon (socket and service) while it mounts the overlay over /nix, and starts the socket
  # again: a unit after the network cannot be ordered before nix-daemon.socket (sockets.target
  # comes before basic.target, which ordinary services come after) without a cycle. Its failure
  # leaves the image's own store: the ready unit only wants it.
  # The overlay's module, loaded at boot rather than on the first mount.
  boot.kernelModules = [ "overlay" ];
  systemd.services.nix-hcloud-builder-store = {
    description = "Put the Nix store on the pool's store volume (an overlay over /nix)";
    wantedBy = [ "multi-user.target" ];
    after = [ "local-fs.target" "nix-hcloud-builder-keys.service" ];
    before = [ "nix-hcloud-builder-ready.service" ];
    serviceConfig = oneshot // { ExecStart = lib.getExe storeVolume; };
  };

  systemd.services.nix-hcloud-builder-ready = {
    description = "Tell nix-hcloud-builder that this worker is ready";
    wantedBy = [ "multi-user.target" ];
    requires = [ "zpool-expand.service" "nix-hcloud-builder-keys.service" ];
    wants = [ "nix-hcloud-builder-store.service" ];
    after = [ "zpool-expand.service" "nix-hcloud-builder-keys.service" "nix-hcloud-builder-store.service" "sshd.service" "nix-daemon.socket" ];
    serviceConfig = oneshot // { ExecStart = lib.getExe readyMarker; };
  };

  services.openssh = {
    enable = true;
    openFirewall = true;
    # The key is written by nix-hcloud-builder-keys; this only tells sshd where it is.
    hostKeys = [ { type = "ed25519"; path = "/etc/ssh/ssh_host_ed25519_key"; } ];
    settings = {
      PermitRootLogin = "prohibit-password";
      PasswordAuthentication = false;
      KbdInteractiveAuthentication = false;
      # One Nix build is one ssh connection; many run at once.
      MaxSessions = 256;
      MaxStartups = "256:30:1024";
    };
  };
  users.users.root.hashedPassword = "!";
  environment.systemPackages = [ zstdRelay ];

  nix.settings = {
    trusted-users = [ "root" ];
    max-jobs = "auto";
    cores = 0;
    experimental-features = [ "nix-command" ];
  };

  # The raw image for `nix-hcloud-builder image upload` (about 6 GiB before it grows).
  system.build.rawImage = import (modulesPath + "/../lib/make-single-disk-zfs-image.nix") {
    inherit config lib pkgs;
    name = "nix-hcloud-builder-worker";
    format = "raw";
    bootSize = 512;
    rootSize = 6144;
    rootPoolName = "rpool";
    includeChannel = false;
    rootPoolProperties = { autoexpand = "on"; ashift = "12"; };
    rootPoolFilesystemProperties = {
      acltype = "posixacl";
      atime = "off";
      compression = "zstd";
      mountpoint = "legacy";
      xattr = "sa";
    };
    datasets = {
      "rpool/root".mount = "/";
      "rpool/nix".mount = "/nix";
    };
  };
}
