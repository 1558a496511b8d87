"""What every stage shares: record formats, user errors, the run directory, JSONL logs, shards, the CLI builder."""
