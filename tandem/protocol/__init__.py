"""tandem/protocol."""
