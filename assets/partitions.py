"""Partitions shared by assets and the code location."""

import dagster as dg

# One partition per whole-slide image, keyed by the sanitized file stem (see ops.slides.registry).
slide_partitions = dg.DynamicPartitionsDefinition(name="slides")
