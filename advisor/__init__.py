"""The advisor: which model, which technique, which batch size, and will it fit.

This package must never import torch, transformers or textual (tests/test_hygiene.py checks):
it answers in well under a second because it only does arithmetic over facts kept as data.
"""
