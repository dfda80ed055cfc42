"""The cluster file: YAML with positions, the schema, the typed model built from it."""
