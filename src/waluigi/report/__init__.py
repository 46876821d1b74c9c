"""Reports: tables, pages and exports built from run files only (never from a model)."""
