"""The deploy package's subcommands, one module per area; each has `register(commands, bench)`."""
