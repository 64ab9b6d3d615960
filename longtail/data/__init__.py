"""Data: table sets, the flights builder, the synthetic generator, joins, splits and transforms."""
