"""Reading and writing what flows between stages: sequence files, tables and their schemas, IDs, feature files, atomic writes."""
