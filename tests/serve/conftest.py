"""The live-session and server tests use the tiny demo bundle fixtures of tests/conftest.py."""
