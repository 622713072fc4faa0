# The nix-hcloud-builder package: the TypeScript daemon built with tsc, run by Node.js 20.
# npm dependencies come from package-lock.json (importNpmLock: no extra hash to keep in sync).
{ lib, buildNpmPackage, importNpmLock, nodejs_20 }:
let
  manifest = builtins.fromJSON (builtins.readFile ./package.json);
in
buildNpmPackage {
  pname = manifest.name;
  inherit (manifest) version;
  nodejs = nodejs_20;

  src = lib.fileset.toSource {
    root = ./.;
    fileset = lib.fileset.unions [
      ./package.json
      ./package-lock.json
      ./tsconfig.json
      ./src
      ./spec
      ./systemd
      ./nixos
    ];
  };

  npmDeps = importNpmLock { npmRoot = ./.; };
  npmConfigHook = importNpmLock.npmConfigHook;

  # `npm run build` (tsc) compiles src/ to dist/src/. No install scripts: ssh2's optional native
  # crypto binding and cpu-features are not needed (it falls back to Node's crypto).
  npmRebuildFlags = [ "--ignore-scripts" ];

  meta = {
    description = manifest.description;
    license = lib.licenses.mit;
    mainProgram = "nix-hcloud-builder";
    platforms = lib.platforms.linux;
  };
}
