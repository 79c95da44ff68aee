"""The HTTP layer: parse, call, shape the reply. One module per route family."""
