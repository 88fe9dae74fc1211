"""Ray Data: :mod:`.prepare` converts a dataset to Parquet shards; :mod:`.streaming` feeds them to the workers."""
