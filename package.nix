# The nix-hcloud-builder package: the TypeScript daemon built with tsc, run by Node.js 20.
# npm dependencies come from package-lock.json (importNpmLock: no extra hash to keep in sync).
{ lib, buildNpmPackage, importNpmLock, makeWrapper, nodejs_20, python3 }:
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
      ./worker
    ];
  };

  npmDeps = importNpmLock { npmRoot = ./.; };
  npmConfigHook = importNpmLock.npmConfigHook;

  # `npm run build` (tsc) compiles src/ to dist/src/. No install scripts: ssh2's optional native
  # crypto binding and cpu-features are not built, and ssh2 falls back to Node's crypto. That is
  # slower for chacha20-poly1305 (what OpenSSH clients pick by default); the figures in
  # bench/README.md are with the binding, and this file is not evaluated in CI.
  npmRebuildFlags = [ "--ignore-scripts" ];
  # zstd-napi (compression "zstd") is the one addon that is built: from its bundled libzstd source
  # with node-gyp (its prebuilt download fails in the sandbox, as it should), against this Node.
  npm_config_nodedir = nodejs_20;
  preBuild = ''
    npm rebuild zstd-napi --foreground-scripts
  '';

  # The bin's node flags are on the first line of dist/src/cli/main.js (`#!/usr/bin/env -S node FLAGS`,
  # see there why); the wrapper buildNpmPackage makes runs `node main.js` without them.
  nativeBuildInputs = [ makeWrapper python3 ];
  postInstall = ''
    cli=$out/lib/node_modules/${manifest.name}/dist/src/cli/main.js
    flags=$(sed -n '1s|^#!/usr/bin/env -S node ||p' "$cli")
    makeWrapper ${nodejs_20}/bin/node $out/bin/nix-hcloud-builder --add-flags "$flags $cli"
  '';

  meta = {
    description = manifest.description;
    license = lib.licenses.mit;
    mainProgram = "nix-hcloud-builder";
    platforms = lib.platforms.linux;
  };
}
