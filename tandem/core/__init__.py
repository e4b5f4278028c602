"""tandem/core."""
