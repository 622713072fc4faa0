/**
 * `setup`: show, and with `--write` make, what this machine's Nix needs to build through the
 * daemon. Its options other than `--write` go to `runSetup` by their camel-cased names
 * (`--ssh-config` is `SetupOptions.sshConfig`): a new flag is one line in `options` here and its
 * field in `SetupOptions`.
 */
import { DEFAULT_ALIAS, DEFAULT_CLIENT_KEY } from '../setup/machines.js';
import { loadConfigAsOwner } from '../setup/config-owner.js';
import { DEFAULT_MACHINES, DEFAULT_NIX_CONF, DEFAULT_SSH_CONFIG, runSetup, type SetupOptions } from '../setup/setup.js';
import { defineCommand, type OptionSpecs, type OptionValues } from './command.js';

const options = {
  write: { type: 'boolean', description: 'make the changes (without it: only show them)' },
  'ssh-config': { type: 'string', value: 'FILE', description: 'system ssh config for the alias', default: DEFAULT_SSH_CONFIG },
  machines: { type: 'string', value: 'FILE', description: 'Nix machines file', default: DEFAULT_MACHINES },
  'nix-conf': { type: 'string', value: 'FILE', description: 'nix.conf to check', default: DEFAULT_NIX_CONF },
  'client-key': {
    type: 'string',
    value: 'FILE',
    description: "nix-daemon's key to log in with, made if missing",
    default: DEFAULT_CLIENT_KEY,
  },
  alias: { type: 'string', value: 'NAME', description: 'ssh Host alias in the machines lines', default: DEFAULT_ALIAS },
  substitutes: {
    type: 'boolean',
    description:
      'also set builders-use-substitutes = true in nix.conf: workers fetch public inputs from the binary caches, not through your uplink',
  },
} as const satisfies OptionSpecs;

/**
 * What `runSetup` gets from the options: each option but `--write` must be a field of
 * `SetupOptions` of the same type, or this does not compile.
 */
type SetupSettings = Pick<SetupOptions, keyof Omit<OptionValues<typeof options>, 'write'>>;

export const setup = defineCommand({
  name: 'setup',
  synopsis: '[--write] [--substitutes]',
  summary:
    "show (and with --write make) the changes that let this machine's Nix build through the daemon with no extra flags: a client key for nix-daemon, that key in our authorized keys, the ssh alias, one machines line per pool. Run it as root: nix-daemon is root",
  options,
  async run({ write, ...settings }, { configFile }) {
    const config = loadConfigAsOwner(configFile);
    const chosen: SetupSettings = settings;
    const result = runSetup({ ...chosen, config, configFile }, write === true);
    process.stdout.write(result.output);
    return result.exitCode;
  },
});
