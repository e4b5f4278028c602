"""tandem/commands."""
