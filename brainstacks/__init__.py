"""brainstacks."""
