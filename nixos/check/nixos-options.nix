# Typed declarations of the NixOS options that nixos/module.nix sets or reads, written after the
# NixOS option documentation (nixos/modules/{config/nix-remote-build.nix, config/users-groups.nix,
# programs/ssh.nix, system/boot/systemd.nix, misc/assertions.nix} in nixpkgs). Only these options,
# with their types and defaults, and the users-groups assertions: enough for nixpkgs'
# lib.evalModules to type-check what the module defines. Used by scripts/check-nixos.sh.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;

  # A systemd unit setting (nixos/lib/systemd-unit-options.nix): a bool, int, string, path or
  # package, or a list of them; lists defined more than once are concatenated, other values must
  # be equal.
  unitAtom = v: builtins.isBool v || builtins.isInt v || builtins.isString v || builtins.isPath v || lib.isDerivation v;
  unitOption = types.mkOptionType {
    name = "systemd option";
    description = "systemd unit setting (a bool, int, string, path, or a list of them)";
    check = v: unitAtom v || (builtins.isList v && builtins.all unitAtom v);
    merge = loc: defs:
      if builtins.any (d: builtins.isList d.value) defs
      then lib.concatMap (d: lib.toList d.value) defs
      else lib.mergeEqualOption loc defs;
  };
  unitNames = mkOption { type = types.listOf types.str; default = [ ]; };

  service = types.submodule ({ name, ... }: {
    options = {
      enable = mkOption { type = types.bool; default = true; };
      description = mkOption { type = types.singleLineStr; default = ""; };
      wantedBy = unitNames;
      requiredBy = unitNames;
      wants = unitNames;
      requires = unitNames;
      after = unitNames;
      before = unitNames;
      environment = mkOption { type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ])); default = { }; };
      path = mkOption { type = types.listOf (types.either types.package types.str); default = [ ]; };
      script = mkOption { type = types.lines; default = ""; };
      preStart = mkOption { type = types.lines; default = ""; };
      serviceConfig = mkOption {
        type = types.addCheck (types.attrsOf unitOption)
          (c: !(c ? Type) || builtins.elem c.Type [ "simple" "exec" "forking" "oneshot" "dbus" "notify" "notify-reload" "idle" ]);
        default = { };
      };
    };
  });

  buildMachine = types.submodule {
    options = {
      hostName = mkOption { type = types.str; };
      protocol = mkOption { type = types.enum [ null "ssh" "ssh-ng" ]; default = "ssh"; };
      system = mkOption { type = types.nullOr types.str; default = null; };
      systems = mkOption { type = types.listOf types.str; default = [ ]; };
      sshUser = mkOption { type = types.nullOr types.str; default = null; };
      sshKey = mkOption { type = types.nullOr types.str; default = null; };
      maxJobs = mkOption { type = types.int; default = 1; };
      speedFactor = mkOption { type = types.int; default = 1; };
      supportedFeatures = mkOption { type = types.listOf types.str; default = [ ]; };
      mandatoryFeatures = mkOption { type = types.listOf types.str; default = [ ]; };
      publicHostKey = mkOption { type = types.nullOr types.str; default = null; };
    };
  };

  nixConfAtom = types.oneOf [ types.bool types.int types.float types.str types.path types.package ];

  user = types.submodule ({ name, ... }: {
    options = {
      name = mkOption { type = types.str; default = name; };
      description = mkOption { type = types.str; default = ""; };
      uid = mkOption { type = types.nullOr types.int; default = null; };
      isSystemUser = mkOption { type = types.bool; default = false; };
      isNormalUser = mkOption { type = types.bool; default = false; };
      group = mkOption { type = types.str; default = ""; };
      extraGroups = mkOption { type = types.listOf types.str; default = [ ]; };
      home = mkOption { type = types.either types.path (types.strMatching "/.*"); default = "/var/empty"; };
      createHome = mkOption { type = types.bool; default = false; };
    };
  });

  group = types.submodule ({ name, ... }: {
    options = {
      name = mkOption { type = types.str; default = name; };
      gid = mkOption { type = types.nullOr types.int; default = null; };
      members = mkOption { type = types.listOf types.str; default = [ ]; };
    };
  });
in
{
  options = {
    assertions = mkOption {
      type = types.listOf (types.submodule {
        options.assertion = mkOption { type = types.bool; };
        options.message = mkOption { type = types.str; };
      });
      default = [ ];
    };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; };

    networking.hostName = mkOption {
      type = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$";
      default = "nixos";
    };

    nix.package = mkOption { type = types.package; default = pkgs.nix; };
    nix.distributedBuilds = mkOption { type = types.bool; default = false; };
    nix.buildMachines = mkOption { type = types.listOf buildMachine; default = [ ]; };
    nix.settings = mkOption {
      type = types.submodule { freeformType = types.attrsOf (types.either nixConfAtom (types.listOf nixConfAtom)); };
      default = { };
    };

    programs.ssh.extraConfig = mkOption { type = types.lines; default = ""; };

    systemd.services = mkOption { type = types.attrsOf service; default = { }; };

    users.users = mkOption { type = types.attrsOf user; default = { }; };
    users.groups = mkOption { type = types.attrsOf group; default = { }; };
  };

  # What nixos/modules/config/users-groups.nix asserts about every user.
  config.assertions = lib.concatLists (lib.mapAttrsToList
    (name: u: [
      {
        assertion = u.isSystemUser != u.isNormalUser;
        message = "Exactly one of users.users.${name}.isSystemUser and users.users.${name}.isNormalUser must be set.";
      }
      {
        assertion = u.group != "" && config.users.groups ? ${u.group};
        message = "users.users.${name}.group is unset or names no group in users.groups.";
      }
    ])
    config.users.users);
}
