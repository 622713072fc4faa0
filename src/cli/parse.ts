/**
 * The command line, parsed against the commands' declarations: which command, its checked option
 * values, its operands, or the usage text to show. Anything a command does not declare is an
 * error naming it, before any config is read.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { camelCase, type Command, type CommandContext, type OptionSpecs } from './command.js';
import { COMMON_OPTIONS, defaultConfigPath, PROGRAM, UsageError } from './common.js';
import { commandHelp, groupHelp, programHelp, usageLine } from './usage.js';

export type ParsedCommandLine =
  | { kind: 'help'; text: string; exitCode: number }
  | { kind: 'run'; command: Command; values: Record<string, unknown>; context: CommandContext };

type ParseOptions = NonNullable<ParseArgsConfig['options']>;

function parseOptions(specs: OptionSpecs): ParseOptions {
  const options: ParseOptions = {};
  for (const [name, spec] of Object.entries(specs)) {
    options[name] = { type: spec.type, ...(spec.short ? { short: spec.short } : {}), ...(spec.multiple ? { multiple: true } : {}) };
  }
  return options;
}

/**
 * Every option of every command, to find the command's name among the arguments before knowing
 * which command it is: a string option's value must not be taken for the name. An option declared
 * twice must be declared alike.
 */
function allOptions(commands: readonly Command[]): ParseOptions {
  const all: Record<string, OptionSpecs[string]> = { ...COMMON_OPTIONS };
  for (const command of commands) {
    for (const [name, spec] of Object.entries(command.options)) {
      const seen = all[name];
      if (seen && (seen.type !== spec.type || seen.short !== spec.short || Boolean(seen.multiple) !== Boolean(spec.multiple))) {
        throw new Error(`option --${name} of ${command.name} is declared differently by another command`);
      }
      all[name] = spec;
    }
  }
  return parseOptions(all);
}

function optionList(specs: OptionSpecs): string {
  return Object.entries(specs)
    .map(([name, s]) => (s.short ? `-${s.short}/--${name}` : `--${name}`))
    .join(', ');
}

export function parseCommandLine(argv: string[], commands: readonly Command[], env: NodeJS.ProcessEnv = process.env): ParsedCommandLine {
  const first = parseArgs({ args: argv, options: allOptions(commands), strict: false, allowPositionals: true, tokens: true });
  const help = first.values.help === true;
  const words = first.positionals;
  const name = words[0];
  if (name === undefined) return { kind: 'help', text: programHelp(commands), exitCode: help ? 0 : 2 };

  // The longest declared name the words begin with: `image upload` before a command `image`.
  const command = commands
    .filter((c) => c.name.split(' ').every((w, i) => words[i] === w))
    .sort((a, b) => b.name.length - a.name.length)[0];
  if (command === undefined) {
    const group = commands.filter((c) => c.name.split(' ')[0] === name);
    if (group.length === 0) {
      const names = [...new Set(commands.map((c) => c.name.split(' ')[0]))].join(', ');
      throw new UsageError(`unknown command ${JSON.stringify(name)}; the commands are ${names} ("${PROGRAM} --help" shows them)`);
    }
    if (help) return { kind: 'help', text: groupHelp(name, group), exitCode: 0 };
    const subs = group.map((c) => c.name.split(' ')[1]).join(' or ');
    const got = words[1] === undefined ? 'nothing' : JSON.stringify(words[1]);
    throw new UsageError(`${name}: expected ${subs}, got ${got}`);
  }
  if (help) return { kind: 'help', text: commandHelp(command), exitCode: 0 };

  const specs: OptionSpecs = { ...command.options, ...COMMON_OPTIONS };
  for (const token of first.tokens) {
    if (token.kind !== 'option') continue;
    const spec = specs[token.name];
    if (spec === undefined) {
      throw new UsageError(`${command.name} does not take the option ${token.rawName} (its options: ${optionList(specs)})`);
    }
    if (spec.type === 'string' && (token.value === undefined || (!token.inlineValue && token.value.startsWith('-')))) {
      const got = token.value === undefined ? '' : `, not the option ${token.value}`;
      throw new UsageError(`${command.name}: ${token.rawName} needs a value (${token.rawName} ${spec.value ?? 'VALUE'})${got}`);
    }
    if (spec.type === 'boolean' && token.value !== undefined) throw new UsageError(`${command.name}: ${token.rawName} takes no value`);
  }

  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: parseOptions(specs), strict: true, allowPositionals: true });
  } catch (err) {
    // What is left for Node's own checks, e.g. a value that looks like an option (`--config --json`).
    throw new UsageError(`${command.name}: ${(err as Error).message.split('\n')[0] ?? ''}`);
  }
  const operands = parsed.positionals.slice(command.name.split(' ').length);
  const { min, max } = command.operands;
  if (operands.length > max && max === 0) {
    throw new UsageError(`${command.name} takes no arguments, got ${operands.map((o) => JSON.stringify(o)).join(' ')}`);
  }
  if (operands.length < min || operands.length > max) {
    const wanted = min === max ? `${min}` : max === Infinity ? `at least ${min}` : `${min} to ${max}`;
    throw new UsageError(`${command.name} takes ${wanted} argument(s), got ${operands.length} (usage: ${usageLine(command)})`);
  }

  const values: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(parsed.values)) {
    if (key in COMMON_OPTIONS || value === undefined) continue;
    values[camelCase(key)] = value;
  }
  const config = parsed.values.config;
  return { kind: 'run', command, values, context: { configFile: typeof config === 'string' ? config : defaultConfigPath(env), operands } };
}
