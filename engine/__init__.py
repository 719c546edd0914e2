"""carl's engine: everything that computes or talks to the world.

Importable as a library; never imports textual, screens or carl_tui (enforced by import-linter).
"""
