"""Small helpers shared across rayseg's layers (distributed state, Ray session set-up)."""
