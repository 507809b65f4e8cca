"""Stage 2 of smpq-deploy and the orchestration: integer IR, exporters, pipeline runner, CLI, reports."""
