"""The science: tiling, tissue masks, generators, features, classifiers, export. No Dagster here."""
