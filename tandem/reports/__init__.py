"""tandem/reports."""
