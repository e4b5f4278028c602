"""value/objectives."""
