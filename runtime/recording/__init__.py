"""runtime/recording."""
