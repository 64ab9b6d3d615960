"""Data: table sets and their point-in-time join, the importer of raw files (`longtail data import`),
the flights and ratings examples, the synthetic generator, splits and transforms."""
