"""Integration tests: real servers, real HTTP."""
