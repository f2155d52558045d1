"""Thin Dagster assets: read inputs, call ``ops``, write through ``resources``, return metadata."""
