"""plugins domain."""
