{
  description = "nix-hcloud-builder: a Nix remote builder that boots Hetzner Cloud servers on demand and deletes them when idle";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
      worker = system: nixpkgs.lib.nixosSystem {
        inherit system;
        modules = [ self.nixosModules.worker ];
      };
    in
    {
      packages = forAllSystems (system: pkgs: rec {
        nix-hcloud-builder = pkgs.callPackage ./package.nix { };
        default = nix-hcloud-builder;
        # The worker's raw disk image (x86 on x86_64-linux, Arm on aarch64-linux), for
        # `nix-hcloud-builder image upload result/nixos.root.img --arch x86|arm`.
        worker-image = (worker system).config.system.build.rawImage;
      });

      nixosModules.default = { pkgs, lib, ... }: {
        imports = [ ./nixos/module.nix ];
        services.nix-hcloud-builder.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };
      nixosModules.worker = ./nixos/worker.nix;

      nixosConfigurations.worker-x86_64 = worker "x86_64-linux";
      nixosConfigurations.worker-aarch64 = worker "aarch64-linux";

      # Machines lines, ssh alias and JSON config in plain Nix (no nixpkgs needed).
      lib = import ./nixos/lib.nix;
    };
}
