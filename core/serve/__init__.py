"""The HTTP server: predictions and feedback on production traffic, logged in batches, with hot swaps."""
