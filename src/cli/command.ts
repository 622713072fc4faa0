/**
 * What a command of the CLI is: a name, its options and operands, a usage line and a summary, and
 * what it does. Each command declares these in its own module (`serve.ts`, `up.ts`, …); the parser
 * (`parse.ts`) and the usage text (`usage.ts`) are made from the declarations, so an option exists
 * once: declaring it is what makes it accepted, typed and documented.
 */

/** One option: `--name` (the key it is declared under), with its value and how it is shown. */
export interface OptionSpec {
  readonly type: 'string' | 'boolean';
  /** A one-letter alias: `-n` for `--workers`. */
  readonly short?: string;
  /** Given more than once, all values count (`--label A=1 --label B=2`). */
  readonly multiple?: boolean;
  /** The value's name in the usage text (`FILE`, `N`); strings only; default `VALUE`. */
  readonly value?: string;
  readonly description: string;
  /** What applies when the option is not given, as the usage text shows it. */
  readonly default?: string;
}

export type OptionSpecs = Readonly<Record<string, OptionSpec>>;

/** `keep-workers` → `keepWorkers`: how an option's value is named in the values a command gets. */
export type CamelCase<S extends string> = S extends `${infer Head}-${infer Tail}` ? `${Head}${Capitalize<CamelCase<Tail>>}` : S;

export function camelCase(name: string): string {
  return name.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

type ValueOf<S extends OptionSpec> = S['type'] extends 'boolean' ? boolean : S extends { multiple: true } ? string[] : string;

/** The values of the declared options that were given, by camel-cased name. */
export type OptionValues<O extends OptionSpecs> = { [K in keyof O & string as CamelCase<K>]?: ValueOf<O[K]> };

/** What every command gets besides its own options. */
export interface CommandContext {
  /** `--config`, else `$NIX_HCLOUD_BUILDER_CONFIG`, else the default path. */
  configFile: string;
  /** The arguments after the command's name that are not options. */
  operands: string[];
}

/** A command with its declarations; made by `defineCommand`. */
export interface Command {
  /** `serve`, or `image upload` for a sub-command. */
  readonly name: string;
  /** What follows the name in its usage line: operands and the options that matter most. */
  readonly synopsis: string;
  /** What it does, for the usage text. */
  readonly summary: string;
  /** Its own options; `--config` and `--help` are every command's (`COMMON_OPTIONS`). */
  readonly options: OptionSpecs;
  /** How many operands it takes. */
  readonly operands: { readonly min: number; readonly max: number };
  /** Runs it with values the parser checked against `options`; answers the exit status. */
  run(values: Readonly<Record<string, unknown>>, context: CommandContext): Promise<number>;
}

export interface CommandSpec<O extends OptionSpecs> {
  name: string;
  synopsis?: string;
  summary: string;
  options: O;
  /** Default: none. */
  operands?: { min: number; max: number };
  run(values: OptionValues<O>, context: CommandContext): Promise<number>;
}

/** Declares a command; `run` gets its option values typed from the declarations. */
export function defineCommand<const O extends OptionSpecs>(spec: CommandSpec<O>): Command {
  return {
    name: spec.name,
    synopsis: spec.synopsis ?? '',
    summary: spec.summary,
    options: spec.options,
    operands: spec.operands ?? { min: 0, max: 0 },
    // The parser gives exactly the declared options, of the declared types, camel-cased.
    run: (values, context) => spec.run(values as OptionValues<O>, context),
  };
}
