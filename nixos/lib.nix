# What Nix needs to build through nix-hcloud-builder, in plain Nix (builtins only, no nixpkgs):
# the daemon's JSON config, one machines line (or nix.buildMachines entry) per pool, and the
# ssh_config Host alias. The same as `nix-hcloud-builder setup` writes (src/setup/machines.ts); the
# tests compare both for the same settings.
#
#   let nhb = import ./lib.nix; config = nhb.mkConfig { settings = { ... }; pools = { ... }; };
#   in nhb.machinesLines { inherit config; hostPublicKey = "ssh-ed25519 AAAA… nix-hcloud-builder"; }
let
  defaultAlias = "hcloud-builder";
  defaultClientKey = "/root/.ssh/nix-hcloud-builder";

  # The daemon's defaults (src/core/config.ts) for what the lines are made of.
  listenDefaults = { host = "127.0.0.1"; port = 2222; };
  poolDefaults = {
    systems = [ "x86_64-linux" ];
    maxWorkers = 1;
    jobsPerWorker = 8;
    speedFactor = 1;
    supportedFeatures = [ "big-parallel" "nixos-test" "benchmark" ];
    mandatoryFeatures = [ ];
  };

  join = sep: list: builtins.concatStringsSep sep list;
  listField = values: if values == [ ] then "-" else join "," values;
  mod = a: b: a - (a / b) * b;

  # base64 of an ASCII string (a public key line), as `base64 -w0`.
  printable = " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";
  byteOf = builtins.listToAttrs (builtins.genList (i: { name = builtins.substring i 1 printable; value = i + 32; }) (builtins.stringLength printable));
  alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  digit = n: builtins.substring n 1 alphabet;
  base64 = s:
    let
      len = builtins.stringLength s;
      bytes = builtins.genList (i:
        let c = builtins.substring i 1 s;
        in byteOf.${c} or (throw "nix-hcloud-builder: the host public key must be printable ASCII")) len;
      at = i: if i < len then builtins.elemAt bytes i else 0;
      group = g:
        let
          i = g * 3;
          n = (at i) * 65536 + (at (i + 1)) * 256 + (at (i + 2));
          chars = [ (digit (n / 262144)) (digit (mod (n / 4096) 64)) (digit (mod (n / 64) 64)) (digit (mod n 64)) ];
          keep = if len - i >= 3 then 4 else len - i + 1;
        in join "" (builtins.genList (k: if k < keep then builtins.elemAt chars k else "=") 4);
    in join "" (builtins.genList group ((len + 2) / 3));

  trim = s:
    let m = builtins.match "[[:space:]]*([^[:space:]].*[^[:space:]]|[^[:space:]])[[:space:]]*" s;
    in if m == null then "" else builtins.head m;

  checkClient = { alias, clientKey }:
    if builtins.match "[A-Za-z0-9][A-Za-z0-9._-]{0,62}" alias == null || alias == "localhost" then
      throw "nix-hcloud-builder: ssh alias \"${alias}\": expected letters, digits, \".\", \"-\" or \"_\" (and not \"localhost\", which Nix builds on locally)"
    else if builtins.match "/[^[:space:]]*" clientKey == null then
      throw "nix-hcloud-builder: client key \"${clientKey}\": expected an absolute path without spaces"
    else true;

  # A pool with the daemon's defaults filled in.
  pool = name: p: poolDefaults // p // { inherit name; };
in
rec {
  inherit defaultAlias defaultClientKey base64;

  /*
    The daemon's JSON config: `settings` (any config keys, see docs/configuration.md) with `pools` merged
    into settings.pools and `tokenFile` into settings.hcloud.tokenFile when given.
  */
  mkConfig = { settings ? { }, pools ? { }, tokenFile ? null }:
    let
      hcloud = (settings.hcloud or { }) // (if tokenFile == null then { } else { tokenFile = toString tokenFile; });
      allPools = (settings.pools or { }) // pools;
    in
    settings
    // (if hcloud == { } then { } else { inherit hcloud; })
    // { pools = allPools; };

  # Where a local ssh client reaches the endpoint: a wildcard listen address means loopback.
  endpointAddress = config:
    let
      listen = listenDefaults // (config.listen or { });
      host = listen.host;
    in
    if listen.port == 0 then throw "nix-hcloud-builder: config key \"listen.port\" is 0 (any free port): the ssh alias needs a fixed port, e.g. 2222"
    else {
      host = if host == "0.0.0.0" || host == "" then "127.0.0.1" else if host == "::" || host == "[::]" then "::1" else host;
      inherit (listen) port;
    };

  # Field 8 of a machines line: base64 of the host public key line.
  hostKeyBase64 = hostPublicKey: base64 (trim hostPublicKey);

  # Nix 2.8 reads the speed factor as a whole number: a fraction is rounded up.
  speedFactor = f: if builtins.isFloat f then builtins.ceil f else f;

  # The pools with defaults, in the order of the config's JSON (attribute names sorted, as JSON
  # objects built by Nix are).
  poolsOf = config: builtins.map (name: pool name config.pools.${name}) (builtins.attrNames config.pools);

  # nix.buildMachines entries (NixOS), one per pool.
  buildMachines = { config, hostPublicKey, alias ? defaultAlias, clientKey ? defaultClientKey }:
    assert checkClient { inherit alias clientKey; };
    map
      (p: {
        hostName = alias;
        protocol = "ssh-ng";
        sshUser = p.name;
        sshKey = clientKey;
        systems = p.systems;
        maxJobs = p.maxWorkers * p.jobsPerWorker;
        speedFactor = speedFactor p.speedFactor;
        supportedFeatures = p.supportedFeatures;
        mandatoryFeatures = p.mandatoryFeatures;
        publicHostKey = hostKeyBase64 hostPublicKey;
      })
      (poolsOf config);

  # The /etc/nix/machines lines, one per pool.
  machinesLines = args:
    map
      (m: join " " [
        "${m.protocol}://${m.sshUser}@${m.hostName}"
        (listField m.systems)
        m.sshKey
        (toString m.maxJobs)
        (toString m.speedFactor)
        (listField m.supportedFeatures)
        (listField m.mandatoryFeatures)
        m.publicHostKey
      ])
      (buildMachines args);

  # The ssh_config Host block, as lines.
  sshHostBlock = { config, alias ? defaultAlias, clientKey ? defaultClientKey }:
    assert checkClient { inherit alias clientKey; };
    let address = endpointAddress config;
    in [
      "Host ${alias}"
      "  HostName ${address.host}"
      "  Port ${toString address.port}"
      "  HostKeyAlias ${alias}"
      "  IdentityFile ${clientKey}"
      "  IdentitiesOnly yes"
    ];

  # The same block as text, for programs.ssh.extraConfig.
  sshHostConfig = args: join "\n" (sshHostBlock args) + "\n";
}
