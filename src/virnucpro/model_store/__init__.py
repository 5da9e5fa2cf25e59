"""Where the models come from: the caches and names (`cache`), downloads, the check before any GPU work, the built-in models."""
