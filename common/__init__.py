"""Leaf helpers shared by every package: errors, atomic writes, the Council schema.

Imports nothing else of ours, so train_core, evaluation, corpus and demo can all use it
without pulling in Optuna or each other.
"""
