"""Example models for `arch: {kind: python, factory: "examples.<module>:<function>"}` (docs/training.md)."""
