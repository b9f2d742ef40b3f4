"""Reports: terminal tables and the self-contained HTML file. Never runs a model."""
