"""Package stage: model card, manifest with every file's digest, and atomic publication."""
