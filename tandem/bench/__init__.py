"""tandem/bench."""
