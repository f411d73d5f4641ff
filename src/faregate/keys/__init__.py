"""Virtual keys: format and hashing, the in-memory directory, authentication, administration."""
