"""Request plumbing: trace ids, JWT checks, logging and the Redis client."""
