"""Developer tools (structure checks)."""
