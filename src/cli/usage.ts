/**
 * The usage texts, made from the commands' declarations: the program's (`--help`), a group's
 * (`image --help`) and a command's (`up --help`), which lists every option it takes.
 */
import type { Command, OptionSpecs } from './command.js';
import { COMMON_OPTIONS, PROGRAM } from './common.js';

const WIDTH = 100;
/** Where a command's summary starts in the program's usage text. */
const SUMMARY_COLUMN = 21;

/** Breaks `text` into lines of at most `width - indent` characters, each indented. */
function wrap(text: string, indent: number, width = WIDTH): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line !== '' && indent + line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line === '' ? word : `${line} ${word}`;
  }
  if (line !== '') lines.push(line);
  return lines.map((l) => `${' '.repeat(indent)}${l}`);
}

/** `serve [--keep-workers]`: the name and its synopsis. */
export function invocation(command: Command): string {
  return command.synopsis === '' ? command.name : `${command.name} ${command.synopsis}`;
}

/** `nix-hcloud-builder up [POOL…] [--workers N]`. */
export function usageLine(command: Command): string {
  return `${PROGRAM} ${invocation(command)}`;
}

function optionName(name: string, spec: OptionSpecs[string]): string {
  const long = spec.type === 'string' ? `--${name} ${spec.value ?? 'VALUE'}` : `--${name}`;
  return spec.short ? `-${spec.short}, ${long}` : `    ${long}`;
}

/** Where the descriptions start, for options of these blocks: one column for a whole text. */
function optionColumn(...blocks: OptionSpecs[]): number {
  return Math.max(...blocks.flatMap((b) => Object.entries(b).map(([name, spec]) => optionName(name, spec).length))) + 4;
}

/** One block of options: names in a column, then what each does and its default. */
function optionLines(specs: OptionSpecs, column: number): string[] {
  return Object.entries(specs).map(([name, spec]) => {
    const more = [spec.multiple ? 'may be given more than once' : '', spec.default === undefined ? '' : `default: ${spec.default}`].filter(
      Boolean,
    );
    const text = more.length === 0 ? spec.description : `${spec.description} (${more.join('; ')})`;
    const [head = '', ...rest] = wrap(text, column);
    return [`  ${optionName(name, spec).padEnd(column - 2)}${head.trimStart()}`, ...rest].join('\n');
  });
}

/** A command's usage line, summary and every option it takes. */
export function commandHelp(command: Command): string {
  const column = optionColumn(command.options, COMMON_OPTIONS);
  const own = Object.keys(command.options).length === 0 ? [] : ['', 'options:', ...optionLines(command.options, column)];
  return [
    `usage: ${usageLine(command)}`,
    '',
    ...wrap(command.summary, 2),
    ...own,
    '',
    'options of every command:',
    ...optionLines(COMMON_OPTIONS, column),
    '',
  ].join('\n');
}

/** The commands of a group (`image upload`, `image cleanup`) as `commandHelp` shows each, the common options once. */
export function groupHelp(group: string, commands: readonly Command[]): string {
  const column = optionColumn(COMMON_OPTIONS, ...commands.map((c) => c.options));
  const parts = commands.map((c) => {
    const own = Object.keys(c.options).length === 0 ? [] : ['options:', ...optionLines(c.options, column)];
    return [`${PROGRAM} ${invocation(c)}`, ...wrap(c.summary, 2), ...own].join('\n');
  });
  return [
    `usage of ${PROGRAM} ${group}:`,
    '',
    parts.join('\n\n'),
    '',
    'options of every command:',
    ...optionLines(COMMON_OPTIONS, column),
    '',
  ].join('\n');
}

/** Every command with its usage line and summary, and the options every command takes. */
export function programHelp(commands: readonly Command[]): string {
  const lines = commands.flatMap((c) => {
    const head = `  ${invocation(c)}`;
    const summary = wrap(c.summary, SUMMARY_COLUMN);
    if (head.length + 2 > SUMMARY_COLUMN) return [head, ...summary];
    const [first = '', ...rest] = summary;
    return [`${head.padEnd(SUMMARY_COLUMN)}${first.trimStart()}`, ...rest];
  });
  return [
    `usage: ${PROGRAM} COMMAND [options]`,
    '',
    'commands:',
    ...lines,
    '',
    'options of every command:',
    ...optionLines(COMMON_OPTIONS, optionColumn(COMMON_OPTIONS)),
    '',
    `"${PROGRAM} COMMAND --help" lists a command's own options.`,
    '',
  ].join('\n');
}
