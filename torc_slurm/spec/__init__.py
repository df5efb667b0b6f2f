"""Workflow specs: models, parameter expansion, loading."""
