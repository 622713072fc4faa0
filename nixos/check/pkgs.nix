# Stand-ins for the nixpkgs packages and functions nixos/module.nix calls, for
# scripts/check-nixos.sh. Not nixpkgs: a package is a minimal derivation-like attrset (type
# "derivation", a name, a made-up store path), enough for lib.types.package and for string
# interpolation; nothing is built. The JSON format has the type nixpkgs' pkgs.formats.json gives
# (the JSON value type), and files are written with builtins.toFile so the check can read them.
{ lib }:
let
  package = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
  };
in
{
  formats.json = { }: {
    type = with lib.types;
      let
        valueType = nullOr (oneOf [ bool int float str path (attrsOf valueType) (listOf valueType) ]) // {
          description = "JSON value";
        };
      in
      valueType;
    generate = name: value: builtins.toFile name (builtins.toJSON value);
  };
  writeShellScript = name: text: builtins.toFile name "#!/bin/sh\n${text}";
  callPackage = path: args: package "nix-hcloud-builder";
  openssh = package "openssh";
  coreutils = package "coreutils";
  # nix.package's default: the module reads its name and version.
  nix = package "nix-2.8.0" // { pname = "nix"; version = "2.8.0"; };
}
