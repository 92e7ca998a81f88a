"""CLI subcommands: one module each with HELP, add_arguments(parser) and run(args). No heavy imports at
module level (the CLI must start without torch)."""
