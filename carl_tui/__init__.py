"""carl — a terminal workbench for Coherence-Aware Reinforcement Learning.

This package is the app shell and CLI. It must stay importable with the standard library alone
(``python3 -m carl_tui.bootstrap`` runs before anything is installed).
"""

__version__ = "0.1.0"
