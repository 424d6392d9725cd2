"""Deployment layouts built from the same .mar as local serving."""
