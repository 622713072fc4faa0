# NixOS module: runs nix-hcloud-builder as a system service and makes this machine's Nix build
# through it (nix.buildMachines, nix.distributedBuilds, and for a Nix that needs it the ssh alias).
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

  types = lib.types;

  # Keys of the pools' typed options left at null are left out: the daemon fills in its defaults.
  poolSettings = lib.mapAttrs (_: p: lib.filterAttrs (k: v: v != null && k != "_module") p) cfg.pools;

  # Settings only this module sets: the service's sandbox and StateDirectory are made for these
  # values, so a different one in `settings` is refused (assertions below) rather than merged.
  moduleKeys = [ [ "stateDir" ] [ "authorizedKeysFile" ] [ "pools" ] [ "hcloud" "tokenFile" ] ];

  daemonConfig = nhb.mkConfig {
    settings = cfg.settings // { inherit stateDir authorizedKeysFile; };
    pools = poolSettings;
    tokenFile = if cfg.tokenFile == null then null else tokenCredential;
  };
  configFile = settingsFormat.generate "nix-hcloud-builder.json" daemonConfig;
  client = { alias = cfg.sshAlias; clientKey = cfg.clientKeyFile; };

  # The Nix that runs the builds picks the machines lines' form (nixos/lib.nix, portStyle). A
  # package named neither "nix" nor "lix" is judged by no version: the alias. Without
  # hostPublicKey, "auto" keeps the alias too: its Host block points ssh to the key the service makes.
  nixName = lib.getName config.nix.package;
  nixTarget = {
    nixFlavour = if nixName == "lix" then "lix" else "nix";
    nixVersion = if builtins.elem nixName [ "nix" "lix" ] then config.nix.package.version or null else null;
    machinesStyle = if cfg.hostPublicKey == null && cfg.machinesStyle == "auto" then "alias" else cfg.machinesStyle;
  };
  usesAlias = nhb.portStyle (nixTarget // { config = daemonConfig; }) == "alias";

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

  # "90s", "10m", "1h30m" or a number of seconds (src/duration.ts).
  duration = types.either (types.strMatching "([0-9]+([.][0-9]+)?(ms|s|m|h|d)?)+") types.ints.unsigned // {
    description = "duration (\"90s\", \"10m\", \"1h30m\") or a number of seconds";
  };
  optionalPoolKey = type: description: lib.mkOption {
    type = types.nullOr type;
    default = null;
    description = "${description} Null: the daemon's default (docs/configuration.md).";
  };

  # One pool (src/config.ts, parsePool): the keys the daemon knows, typed, so that a wrong type
  # fails when the system is evaluated and not when the daemon starts. Other keys pass through as
  # JSON (and the daemon refuses the ones it does not know).
  poolModule = {
    freeformType = settingsFormat.type;
    options = {
      serverTypes = lib.mkOption {
        type = types.nonEmptyListOf types.nonEmptyStr;
        example = [ "ccx33" "cpx42" ];
        description = "Server types in order of preference.";
      };
      systems = optionalPoolKey (types.nonEmptyListOf types.nonEmptyStr) "Systems the pool builds, e.g. [ \"aarch64-linux\" ] (with `cax…` server types).";
      locations = optionalPoolKey (types.nonEmptyListOf types.nonEmptyStr) "Locations in order of preference.";
      image = optionalPoolKey
        (types.oneOf [
          types.nonEmptyStr
          types.ints.positive
          (types.addCheck (types.attrsOf types.nonEmptyStr) (a: builtins.attrNames a == [ "labelSelector" ]) // {
            description = "{ labelSelector = \"k=v\"; }";
          })
        ])
        "An image name, an image id, or { labelSelector = \"k=v\"; } for the newest matching snapshot.";
      maxWorkers = optionalPoolKey (types.ints.between 1 100) "Servers the pool may run at once.";
      jobsPerWorker = optionalPoolKey (types.ints.between 1 1024) "Sessions per server.";
      idleTimeout = optionalPoolKey duration "Delete a server this long after its last session ended.";
      bootTimeout = optionalPoolKey duration "Give up on a boot after this long.";
      maxLifetime = optionalPoolKey duration "Past this a worker takes no new sessions.";
      idlePolicy = optionalPoolKey (types.enum [ "timeout" "billing-hour" ]) "When an idle worker is deleted.";
      billingMargin = optionalPoolKey duration "With idlePolicy \"billing-hour\": how long before the next hour.";
      keepaliveInterval = optionalPoolKey duration "ssh keepalive towards the worker.";
      readyCommand = optionalPoolKey types.nonEmptyStr "Run on the worker until it exits 0.";
      sshPort = optionalPoolKey (types.ints.between 1 65535) "The worker's sshd port.";
      ipv4 = optionalPoolKey types.bool "Give servers a public IPv4.";
      earlyHandshake = optionalPoolKey types.bool
        "Answer Nix's handshake at once while a worker boots (default true); false keeps Nix waiting, so it can fall back to another machine when the boot fails.";
      speedFactor = optionalPoolKey types.numbers.positive "For the machines line.";
      supportedFeatures = optionalPoolKey (types.listOf types.nonEmptyStr)
        "For the machines line. Add \"kvm\" only for servers that really have /dev/kvm (Hetzner Cloud servers do not).";
      mandatoryFeatures = optionalPoolKey (types.listOf types.nonEmptyStr) "For the machines line.";
    };
  };

  # The service's sandbox, each a default a host may override. The daemon needs the network (an
  # SSH server, and the Hetzner API) and writes only its state directory. No
  # MemoryDenyWriteExecute: V8's JIT needs writable and executable memory.
  hardening = {
    UMask = "0077";
    NoNewPrivileges = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    PrivateUsers = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateMounts = true;
    KeyringMode = "private";
    DevicePolicy = "closed";
    ProtectSystem = "strict";
    ProtectHome = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    ProtectClock = true;
    ProtectHostname = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    RemoveIPC = true;
    LockPersonality = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" ];
    SystemCallErrorNumber = "EPERM";
  };

  hcloudSettings = cfg.settings.hcloud or { };
  # HCLOUD_TOKEN may also come from the host's own additions to the service.
  service = config.systemd.services.nix-hcloud-builder or { };
  tokenFromEnvironment = (service.environment or { }) ? HCLOUD_TOKEN || (service.serviceConfig or { }) ? EnvironmentFile;
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
        The daemon's JSON config (every key is described in docs/configuration.md). `stateDir`,
        `authorizedKeysFile`, `pools` and `hcloud.tokenFile` are set by this module (use the
        options `pools` and `tokenFile`); setting them here is an error.
      '';
    };

    pools = lib.mkOption {
      type = types.attrsOf (types.submodule poolModule);
      default = { };
      example = { x86_64 = { serverTypes = [ "ccx33" ]; maxWorkers = 2; idleTimeout = "15m"; }; };
      description = ''
        The pools (config key `pools`): each is the ssh user of one machines line. The keys the
        daemon knows are typed; at least one pool is needed.
      '';
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
      description = "ssh_config Host alias of the endpoint in the machines lines, when they use it (see machinesStyle).";
    };

    machinesStyle = lib.mkOption {
      type = types.enum [ "auto" "alias" "port" ];
      default = "auto";
      description = ''
        How the machines lines reach the endpoint. "auto": as `setup` chooses for `nix.package`,
        the port in the URI for Nix ≥ 2.31 (`ssh-ng://POOL@127.0.0.1:2222`) and Lix ≥ 2.93
        (`?port=2222`), else (and for an IPv6 listen address, or without hostPublicKey) the ssh
        alias `sshAlias` with its Host block in the system ssh config. "alias" or "port" forces one;
        "port" needs hostPublicKey.
      '';
    };

    clientKeyFile = lib.mkOption {
      type = lib.types.str;
      default = nhb.defaultClientKey;
      description = "Private key nix-daemon (root) logs in with; made before the first start if missing.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.pools != { };
        message = "services.nix-hcloud-builder.pools: define at least one pool, e.g. pools.x86_64.serverTypes = [ \"ccx33\" ];";
      }
      {
        assertion = cfg.tokenFile != null || hcloudSettings ? tokenCommand || tokenFromEnvironment;
        message = "services.nix-hcloud-builder: no Hetzner API token: set tokenFile, or settings.hcloud.tokenCommand, or HCLOUD_TOKEN in the service's environment (systemd.services.nix-hcloud-builder.environment or serviceConfig.EnvironmentFile).";
      }
      {
        assertion = !(cfg.machinesStyle == "port" && cfg.hostPublicKey == null);
        message = "services.nix-hcloud-builder.machinesStyle = \"port\" needs hostPublicKey (ssh finds the key the service makes only through the alias): set hostPublicKey, or use \"auto\" or \"alias\".";
      }
      {
        assertion = !(cfg.tokenFile != null && hcloudSettings ? tokenCommand);
        message = "services.nix-hcloud-builder: set tokenFile or settings.hcloud.tokenCommand, not both.";
      }
    ]
    ++ map
      (key: {
        assertion = !(lib.hasAttrByPath key cfg.settings);
        message = "services.nix-hcloud-builder.settings.${lib.concatStringsSep "." key} is set by this module (the service's StateDirectory and sandbox are made for its value): use ${
          { stateDir = "the state directory ${stateDir} as it is"; authorizedKeysFile = "the authorized keys the service writes"; pools = "services.nix-hcloud-builder.pools"; hcloud = "services.nix-hcloud-builder.tokenFile"; }.${builtins.head key}
        } instead.";
      })
      moduleKeys
    ++ lib.mapAttrsToList
      (name: _: {
        assertion = builtins.match "[a-z0-9]([a-z0-9_-]{0,30}[a-z0-9])?" name != null;
        message = "services.nix-hcloud-builder.pools.${name}: a pool name is the ssh user name Nix logs in with: 1 to 32 lowercase letters, digits, \"-\" or \"_\".";
      })
      cfg.pools;

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
      } // lib.mapAttrs (_: lib.mkDefault) hardening;
    };

    nix.distributedBuilds = true;
    nix.buildMachines = map
      (m: if cfg.hostPublicKey == null then removeAttrs m [ "publicHostKey" ] else m)
      (nhb.buildMachines (client // nixTarget // { config = daemonConfig; hostPublicKey = if cfg.hostPublicKey == null then "-" else cfg.hostPublicKey; }));

    programs.ssh.extraConfig = lib.optionalString usesAlias (nhb.sshHostConfig (client // { config = daemonConfig; })
      + lib.optionalString (cfg.hostPublicKey == null) "  GlobalKnownHostsFile ${knownHostsFile}\n");
  };
}
