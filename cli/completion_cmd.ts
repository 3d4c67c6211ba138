/**
 * `vmkit completion bash|zsh`: prints the shell completion script, generated
 * from every subcommand's option table.
 *
 * @module
 */

import { command, type Entry } from "./command.ts";
import { bashCompletion, zshCompletion } from "./completion.ts";
import { UsageError } from "./usage.ts";

/** The `vmkit completion` command. */
export const entry: Entry = command({
  name: "completion",
  summary: "print a bash or zsh completion script",
  args: ["SHELL"],
  argsComplete: "none",
  description: "SHELL is bash or zsh. Install with, e.g.:\n" +
    "  vmkit completion bash > ~/.local/share/bash-completion/completions/vmkit\n" +
    "  vmkit completion zsh > ~/.zfunc/_vmkit   # with ~/.zfunc in $fpath",
  options: {},
  async run(ctx) {
    const shell = ctx.positionals[0];
    if (shell !== "bash" && shell !== "zsh") {
      throw new UsageError(`SHELL must be bash or zsh, got '${shell}'`);
    }
    const { allEntries } = await import("./main.ts");
    const entries = await allEntries();
    console.log(shell === "bash" ? bashCompletion(entries) : zshCompletion(entries));
    return 0;
  },
});
