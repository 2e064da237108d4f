"""Data: fetch (registry wheel / URL / own parquet), schema validation, prepare."""
