/**
 * Installing Nix on a stock image (Ubuntu, Debian), as a runcmd step of the cloud-config: the
 * pool's Nix release tarball (core/nix-release.ts), downloaded with retries, checked against its
 * sha256 before anything in it runs, then the release's own installer: multi-user (nix-daemon,
 * nixbld users, /etc/nix/nix.conf, systemd units), no channel (a builder needs none, and the
 * channel's download is one more thing to fail). Plain POSIX sh: test/daemon/nix-install.test.ts
 * runs shellcheck on it.
 *
 * It runs inside the runcmd script after its environment line (HOME, USER, PATH, LANG: cloud-final
 * has no HOME, and the installer stops without one) and uses that script's `fail`, which records the
 * reason where the daemon reads it (FAILED_MARKER) and ends the runcmd script.
 */
import { NIX_RELEASE_SYSTEMS, type NixRelease } from '../core/nix-release.js';

/** `uname -m` of each system the release may have a tarball for. */
const UNAME: Record<(typeof NIX_RELEASE_SYSTEMS)[number], string> = { 'x86_64-linux': 'x86_64', 'aarch64-linux': 'aarch64' };

export const NIX_DOWNLOAD_ATTEMPTS = 5;
/** The installer's output goes here; its last lines go to the console when it fails. */
export const NIX_INSTALL_LOG = '/var/log/nix-hcloud-builder-nix-install.log';

/** The tarball's URL as a shell word inside double quotes, with `$version` and `$system` in it. */
function urlWord(release: NixRelease): string {
  return release.url.replaceAll('{version}', '${version}').replaceAll('{system}', '${system}');
}

/** Lines that download, check and install `release`; every failure ends in `fail "<reason>"`. */
export function installNixLines(release: NixRelease): string[] {
  const cases = NIX_RELEASE_SYSTEMS.filter((s) => release.sha256[s] !== undefined).map(
    (s) => `  ${UNAME[s]}) system=${s}; sha256=${release.sha256[s] as string} ;;`,
  );
  return [
    `version=${release.version}`,
    'case "$(uname -m)" in',
    ...cases,
    '  *) fail "no sha256 of a Nix $version tarball for $(uname -m) is configured" ;;',
    'esac',
    `url="${urlWord(release)}"`,
    'work=$(mktemp -d /tmp/nix-release.XXXXXX) || fail "cannot make a temporary directory"',
    'trap \'rm -rf "$work"\' EXIT',
    'n=1',
    'until curl -fsSL --connect-timeout 20 --max-time 900 -o "$work/nix.tar.xz" "$url"; do',
    `  [ "$n" -lt ${NIX_DOWNLOAD_ATTEMPTS} ] || fail "cannot download $url (${NIX_DOWNLOAD_ATTEMPTS} attempts)"`,
    `  echo "nix-hcloud-builder: download of $url failed (attempt $n of ${NIX_DOWNLOAD_ATTEMPTS}); again in $((n * 2)) s"`,
    '  sleep $((n * 2)); n=$((n + 1))',
    'done',
    'got=$(sha256sum "$work/nix.tar.xz" | cut -d " " -f 1)',
    '[ "$got" = "$sha256" ] || fail "sha256 mismatch of $url: expected $sha256, got $got; not running it"',
    'tar -xJf "$work/nix.tar.xz" -C "$work" || fail "cannot unpack $url"',
    'installer="$work/nix-$version-$system/install"',
    '[ -x "$installer" ] || fail "$url has no nix-$version-$system/install"',
    `if ! "$installer" --daemon --yes --no-channel-add </dev/null >${NIX_INSTALL_LOG} 2>&1; then`,
    `  tail -n 20 ${NIX_INSTALL_LOG} >&2`,
    // Its last words, without the colours it prints.
    `  fail "the installer of Nix $version failed: $(sed 's/\x1b\[[0-9;]*m//g' ${NIX_INSTALL_LOG} | grep -v '^[[:space:]]*$' | tail -n 1) (see ${NIX_INSTALL_LOG})"`,
    'fi',
    `echo "nix-hcloud-builder: installed Nix $version ($system, sha256 $sha256)"`,
  ];
}
