"""runtime/control."""
