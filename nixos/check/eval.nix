# nixos/module.nix under nixpkgs' real module system: lib.evalModules with the typed NixOS option
# declarations of ./nixos-options.nix and the pkgs stand-ins of ./pkgs.nix. Run by
# scripts/check-nixos.sh, which passes `lib` (nixpkgs' lib folder, imported):
#   checks          a list of { name, ok, detail } for a sample configuration
#   negatives.NAME  { expect; result; }: result must fail to evaluate, with `expect` (an extended
#                   regular expression) in the error
#   unit            the service's unit file, rendered as NixOS renders it (for systemd-analyze)
{ lib }:
let
  pkgs = import ./pkgs.nix { inherit lib; };
  hostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE6b0u3rbV0t0m8JwW4kYv2N1mJr8n7dG4eOq6m0Z7Xh nix-hcloud-builder";

  # Like a NixOS system: failed assertions stop the evaluation.
  system = modules:
    let
      e = lib.evalModules {
        modules = [
          ./nixos-options.nix
          ../module.nix
          { _module.args.pkgs = pkgs; networking.hostName = "host"; }
        ] ++ modules;
      };
      failed = map (a: a.message) (builtins.filter (a: !a.assertion) e.config.assertions);
    in
    if failed == [ ] then e.config
    else throw "\nFailed assertions:\n${lib.concatMapStrings (m: "- ${m}\n") failed}";

  sample = {
    services.nix-hcloud-builder = {
      enable = true;
      tokenFile = "/run/secrets/hcloud-token";
      settings = { listen.port = 2400; log.level = "debug"; };
      pools.x86_64 = { serverTypes = [ "ccx33" "cpx42" ]; maxWorkers = 2; idleTimeout = "15m"; };
      pools.arm = {
        serverTypes = [ "cax41" ];
        systems = [ "aarch64-linux" ];
        image.labelSelector = "nix-hcloud-builder/image=worker";
        speedFactor = 2.5;
        supportedFeatures = [ "big-parallel" "kvm" ];
        shutdownNote = "free-form keys pass through";
      };
    };
  };

  config = system [ sample ];
  svc = config.systemd.services.nix-hcloud-builder;
  sc = svc.serviceConfig;
  storePath = "/nix/store/[0-9a-z]{32}-";
  configFile = builtins.head (builtins.match ".* --config ([^ ]+)" sc.ExecStart);
  prepare = builtins.readFile (builtins.substring 1 (-1) sc.ExecStartPre);

  check = name: got: want: { inherit name; ok = got == want; detail = "got ${builtins.toJSON got}, want ${builtins.toJSON want}"; };
  matches = name: regex: got: { inherit name; ok = builtins.isString got && builtins.match regex got != null; detail = "got ${builtins.toJSON got}, want a match for ${regex}"; };

  sshBlock = ''
    Host hcloud-builder
      HostName 127.0.0.1
      Port 2400
      HostKeyAlias hcloud-builder
      IdentityFile /root/.ssh/nix-hcloud-builder
      IdentitiesOnly yes
  '';
  machine = pool: attrs: {
    hostName = "hcloud-builder";
    protocol = "ssh-ng";
    system = null;
    sshUser = pool;
    sshKey = "/root/.ssh/nix-hcloud-builder";
    mandatoryFeatures = [ ];
    publicHostKey = null;
  } // attrs;

  hardening = {
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    SystemCallFilter = [ "@system-service" "~@privileged" ];
    SystemCallErrorNumber = "EPERM";
    SystemCallArchitectures = "native";
    NoNewPrivileges = true;
    PrivateUsers = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateMounts = true;
    KeyringMode = "private";
    ProtectSystem = "strict";
    ProtectHome = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    ProtectClock = true;
    ProtectHostname = true;
    ProtectKernelLogs = true;
    ProtectKernelModules = true;
    ProtectKernelTunables = true;
    ProtectControlGroups = true;
    RemoveIPC = true;
    RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    UMask = "0077";
  };

  withKey = system [ sample { services.nix-hcloud-builder.hostPublicKey = hostKey; } ];
  # nix.package picks the machines lines' form (the stand-in default is Nix 2.8: the alias).
  withNix = pname: version: extra: system [ sample { services.nix-hcloud-builder.hostPublicKey = hostKey; nix.package = pkgs.nix // { inherit pname version; }; } extra ];
  overridden = (system [ sample { systemd.services.nix-hcloud-builder.serviceConfig.ProcSubset = "all"; } ]).systemd.services.nix-hcloud-builder.serviceConfig;

  # For the negative checks: a configuration that must not evaluate.
  pool = attrs: { services.nix-hcloud-builder.pools.bad = { serverTypes = [ "cx23" ]; } // attrs; };
  negative = expect: modules: {
    inherit expect;
    result = let c = system modules; in builtins.seq (builtins.toJSON c.nix.buildMachines) (builtins.readFile configFileOf c);
  };
  configFileOf = c: builtins.head (builtins.match ".* --config ([^ ]+)" c.systemd.services.nix-hcloud-builder.serviceConfig.ExecStart);
  noPools = lib.recursiveUpdate sample { services.nix-hcloud-builder.pools = lib.mkForce { }; };

  # The unit file NixOS would write (nixos/lib/systemd-lib.nix: one line per list element).
  renderValue = v: if builtins.isBool v then lib.boolToString v else toString v;
  renderSection = name: attrs: "[${name}]\n" + lib.concatStrings (lib.mapAttrsToList
    (k: v: lib.concatMapStrings (x: "${k}=${renderValue x}\n") (lib.toList v))
    attrs);
in
{
  checks = [
    (check "the pools' typed keys reach the JSON config, nulls left out, free-form keys kept" (builtins.fromJSON (builtins.readFile configFile)) {
      stateDir = "/var/lib/nix-hcloud-builder";
      authorizedKeysFile = "/var/lib/nix-hcloud-builder/authorized_keys";
      hcloud.tokenFile = "/run/credentials/nix-hcloud-builder.service/hcloud-token";
      listen.port = 2400;
      log.level = "debug";
      pools.x86_64 = { serverTypes = [ "ccx33" "cpx42" ]; maxWorkers = 2; idleTimeout = "15m"; };
      pools.arm = {
        serverTypes = [ "cax41" ];
        systems = [ "aarch64-linux" ];
        image.labelSelector = "nix-hcloud-builder/image=worker";
        speedFactor = 2.5;
        supportedFeatures = [ "big-parallel" "kvm" ];
        shutdownNote = "free-form keys pass through";
      };
    })
    (check "nix.distributedBuilds" config.nix.distributedBuilds true)
    (check "nix.buildMachines: one typed entry per pool, no kvm unless the pool says so" config.nix.buildMachines [
      (machine "arm" { systems = [ "aarch64-linux" ]; maxJobs = 8; speedFactor = 3; supportedFeatures = [ "big-parallel" "kvm" ]; })
      (machine "x86_64" { systems = [ "x86_64-linux" ]; maxJobs = 16; speedFactor = 1; supportedFeatures = [ "big-parallel" "nixos-test" "benchmark" ]; })
    ])
    (check "with hostPublicKey: field 8 of every entry is base64 of the key line" (map (m: m.publicHostKey) withKey.nix.buildMachines)
      [ "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUU2YjB1M3JiVjB0MG04SndXNGtZdjJOMW1KcjhuN2RHNGVPcTZtMFo3WGggbml4LWhjbG91ZC1idWlsZGVy" "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUU2YjB1M3JiVjB0MG04SndXNGtZdjJOMW1KcjhuN2RHNGVPcTZtMFo3WGggbml4LWhjbG91ZC1idWlsZGVy" ])
    (check "programs.ssh.extraConfig: the alias, reading the key the service made" config.programs.ssh.extraConfig
      "${sshBlock}  GlobalKnownHostsFile /var/lib/nix-hcloud-builder/known_hosts\n")
    (check "programs.ssh.extraConfig with hostPublicKey: just the alias" withKey.programs.ssh.extraConfig sshBlock)
    (check "Nix 2.31: the port in the URI, no ssh alias" (let c = withNix "nix" "2.31.0" { }; in { hostName = (builtins.head c.nix.buildMachines).hostName; ssh = c.programs.ssh.extraConfig; })
      { hostName = "127.0.0.1:2400"; ssh = ""; })
    (check "Lix 2.93: ?port=, no ssh alias" (let c = withNix "lix" "2.93.0" { }; in { hostName = (builtins.head c.nix.buildMachines).hostName; ssh = c.programs.ssh.extraConfig; })
      { hostName = "127.0.0.1?port=2400"; ssh = ""; })
    (check "machinesStyle = \"alias\" on Nix 2.34: the alias" (let c = withNix "nix" "2.34.8" { services.nix-hcloud-builder.machinesStyle = "alias"; }; in { hostName = (builtins.head c.nix.buildMachines).hostName; ssh = c.programs.ssh.extraConfig; })
      { hostName = "hcloud-builder"; ssh = sshBlock; })
    (matches "ExecStart runs serve with the generated config" "${storePath}nix-hcloud-builder/bin/nix-hcloud-builder serve --config ${storePath}nix-hcloud-builder[.]json" sc.ExecStart)
    (matches "ExecStartPre runs the prepare script as root (+)" "[+]${storePath}nix-hcloud-builder-prepare" sc.ExecStartPre)
    (matches "the prepare script makes the client key and the authorized keys" ".*ssh-keygen -q -t ed25519 .*ssh-keygen -y -f /root/.ssh/nix-hcloud-builder > /var/lib/nix-hcloud-builder/authorized_keys.tmp.*" prepare)
    (check "the token comes as a systemd credential" sc.LoadCredential [ "hcloud-token:/run/secrets/hcloud-token" ])
    (check "User, Group, StateDirectory" { inherit (sc) User Group StateDirectory StateDirectoryMode; }
      { User = "nix-hcloud-builder"; Group = "nix-hcloud-builder"; StateDirectory = "nix-hcloud-builder"; StateDirectoryMode = "0700"; })
    (check "Restart, stop timeout, KillMode" { inherit (sc) Restart TimeoutStopSec KillMode; } { Restart = "on-failure"; TimeoutStopSec = "3min"; KillMode = "mixed"; })
    (check "hardening" (builtins.intersectAttrs hardening sc) hardening)
    (check "no MemoryDenyWriteExecute (V8's JIT)" (sc ? MemoryDenyWriteExecute) false)
    (check "the hardening is a default a host can override" overridden.ProcSubset "all")
    (check "the service starts at boot, after the network" { inherit (svc) wantedBy after wants; }
      { wantedBy = [ "multi-user.target" ]; after = [ "network-online.target" ]; wants = [ "network-online.target" ]; })
    (check "a system user and its group" { inherit (config.users.users.nix-hcloud-builder) isSystemUser group home; hasGroup = config.users.groups ? nix-hcloud-builder; }
      { isSystemUser = true; group = "nix-hcloud-builder"; home = "/var/lib/nix-hcloud-builder"; hasGroup = true; })
  ];

  negatives = {
    "maxWorkers = \"two\"" = negative "option .*pools.bad.maxWorkers' is not of type" [ sample (pool { maxWorkers = "two"; }) ];
    "serverTypes = [ ]" = negative "option .*pools.bad.serverTypes' is not of type .non-empty .list" [ sample { services.nix-hcloud-builder.pools.bad.serverTypes = [ ]; } ];
    "idleTimeout = \"ten minutes\"" = negative "pools.bad.idleTimeout' is not of type" [ sample (pool { idleTimeout = "ten minutes"; }) ];
    "idlePolicy = \"never\"" = negative "pools.bad.idlePolicy' is not of type" [ sample (pool { idlePolicy = "never"; }) ];
    "image = { name = ...; }" = negative "pools.bad.image' is not of type" [ sample (pool { image = { name = "ubuntu-24.04"; }; }) ];
    "a pool name Nix cannot log in with" = negative "pools.X86: a pool name is the ssh user name" [ sample { services.nix-hcloud-builder.pools.X86.serverTypes = [ "cx23" ]; } ];
    "machinesStyle = \"ssh\"" = negative "machinesStyle' is not of type" [ sample { services.nix-hcloud-builder.machinesStyle = "ssh"; } ];
    "machinesStyle = \"port\" without hostPublicKey" = negative "machinesStyle = .port. needs hostPublicKey" [ sample { services.nix-hcloud-builder.machinesStyle = "port"; } ];
    "no pool" = negative "define at least one pool" [ noPools ];
    "no token" = negative "no Hetzner API token" [ (lib.recursiveUpdate sample { services.nix-hcloud-builder.tokenFile = lib.mkForce null; }) ];
    "tokenFile and settings.hcloud.tokenCommand" = negative "set tokenFile or settings.hcloud.tokenCommand, not both" [ sample { services.nix-hcloud-builder.settings.hcloud.tokenCommand = "pass hcloud"; } ];
    "settings.stateDir" = negative "settings.stateDir is set by this module" [ sample { services.nix-hcloud-builder.settings.stateDir = "/srv/nhb"; } ];
    "settings.authorizedKeysFile" = negative "settings.authorizedKeysFile is set by this module" [ sample { services.nix-hcloud-builder.settings.authorizedKeysFile = "/etc/nhb-keys"; } ];
    "settings.pools" = negative "settings.pools is set by this module" [ sample { services.nix-hcloud-builder.settings.pools.extra.serverTypes = [ "cx23" ]; } ];
    "settings.hcloud.tokenFile" = negative "settings.hcloud.tokenFile is set by this module" [ sample { services.nix-hcloud-builder.settings.hcloud.tokenFile = "/etc/token"; } ];
  };

  unit = renderSection "Unit" { Description = svc.description; After = svc.after; Wants = svc.wants; }
    + "\n" + renderSection "Service" sc
    + "\n" + renderSection "Install" { WantedBy = svc.wantedBy; };
}
