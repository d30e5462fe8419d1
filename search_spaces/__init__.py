"""Built-in search spaces (YAML), installed as ``autoselect.search_spaces``; see ``autoselect.space``."""
