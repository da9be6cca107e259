"""Training, evaluation and generation behind the CLI."""
