# What Nix needs to build through nix-hcloud-builder, in plain Nix (builtins only, no nixpkgs):
# the daemon's JSON config, one machines line (or nix.buildMachines entry) per pool, and the
# ssh_config Host alias. The same as `nix-hcloud-builder setup` writes (src/setup/machines.ts,
# src/setup/nix-version.ts); the tests compare both for the same settings and Nix version.
#
#   let nhb = import ./lib.nix; config = nhb.mkConfig { settings = { ... }; pools = { ... }; };
#   in nhb.machinesLines { inherit config; hostPublicKey = "ssh-ed25519 AAAA… nix-hcloud-builder"; nixVersion = "2.31.0"; }
#
# Without nixVersion the lines name the ssh alias, which every Nix understands.
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

  # "2.31.0", "2.32.0pre20250101_abc", "2.93.0-pre" → [ 2 31 ]; null when it is no version.
  majorMinor = version:
    let m = if builtins.isString version then builtins.match "([0-9]+)[.]([0-9]+)([^0-9].*)?" version else null;
    in if m == null then null else [ (builtins.fromJSON (builtins.elemAt m 0)) (builtins.fromJSON (builtins.elemAt m 1)) ];
  atLeast = v: major: minor: v != null && (builtins.head v > major || (builtins.head v == major && builtins.elemAt v 1 >= minor));
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

  /*
    How the machines lines name the endpoint, as setup chooses (choosePortStyle): "authority"
    (`ssh-ng://POOL@127.0.0.1:2222`, CppNix ≥ 2.31), "query" (`ssh-ng://POOL@127.0.0.1?port=2222`,
    Lix ≥ 2.93) or "alias" (`ssh-ng://POOL@ALIAS` with the ssh_config Host block: older ones, an
    unknown version, and an endpoint on an IPv6 address, which setup does not put in URIs).
    nixFlavour: "nix" (CppNix) or "lix". machinesStyle "alias" or "port" overrides the choice
    ("port": the form the flavour takes).
  */
  portStyle = { config, nixVersion ? null, nixFlavour ? "nix", machinesStyle ? "auto", ... }:
    let
      v = majorMinor nixVersion;
      host = (endpointAddress config).host;
      ipv6 = builtins.match ".*:.*" host != null;
      inUri = if nixFlavour == "lix" then "query" else "authority";
    in
    if !(builtins.elem nixFlavour [ "nix" "lix" ]) then throw "nix-hcloud-builder: nixFlavour \"${toString nixFlavour}\": expected \"nix\" or \"lix\""
    else if machinesStyle == "alias" then "alias"
    else if machinesStyle == "port" then
      (if ipv6 then throw "nix-hcloud-builder: machinesStyle \"port\": the endpoint listens on ${host}, an IPv6 address, which does not go into a builder URI here: use \"alias\" or \"auto\"" else inUri)
    else if machinesStyle != "auto" then throw "nix-hcloud-builder: machinesStyle \"${toString machinesStyle}\": expected \"auto\", \"alias\" or \"port\""
    else if ipv6 then "alias"
    else if nixFlavour == "nix" && atLeast v 2 31 then "authority"
    else if nixFlavour == "lix" && atLeast v 2 93 then "query"
    else "alias";

  # The host part of the store URIs (after `POOL@`), for a portStyle.
  builderHost = { config, alias ? defaultAlias, ... }@args:
    let
      style = portStyle args;
      address = endpointAddress config;
    in
    if style == "alias" then alias
    else if style == "authority" then "${address.host}:${toString address.port}"
    else "${address.host}?port=${toString address.port}";

  # nix.buildMachines entries (NixOS), one per pool. nixVersion, nixFlavour, machinesStyle: see portStyle.
  buildMachines = { config, hostPublicKey, alias ? defaultAlias, clientKey ? defaultClientKey, ... }@args:
    assert checkClient { inherit alias clientKey; };
    let hostName = builderHost (removeAttrs args [ "hostPublicKey" "clientKey" ]);
    in
    map
      (p: {
        inherit hostName;
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

  # The ssh_config Host block, as lines (needed only when portStyle is "alias").
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
