"""The `smpq-deploy` command line: `main` parses the arguments and dispatches; every other module is one subcommand."""
