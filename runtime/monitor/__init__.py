"""runtime/monitor."""
