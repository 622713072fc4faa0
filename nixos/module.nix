# NixOS module: runs nix-hcloud-builder as a system service and makes this machine's Nix build
# through it (nix.buildMachines, nix.distributedBuilds, and the ssh alias for nix-daemon).
#
#   services.nix-hcloud-builder = {
#     enable = true;
#     tokenFile = "/run/secrets/hcloud-token";
#     pools.x86_64 = { serverTypes = [ "ccx33" ]; maxWorkers = 2; };
#     # After the first start: cat /var/lib/nix-hcloud-builder/ssh_host_ed25519_key.pub
#     hostPublicKey = "ssh-ed25519 AAAA… nix-hcloud-builder";
#   };
{ config, lib, pkgs, ... }:
let
  cfg = config.services.nix-hcloud-builder;
  nhb = import ./lib.nix;
  settingsFormat = pkgs.formats.json { };

  stateDir = "/var/lib/nix-hcloud-builder";
  # The token reaches the service as a systemd credential, so the token file may stay root-only.
  tokenCredential = "/run/credentials/nix-hcloud-builder.service/hcloud-token";
  authorizedKeysFile = "${stateDir}/authorized_keys";
  knownHostsFile = "${stateDir}/known_hosts";

  daemonConfig = nhb.mkConfig {
    settings = { inherit stateDir authorizedKeysFile; } // cfg.settings;
    inherit (cfg) pools;
    tokenFile = if cfg.tokenFile == null then null else tokenCredential;
  };
  configFile = settingsFormat.generate "nix-hcloud-builder.json" daemonConfig;
  client = { alias = cfg.sshAlias; clientKey = cfg.clientKeyFile; };

  # Runs as root before the daemon: nix-daemon's client key, our authorized keys, and (when no
  # hostPublicKey is given) the host key and a known_hosts entry for the alias.
  prepare = pkgs.writeShellScript "nix-hcloud-builder-prepare" ''
    set -eu
    PATH=${lib.makeBinPath [ pkgs.openssh pkgs.coreutils ]}
    install -d -m 0700 "$(dirname ${cfg.clientKeyFile})"
    [ -e ${cfg.clientKeyFile} ] || ssh-keygen -q -t ed25519 -N "" -C nix-daemon@${config.networking.hostName} -f ${cfg.clientKeyFile}
    install -d -m 0700 -o nix-hcloud-builder -g nix-hcloud-builder ${stateDir}
    ssh-keygen -y -f ${cfg.clientKeyFile} > ${authorizedKeysFile}.tmp
    chown nix-hcloud-builder:nix-hcloud-builder ${authorizedKeysFile}.tmp
    mv ${authorizedKeysFile}.tmp ${authorizedKeysFile}
    ${lib.optionalString (cfg.hostPublicKey == null) ''
      key=${stateDir}/ssh_host_ed25519_key
      if [ ! -e "$key" ]; then
        ssh-keygen -q -t ed25519 -N "" -C nix-hcloud-builder -f "$key"
        chown nix-hcloud-builder:nix-hcloud-builder "$key" "$key.pub"
      fi
      echo "${cfg.sshAlias} $(cut -d' ' -f1,2 "$key.pub")" > ${knownHostsFile}
    ''}
  '';
in
{
  options.services.nix-hcloud-builder = {
    enable = lib.mkEnableOption "nix-hcloud-builder, a Nix remote builder on Hetzner Cloud servers booted on demand";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ../package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The nix-hcloud-builder package.";
    };

    settings = lib.mkOption {
      type = settingsFormat.type;
      default = { };
      example = { listen.port = 2222; log.level = "debug"; };
      description = ''
        The daemon's JSON config (every key is described in the README). `stateDir`,
        `authorizedKeysFile`, `pools` and `hcloud.tokenFile` are set by this module.
      '';
    };

    pools = lib.mkOption {
      type = lib.types.attrsOf settingsFormat.type;
      default = { };
      example = { x86_64 = { serverTypes = [ "ccx33" ]; maxWorkers = 2; idleTimeout = "15m"; }; };
      description = "The pools (config key `pools`): each is the ssh user of one machines line.";
    };

    tokenFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/run/secrets/hcloud-token";
      description = "File with the Hetzner Cloud API token; read by systemd, so it may be root-only. Not copied to the Nix store.";
    };

    hostPublicKey = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = ''
        The endpoint's host public key line (${stateDir}/ssh_host_ed25519_key.pub after the
        first start), for field 8 of the machines lines. When null, the service makes the key
        before its first start and nix-daemon's ssh finds it in ${knownHostsFile}.
      '';
    };

    sshAlias = lib.mkOption {
      type = lib.types.str;
      default = nhb.defaultAlias;
      description = "ssh_config Host alias of the endpoint in the machines lines.";
    };

    clientKeyFile = lib.mkOption {
      type = lib.types.str;
      default = nhb.defaultClientKey;
      description = "Private key nix-daemon (root) logs in with; made before the first start if missing.";
    };
  };

  config = lib.mkIf cfg.enable {
    users.users.nix-hcloud-builder = { isSystemUser = true; group = "nix-hcloud-builder"; home = stateDir; };
    users.groups.nix-hcloud-builder = { };

    systemd.services.nix-hcloud-builder = {
      description = "nix-hcloud-builder: Nix remote builder endpoint on Hetzner Cloud servers booted on demand";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      serviceConfig = {
        Type = "simple";
        User = "nix-hcloud-builder";
        Group = "nix-hcloud-builder";
        ExecStartPre = "+${prepare}";
        ExecStart = "${cfg.package}/bin/nix-hcloud-builder serve --config ${configFile}";
        LoadCredential = lib.mkIf (cfg.tokenFile != null) [ "hcloud-token:${cfg.tokenFile}" ];
        Restart = "on-failure";
        RestartSec = "5s";
        # On stop the daemon deletes its workers: give the API calls time.
        TimeoutStopSec = "3min";
        KillMode = "mixed";
        StateDirectory = "nix-hcloud-builder";
        StateDirectoryMode = "0700";
        UMask = "0077";
        NoNewPrivileges = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        LockPersonality = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        SystemCallArchitectures = "native";
      };
    };

    nix.distributedBuilds = true;
    nix.buildMachines = map
      (m: if cfg.hostPublicKey == null then removeAttrs m [ "publicHostKey" ] else m)
      (nhb.buildMachines (client // { config = daemonConfig; hostPublicKey = if cfg.hostPublicKey == null then "-" else cfg.hostPublicKey; }));

    programs.ssh.extraConfig = nhb.sshHostConfig (client // { config = daemonConfig; })
      + lib.optionalString (cfg.hostPublicKey == null) "  GlobalKnownHostsFile ${knownHostsFile}\n";
  };
}
