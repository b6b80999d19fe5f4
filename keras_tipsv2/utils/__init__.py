"""Framework-free helpers the rest of the package shares (nothing model-specific)."""
