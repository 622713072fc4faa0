/**
 * The Nix a worker on a stock image (Ubuntu, Debian) gets: a release tarball of NixOS/nix, pinned
 * by version and by the sha256 of each architecture's tarball, checked on the worker before its
 * installer runs (see daemon/nix-install.ts). A pool may name another release (`pools.<name>.nix`).
 *
 * 2.31.2's hashes are those of the `.sha256` files beside the tarballs on releases.nixos.org, which
 * the release's own `install` script (releases.nixos.org/nix/nix-2.31.2/install) carries too.
 */

/** The systems a Hetzner server can be: x86 (cx, cpx, ccx) and arm (cax). */
export const NIX_RELEASE_SYSTEMS = ['x86_64-linux', 'aarch64-linux'] as const;
export type NixReleaseSystem = (typeof NIX_RELEASE_SYSTEMS)[number];

export interface NixRelease {
  version: string;
  /** The tarball's URL; `{version}` and `{system}` (e.g. `x86_64-linux`) are filled in on the worker. */
  url: string;
  /** sha256 (hex) of each system's tarball; a system without one cannot install this release. */
  sha256: Partial<Record<NixReleaseSystem, string>>;
}

/** Where NixOS/nix publishes its release tarballs. */
export const NIX_RELEASE_URL = 'https://releases.nixos.org/nix/nix-{version}/nix-{version}-{system}.tar.xz';

export const PINNED_NIX_RELEASE: NixRelease = {
  version: '2.31.2',
  url: NIX_RELEASE_URL,
  sha256: {
    'x86_64-linux': 'd1f67c86eed016214864ba08bfb9529c307aea7e8fafb74853f96fcc3bfd8a60',
    'aarch64-linux': '64db528412096d718b4bf8f78f85e5ac2b714b774e5005500dee37d23f560456',
  },
};

/** A version as releases.nixos.org names them (2.31.2, 2.32.0pre…). */
export const NIX_VERSION_PATTERN = /^[0-9]+\.[0-9]+(\.[0-9]+)?([A-Za-z0-9_+-]*)$/;
/** An http(s) URL with nothing a shell would expand inside double quotes. */
export const NIX_URL_PATTERN = /^https?:\/\/[^\s'"`$\\]+$/;
export const SHA256_HEX = /^[0-9a-f]{64}$/;
